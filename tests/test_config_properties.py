"""Property-based tests of the config parser: any input gives a StudyConfig or a ConfigError.

Whatever a user writes (arbitrary text in a ``.toml`` file, or arbitrary nested tables),
:meth:`StudyConfig.load` / :meth:`StudyConfig.from_dict` must either return a checked
config or raise :class:`ConfigError` naming what is wrong, never another exception
(which the CLI would report as a crash instead of exit code 2).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from motune.config import BaselineSection, ConfigError, DataSection, StudyConfig, StudySection, TrainSection

SECTIONS = {"study": StudySection, "data": DataSection, "train": TrainSection}
KEYS = sorted({f.name for cls in (*SECTIONS.values(), BaselineSection) for f in dataclasses.fields(cls)})
TABLES = [*SECTIONS, "baselines", "smgd", "multi_adam", "multi_rmsprop"]

# Values TOML can produce, plus what a JSON-ish dict may hold (None, huge ints, NaN).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["digits", "adam", "sgd", "angle", "dense", "soft", "auto", "smgd", "cosine", "lenet5", ""]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS + TABLES), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)
tables = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), values, max_size=6)
configs = st.one_of(
    st.dictionaries(st.sampled_from(TABLES), st.one_of(tables, values), max_size=4),
    values,
)


def check(parse: Any) -> None:
    try:
        config = parse()
    except ConfigError as exc:
        assert str(exc)  # a message for the user
        return
    assert isinstance(config, StudyConfig)
    # What came out is a valid, storable config.
    assert StudyConfig.from_dict(config.to_dict()) == config
    assert config.study.n_trials >= 1 and 1 <= config.train.front_epochs <= config.train.epochs
    assert config.train.lr > 0 and math.isfinite(config.train.lr)


@settings(max_examples=300, deadline=None)
@given(configs)
def test_from_dict_gives_a_config_or_a_config_error(raw: Any) -> None:
    check(lambda: StudyConfig.from_dict(raw))


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from(list(SECTIONS)), tables, max_size=3))
def test_known_tables_with_arbitrary_values(raw: dict[str, Any]) -> None:
    check(lambda: StudyConfig.from_dict(raw))


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


toml_lines = st.one_of(
    st.builds(lambda t: f"[{t}]", st.sampled_from([*TABLES, "baselines.smgd", "baselines.sgd", "study.x"])),
    st.builds(lambda k, v: f"{k} = {toml_value(v)}", st.sampled_from(KEYS),
              st.one_of(st.booleans(), st.integers(-5, 10**6), st.floats(), st.text(max_size=8),
                        st.lists(st.floats(0, 1), max_size=3), st.sampled_from(["digits", "adam", "angle"]))),
    st.text(max_size=20),  # anything at all, including broken TOML
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(toml_lines, max_size=10), st.binary(max_size=8))
def test_load_of_arbitrary_text_gives_a_config_or_a_config_error(lines: list[str], junk: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "study.toml")
        path.write_text("\n".join(lines), encoding="utf-8")
        check(lambda: StudyConfig.load(path))
        path.write_bytes("\n".join(lines).encode("utf-8") + junk)  # possibly not UTF-8
        check(lambda: StudyConfig.load(path))
