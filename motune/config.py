"""Study configs: TOML files in ``studies/`` parsed into a checked :class:`StudyConfig`.

A config has four tables::

    [study]      name, n_trials, timeout, knee, start_weights, baselines, seed, full_fidelity
    [data]       dataset, data_dir, image_size, limit
    [train]      model, penalise, optimizer, lr, momentum, weight_decay, lr_schedule,
                 batch_size, epochs (full fidelity), front_epochs, prune_threshold,
                 prune_policy, finetune_epochs, device
    [baselines.KIND]   optimizer, lr, momentum   (KIND: smgd, multi_adam, multi_rmsprop)

Every default is the digits study, so ``StudyConfig()`` *is* ``studies/digits.toml``.
An unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
naming the key (``train.lr``) and what is allowed, before anything touches a storage.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from motune.train import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNEE_CRITERIA: tuple[str, ...] = ("angle", "distance")
BASELINE_KINDS: tuple[str, ...] = ("smgd", "multi_adam", "multi_rmsprop")
TRIAL_KINDS: tuple[str, ...] = ("weighted_sum", *BASELINE_KINDS)


class ConfigError(ValueError):
    """A study config is malformed: the message names the key and what is allowed."""


@dataclass
class StudySection:
    """How the search runs: trial budget, knee criterion, start weights, baseline trials."""

    name: str = "digits"
    n_trials: int = 16
    timeout: float | None = None
    knee: str = "angle"
    start_weights: list[float] = field(default_factory=lambda: [0.0, 0.1])
    baselines: list[str] = field(default_factory=lambda: ["smgd"])
    seed: int = 0
    full_fidelity: bool = True


@dataclass
class DataSection:
    """Which data set, from where, and optional resizing / subsetting."""

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    limit: int | None = None


@dataclass
class TrainSection:
    """Training settings shared by every trial; ``front_epochs`` for front trials, ``epochs`` for full ones.

    ``finetune_epochs`` (default 0, the paper's protocol) ends each *full-fidelity*
    weighted-sum run with that many of its epochs on cross-entropy alone, the pruning
    mask frozen: accuracy recovers at the knee's sparsity.
    """

    model: str = "digits_cnn"
    penalise: str = "dense"
    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    batch_size: int = 64
    epochs: int = 30
    front_epochs: int = 10
    prune_threshold: float = 1e-3
    prune_policy: str = "soft"
    finetune_epochs: int = 0
    device: str = "auto"


@dataclass
class BaselineSection:
    """Base optimiser of one multi-gradient baseline kind."""

    optimizer: str
    lr: float
    momentum: float = 0.9


def default_baselines() -> dict[str, BaselineSection]:
    """SMGD = multi-gradient + SGD with momentum; multi-Adam; multi-RMSprop (DESIGN.md §4)."""
    return {
        "smgd": BaselineSection("sgd", 0.05, 0.9),
        "multi_adam": BaselineSection("adam", 0.003),
        "multi_rmsprop": BaselineSection("rmsprop", 0.001, 0.0),
    }


@dataclass
class StudyConfig:
    """A whole study: parsed from TOML by :meth:`load`, stored in the study by :meth:`to_dict`."""

    study: StudySection = field(default_factory=StudySection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    baselines: dict[str, BaselineSection] = field(default_factory=default_baselines)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> StudyConfig:
        """Read and check a TOML config file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config ({exc})") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, raw: Any) -> StudyConfig:
        """Build from nested dicts (parsed TOML or :meth:`to_dict` output), checking every key."""
        if not isinstance(raw, dict):
            raise ConfigError(f"config must be a table of tables, got {type(raw).__name__}")
        _unknown_keys("", raw, ("study", "data", "train", "baselines"))
        cfg = cls(
            study=_section(StudySection, "study", raw.get("study", {})),
            data=_section(DataSection, "data", raw.get("data", {})),
            train=_section(TrainSection, "train", raw.get("train", {})),
            baselines=default_baselines(),
        )
        baselines = raw.get("baselines", {})
        if not isinstance(baselines, dict):
            raise ConfigError(f"baselines: must be a table of [baselines.KIND] tables, got {baselines!r}")
        _unknown_keys("baselines", baselines, BASELINE_KINDS)
        for kind, table in baselines.items():
            base = dataclasses.asdict(cfg.baselines[kind])
            if not isinstance(table, dict):
                raise ConfigError(f"baselines.{kind}: must be a table, got {table!r}")
            cfg.baselines[kind] = _section(BaselineSection, f"baselines.{kind}", {**base, **table})
        return cfg.validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts (JSON- and TOML-ready); ``from_dict(to_dict())`` round-trips."""
        return dataclasses.asdict(self)

    def validate(self) -> StudyConfig:
        """Check ranges and choices; reuse :meth:`TrainConfig.validate` for training fields."""
        s = self.study
        if not s.name or not s.name.strip():
            raise ConfigError("study.name: must be a non-empty string")
        if s.n_trials < 1:
            raise ConfigError(f"study.n_trials: must be a positive integer, got {s.n_trials!r}")
        if s.timeout is not None and not (math.isfinite(s.timeout) and s.timeout > 0):
            raise ConfigError(f"study.timeout: must be a number of seconds > 0, got {s.timeout!r}")
        if not 0 <= s.seed < 2**32:  # seed + trial number must stay a valid torch seed
            raise ConfigError(f"study.seed: must be an integer in [0, 2**32), got {s.seed!r}")
        if s.knee not in KNEE_CRITERIA:
            raise ConfigError(f"study.knee: unknown value {s.knee!r}; allowed: {', '.join(KNEE_CRITERIA)}")
        if len(s.start_weights) < 1 or any(not (0.0 <= w <= 1.0) or math.isnan(w) for w in s.start_weights):
            raise ConfigError(f"study.start_weights: must be a list of numbers in [0, 1], got {s.start_weights!r}")
        for kind in s.baselines:
            if kind not in BASELINE_KINDS:
                raise ConfigError(f"study.baselines: unknown kind {kind!r}; allowed: {', '.join(BASELINE_KINDS)}")
        if self.train.front_epochs < 1 or self.train.front_epochs > self.train.epochs:
            raise ConfigError(
                f"train.front_epochs: must be between 1 and train.epochs ({self.train.epochs}), got {self.train.front_epochs!r}"
            )
        for kind in ("weighted_sum", *s.baselines):
            try:
                self.train_config(kind).validate()
                self.train_config(kind, full=True).validate()
            except ValueError as exc:
                raise ConfigError(_locate(str(exc), kind)) from None
        return self

    def train_config(
        self, kind: str = "weighted_sum", *, l1_weight: float = 0.0, full: bool = False, seed: int | None = None
    ) -> TrainConfig:
        """The :class:`TrainConfig` of one trial of ``kind`` (front or full fidelity)."""
        t, d = self.train, self.data
        cfg = TrainConfig(
            dataset=d.dataset, data_dir=d.data_dir, image_size=d.image_size, limit=d.limit,
            model=t.model, penalise=t.penalise, optimizer=t.optimizer, lr=t.lr, momentum=t.momentum,
            weight_decay=t.weight_decay, lr_schedule=t.lr_schedule, batch_size=t.batch_size,
            epochs=t.epochs if full else t.front_epochs, prune_threshold=t.prune_threshold,
            prune_policy=t.prune_policy, device=t.device, l1_weight=l1_weight,
            finetune_epochs=t.finetune_epochs if full else 0,
            seed=self.study.seed if seed is None else seed,
        )
        if kind != "weighted_sum":
            base = self.baselines[kind]
            # A baseline finds one point with no preference: it trains at full length.
            cfg = cfg.replace(method="multi_gradient", optimizer=base.optimizer, lr=base.lr, momentum=base.momentum,
                              epochs=t.epochs, l1_weight=0.0)
        return cfg


_SECTION_OF = {f.name: "data" for f in dataclasses.fields(DataSection)}


def _locate(message: str, kind: str) -> str:
    """Prefix a TrainConfig error ('lr: ...') with the config table it came from."""
    name = message.split(":", 1)[0]
    if kind != "weighted_sum" and name in ("optimizer", "lr", "momentum"):
        return f"baselines.{kind}.{message}"
    return f"{_SECTION_OF.get(name, 'train')}.{message}"


def _unknown_keys(where: str, table: dict[str, Any], allowed: typing.Iterable[str]) -> None:
    allowed = tuple(allowed)
    for key in table:
        if key not in allowed:
            at = f"{where}.{key}" if where else key
            raise ConfigError(f"{at}: unknown key; allowed in [{where or 'top level'}]: {', '.join(allowed)}")


def _section(cls: type, where: str, table: Any) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table, got {table!r}")
    hints = typing.get_type_hints(cls)
    _unknown_keys(where, table, hints)
    values = {key: _check_type(f"{where}.{key}", table[key], hints[key]) for key in table}
    try:
        return cls(**values)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{where}: {exc}") from None


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple annotation (str, int, float, bool, list[X], X | None)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _check_type(key, value, inner[0])
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list of {item.__name__}, got {value!r}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(value, hint):
        return value
    raise ConfigError(f"{key}: must be of type {getattr(hint, '__name__', hint)}, got {value!r} ({type(value).__name__})")
