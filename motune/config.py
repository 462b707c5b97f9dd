"""Study configs: TOML files in ``studies/`` parsed into a checked :class:`StudyConfig`.

A config has four tables::

    [study]      name, n_trials, timeout, knee, start_weights, baselines, seed, full_fidelity,
                 prune, prune_patience, prune_margin, continuation, continuation_epochs,
                 retrain_epochs, finetune_baselines
    [data]       dataset, data_dir, image_size, limit, [data.args]
    [train]      every other field of motune.train.TrainConfig (model, [train.model_args],
                 penalise, optimizer, lr, ..., device), plus front_epochs; epochs is the
                 full-fidelity length
    [baselines.KIND]   optimizer, lr, momentum   (KIND: smgd, multi_adam, multi_rmsprop)

The training settings are declared once, in :class:`~motune.train.TrainConfig`: the
[data] and [train] sections are derived from its fields, so a new TrainConfig field is
a valid, type-checked [train] key with TrainConfig's default and reaches every trial,
with no edit here. The fields a study sets per trial (method, l1_weight, seed) are not
config keys.

Every default is the digits study, so ``StudyConfig()`` *is* ``studies/digits.toml``.
An unknown key, a wrong type or an out-of-range value raises :class:`ConfigError`
naming the key (``train.lr``) and what is allowed, before anything touches a storage.

Your own network and data: ``[data] dataset`` and ``[train] model`` may be import paths
``"module:callable"`` with keyword arguments in ``[data.args]`` and ``[train.model_args]``,
and ``penalise`` a list of glob patterns. Parsing checks their form only and imports
nothing (a config read from a shared storage is data, not code); :meth:`StudyConfig.load`
makes the config file's folder importable, so a module beside the TOML is found.
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

from motune.imports import is_import_path, make_importable
from motune.train import TrainConfig
from motune.trial_pruning import DEFAULT_MARGIN, DEFAULT_PATIENCE

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KNEE_CRITERIA: tuple[str, ...] = ("angle", "distance")
BASELINE_KINDS: tuple[str, ...] = ("smgd", "multi_adam", "multi_rmsprop")
STUDY_BASELINES: tuple[str, ...] = (*BASELINE_KINDS, "gmp")  # gmp: motune.gmp at the knee's sparsity, no [baselines] table


class ConfigError(ValueError):
    """A study config is malformed: the message names the key and what is allowed."""


@dataclass
class StudySection:
    """How the search runs: trial budget, knee criterion, start weights, baseline trials, trial pruning.

    ``prune``: stop a weighted-sum trial early (PRUNED) when its network collapsed or its
    intermediate objectives are dominated by a margin (:mod:`motune.trial_pruning`, with
    ``prune_patience`` epochs and ``prune_margin``); it evaluates on the validation data
    every epoch (about 7% more time per digits trial).

    ``continuation``: warm-start continuation along λ (:mod:`motune.continuation`): a
    front trial starts from the completed front trial with the nearest smaller λ and
    trains ``continuation_epochs`` (None: half of ``front_epochs``, at least 1); the
    knee's full-fidelity retrain then continues from the knee's front network. On by
    default: with the knee's fine-tune it made the knee as accurate as GMP at its
    sparsity (docs/benchmarks.md §2, "Issue 11's levers at study level").
    ``retrain_epochs``: with continuation, the epochs of that retrain (None: ``[train]
    epochs``). The knee's network has already trained along its lineage of warm starts,
    so a shorter retrain saves a study's largest single cost; it must exceed the
    fine-tune. Without continuation the retrain trains fresh at ``epochs`` and this key
    is not used.
    ``finetune_baselines``: whether ``[train] finetune_epochs`` also fine-tunes the
    multi-gradient baselines (default false: the knee's full-fidelity retrain only).
    """

    name: str = "digits"
    n_trials: int = 16
    timeout: float | None = None
    knee: str = "angle"
    start_weights: list[float] = field(default_factory=lambda: [0.0, 0.1])
    baselines: list[str] = field(default_factory=lambda: ["smgd"])
    seed: int = 0
    full_fidelity: bool = True
    prune: bool = True
    prune_patience: int = DEFAULT_PATIENCE
    prune_margin: float = DEFAULT_MARGIN
    continuation: bool = True
    continuation_epochs: int | None = None
    retrain_epochs: int | None = None
    finetune_baselines: bool = False


# TrainConfig fields the study sets for each trial, never from a config table: the trial
# kind picks the method, the sampler the l1 weight, motune.trials.trial_seed the seed.
PER_TRIAL_KEYS: tuple[str, ...] = ("method", "l1_weight", "seed")
# TrainConfig fields that live in [data]; every other TrainConfig field lives in [train].
DATA_KEYS: tuple[str, ...] = ("dataset", "data_dir", "image_size", "limit", "data_args")
# TrainConfig fields whose config key has another name: data_args is [data.args].
_RENAMED: dict[str, str] = {"data_args": "args"}
# Where a study's default differs from TrainConfig's (the digits study trains 30 epochs).
_STUDY_DEFAULTS: dict[str, Any] = {"epochs": 30}


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against a simple annotation; return it (an int as float where float is asked).

    Understood: str, int, float, bool, Any, Literal[...], list[X], dict[str, X], X | None.
    """
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        options = typing.get_args(hint)
        if value in options and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: unknown value {value!r}; allowed: {', '.join(map(str, options))}")
    if origin is dict:
        key_type, item = typing.get_args(hint)
        if not isinstance(value, dict) or key_type is not str:
            raise ConfigError(f"{key}: must be a table, got {value!r}")
        return {k: _check_type(f"{key}.{k}", v, item) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        if len(inner) == 1:
            return _check_type(key, value, inner[0])
        for option in inner:  # e.g. penalise: "dense" or a list of patterns
            try:
                return _check_type(key, value, option)
            except ConfigError:
                continue
        names = " or ".join(_type_name(o) for o in inner)
        raise ConfigError(f"{key}: must be {names}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{key}: must be a list of {getattr(item, '__name__', item)}, got {value!r}")
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


def _type_name(hint: Any) -> str:
    """``str``, ``list[str]``: how a type reads in a message."""
    args = typing.get_args(hint)
    name = getattr(typing.get_origin(hint) or hint, "__name__", str(hint))
    return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name


def _derived_section(name: str, doc: str, keys: typing.Iterable[str], extra: typing.Iterable[tuple[str, Any, Any]] = ()) -> type:
    """A dataclass with TrainConfig's fields ``keys`` (same types and defaults) plus ``extra``.

    ``extra`` holds study-only fields as ``(name, type, default)``. Each default is
    type-checked here, so a TrainConfig field of a type the parser cannot check fails
    at import instead of on a user's config.
    """
    hints = typing.get_type_hints(TrainConfig)
    by_name = {f.name: f for f in dataclasses.fields(TrainConfig)}
    specs: list[tuple[str, Any, Any]] = []
    for key in keys:
        f = by_name[key]
        if key in _STUDY_DEFAULTS:
            default = field(default=_STUDY_DEFAULTS[key])
        elif f.default_factory is not dataclasses.MISSING:
            default = field(default_factory=f.default_factory)
        else:
            default = field(default=f.default)
        specs.append((_RENAMED.get(key, key), hints[key], default))
    specs += [(key, hint, field(default=value)) for key, hint, value in extra]
    section = dataclasses.make_dataclass(name, specs, namespace={"__doc__": doc, "__module__": __name__})
    defaults = section()
    for key, hint, _ in specs:
        _check_type(f"{name}.{key}", getattr(defaults, key), hint)
    return section


DataSection = _derived_section(
    "DataSection",
    "Which data set, from where, and optional resizing / subsetting (TrainConfig's data fields).",
    DATA_KEYS,
)

TrainSection = _derived_section(
    "TrainSection",
    """Training settings shared by every trial: every TrainConfig field not in [data] or set per trial.

    ``epochs`` is the full-fidelity length (the knee retrain, the baselines) and
    ``front_epochs`` the length of a front trial. ``finetune_epochs`` ends each
    *full-fidelity* run (the knee's retrain; the baselines too with ``[study]
    finetune_baselines = true``) with that many of its epochs on cross-entropy alone, the
    pruning mask frozen: accuracy recovers at the knee's sparsity. Unset (None), a third
    of ``epochs`` (:attr:`StudyConfig.finetune_epochs`); 0 is the paper's protocol.
    """,
    [f.name for f in dataclasses.fields(TrainConfig) if f.name not in (*DATA_KEYS, *PER_TRIAL_KEYS, "finetune_epochs")],
    [("front_epochs", int, 10), ("finetune_epochs", int | None, None)],
)


@dataclass
class BaselineSection:
    """Base optimiser of one multi-gradient baseline kind."""

    optimizer: str
    lr: float
    momentum: float = 0.9


def default_baselines() -> dict[str, BaselineSection]:
    """SMGD = multi-gradient + SGD with momentum; multi-Adam; multi-RMSprop.

    The three base optimisers of the paper's code (its SMGD, MAdam and MRMSprop), each
    stepping along the min-norm combination of the two objectives' gradients.
    """
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

    def on_device(self, device: str) -> StudyConfig:
        """A copy that trains on ``device``. The device is a local choice of each process (a
        study created on a CPU is joined by GPU workers), so it never makes two configs differ:
        compare ``a.on_device(b.train.device) == b``."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, device=device))

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
            config = cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if config.import_paths():
            make_importable(path.parent)  # the user named this file: its folder's modules are theirs
        return config

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

    def import_paths(self) -> dict[str, str]:
        """The config keys that name code to import, with their paths (empty: built-ins only).

        >>> StudyConfig.from_dict({"train": {"model": "winenets:make"}}).import_paths()
        {'train.model': 'winenets:make'}
        """
        found = {"data.dataset": self.data.dataset, "train.model": self.train.model}
        return {key: value for key, value in found.items() if is_import_path(value)}

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
        if not 0 <= s.seed < 2**32:  # trial_seed shifts it modulo 2**32
            raise ConfigError(f"study.seed: must be an integer in [0, 2**32), got {s.seed!r}")
        if s.knee not in KNEE_CRITERIA:
            raise ConfigError(f"study.knee: unknown value {s.knee!r}; allowed: {', '.join(KNEE_CRITERIA)}")
        if len(s.start_weights) < 1 or any(not (0.0 <= w <= 1.0) or math.isnan(w) for w in s.start_weights):
            raise ConfigError(f"study.start_weights: must be a list of numbers in [0, 1], got {s.start_weights!r}")
        if s.prune_patience < 1:
            raise ConfigError(f"study.prune_patience: must be a positive integer (epochs), got {s.prune_patience!r}")
        if not 0.0 <= s.prune_margin < 1.0:
            raise ConfigError(f"study.prune_margin: must be a number in [0, 1) (of the front's extent), got {s.prune_margin!r}")
        for kind in s.baselines:
            if kind not in STUDY_BASELINES:
                raise ConfigError(f"study.baselines: unknown kind {kind!r}; allowed: {', '.join(STUDY_BASELINES)}")
        if self.train.front_epochs < 1 or self.train.front_epochs > self.train.epochs:
            raise ConfigError(
                f"train.front_epochs: must be between 1 and train.epochs ({self.train.epochs}), got {self.train.front_epochs!r}"
            )
        if s.continuation_epochs is not None and not 1 <= s.continuation_epochs <= self.train.front_epochs:
            raise ConfigError(f"study.continuation_epochs: must be between 1 and train.front_epochs "
                              f"({self.train.front_epochs}), got {s.continuation_epochs!r}")
        if s.retrain_epochs is not None and not self.finetune_epochs < s.retrain_epochs <= self.train.epochs:
            raise ConfigError(f"study.retrain_epochs: must be more than the fine-tune ({self.finetune_epochs} epochs) "
                              f"and at most train.epochs ({self.train.epochs}), got {s.retrain_epochs!r}")
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
        t = self.train
        data = dataclasses.asdict(self.data)
        cfg = TrainConfig(
            **{key: data[_RENAMED.get(key, key)] for key in DATA_KEYS},
            **{key: getattr(t, key) for key in _TRAIN_KEYS},
            epochs=t.epochs if full else t.front_epochs,
            finetune_epochs=self.finetune_epochs if full else 0,
            l1_weight=l1_weight,
            seed=self.study.seed if seed is None else seed,
        )
        if kind not in ("weighted_sum", "gmp"):  # gmp: the weighted sum's training settings, full length
            base = self.baselines[kind]
            # A baseline finds one point with no preference: it trains at full length.
            cfg = cfg.replace(method="multi_gradient", optimizer=base.optimizer, lr=base.lr, momentum=base.momentum,
                              epochs=t.epochs, l1_weight=0.0,
                              finetune_epochs=self.finetune_epochs if full and self.study.finetune_baselines else 0)
        return cfg

    @property
    def finetune_epochs(self) -> int:
        """The masked fine-tune of a full-fidelity run: ``[train] finetune_epochs``, or a third of ``epochs`` if unset.

        A third because gradual magnitude pruning, the baseline a knee must match, prunes
        for two thirds of its run and trains the last third at its final sparsity;
        docs/benchmarks.md §2 ("Issue 11's levers at study level") measured it with
        continuation: the knee as accurate as GMP on 10 of 10 digits seeds.
        """
        t = self.train
        return t.epochs // 3 if t.finetune_epochs is None else t.finetune_epochs


# The [train] keys copied unchanged into every trial's TrainConfig (the others depend on fidelity).
_BY_FIDELITY = ("epochs", "front_epochs", "finetune_epochs")
_TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainSection) if f.name not in _BY_FIDELITY)
_SECTION_OF = {**{key: "data" for key in DATA_KEYS}, "seed": "study"}


def config_key(name: str) -> str:
    """The config key of TrainConfig field ``name``: ``lr`` -> ``train.lr``, ``data_args`` -> ``data.args``.

    >>> config_key("data_args"), config_key("model_args"), config_key("dataset")
    ('data.args', 'train.model_args', 'data.dataset')
    """
    return f"{_SECTION_OF.get(name, 'train')}.{_RENAMED.get(name, name)}"


def _locate(message: str, kind: str) -> str:
    """Prefix a TrainConfig error ('lr: ...') with the config table it came from."""
    name, _, rest = message.partition(":")
    if kind != "weighted_sum" and name in ("optimizer", "lr", "momentum"):
        return f"baselines.{kind}.{message}"
    return f"{config_key(name)}:{rest}" if rest else f"{_SECTION_OF.get(name, 'train')}.{message}"


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
