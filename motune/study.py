"""A study config becomes an Optuna multi-objective study: storages, the trial objective, the runner.

Each trial trains one network with :func:`motune.train` and returns
``(cross_entropy, l1)``; weighted-sum trials take ``λ`` from
``trial.suggest_float("l1_weight", 0, 1)`` (chosen by :class:`~motune.sampler.KneeSampler`),
baseline trials (SMGD, multi-Adam, multi-RMSprop) are enqueued with a ``kind`` user
attribute and take no ``λ``. Every trial's pruned weights are kept as an Optuna artifact
(so optuna-dashboard can offer them), its metrics as user attributes.

Storages (DESIGN.md §7): any Optuna RDB URL (``sqlite:///…``, ``postgresql://…``,
``mysql+pymysql://…``), ``redis://…`` (journal on Redis), or a journal file given as
``journal:PATH`` or a path ending in ``.journal``/``.log``. Default: ``sqlite:///NAME.db``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import FrozenTrial, TrialState

from motune.checkpoint import save_checkpoint
from motune.config import StudyConfig
from motune.data import Dataset, load_dataset
from motune.sampler import KneeSampler
from motune.train import DivergenceError, EpochRecord, TrainResult, train

METRIC_NAMES = ["cross_entropy", "l1"]
CONFIG_ATTR = "motune:config"
PARAM = "l1_weight"


class StudyError(ValueError):
    """A study cannot be created, opened or resumed as asked (bad storage, config mismatch…)."""


# ----------------------------------------------------------------------------- storages


def default_storage_url(study_name: str, directory: str | os.PathLike[str] = ".") -> str:
    """``sqlite:///<directory>/<study_name>.db``: one SQLite file per study, what optuna-dashboard opens."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    return f"sqlite:///{Path(directory, safe + '.db').as_posix()}"


def is_journal_file(url: str) -> bool:
    """Whether ``url`` names a journal file (``journal:PATH`` or a ``.journal``/``.log`` path)."""
    return url.startswith("journal:") or ("://" not in url and url.endswith((".journal", ".log")))


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def open_storage(url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None) -> optuna.storages.BaseStorage:
    """Open any storage motune supports; raise :class:`StudyError` with the URL (masked) when it fails.

    RDB storages get Optuna's heartbeat when ``heartbeat_interval`` is given, and a
    :class:`~optuna.storages.RetryFailedTrialCallback` so a dead worker's trial is retried.
    """
    shown = mask_url(url)
    try:
        if is_journal_file(url):
            path = url.removeprefix("journal:")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        if url.startswith(("redis://", "rediss://", "unix://")):
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalRedisBackend(url))
        if "://" not in url:
            raise StudyError(
                f"storage {shown!r}: not a storage URL; use sqlite:///FILE.db, postgresql://…, "
                "mysql+pymysql://…, redis://HOST:PORT, or journal:FILE"
            )
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if heartbeat_interval is not None:
            kwargs = dict(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                failed_trial_callback=optuna.storages.RetryFailedTrialCallback(max_retry=3),
            )
        return optuna.storages.RDBStorage(url, **kwargs)
    except StudyError:
        raise
    except Exception as exc:  # drivers raise many types; the message is what matters
        detail = mask_url(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        raise StudyError(f"storage {shown!r}: cannot open ({type(exc).__name__}: {detail})") from None


def default_artifact_dir(url: str, study_name: str) -> Path:
    """Where checkpoints go unless ``--artifacts`` says otherwise: beside a file storage, else ``./artifacts/NAME``."""
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        return db.with_name(db.stem + "-artifacts")
    if is_journal_file(url):
        path = Path(url.removeprefix("journal:"))
        return path.with_name(path.stem + "-artifacts")
    return Path("artifacts", study_name)


# ----------------------------------------------------------------------------- study


def make_sampler(config: StudyConfig, seed: int | None = None) -> KneeSampler:
    """The study's :class:`KneeSampler` from the ``[study]`` table."""
    s = config.study
    return KneeSampler(start_weights=s.start_weights, knee=s.knee, full_fidelity=s.full_fidelity, seed=seed)


def create_or_load_study(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage | str,
    study_name: str | None = None,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study (directions, metric names, config, baseline trials) or resume it.

    Resuming checks that the stored config equals ``config``: a study's trials are only
    comparable under one config, so a mismatch is a :class:`StudyError` and nothing is
    written.
    """
    name = study_name or config.study.name
    sampler = sampler or make_sampler(config)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        study = None
    if study is not None:
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None and StudyConfig.from_dict(stored) != config:
            raise StudyError(
                f"study {name!r} exists in this storage with a different config; "
                "resume it with the config it was created with, or pass --study NEWNAME"
            )
        return study
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True)
    if CONFIG_ATTR not in study.user_attrs:
        study.set_metric_names(METRIC_NAMES)
        study.set_user_attr(CONFIG_ATTR, config.to_dict())
        for kind in config.study.baselines:
            study.enqueue_trial({}, user_attrs={"kind": kind}, skip_if_exists=False)
    return study


def load_study_config(study: optuna.Study) -> StudyConfig:
    """The config a study was created with (stored as a user attribute)."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise StudyError(f"study {study.study_name!r} was not created by motune (no stored config)")
    return StudyConfig.from_dict(stored)


def trial_kind(trial: optuna.trial.BaseTrial) -> str:
    """``weighted_sum`` unless the trial was enqueued as a baseline."""
    return str(trial.user_attrs.get("kind", "weighted_sum"))


_DATA_CACHE: dict[tuple[Any, ...], Dataset] = {}


def cached_dataset(config: StudyConfig) -> Dataset:
    """Load the study's data once per process (trials share it)."""
    d = config.data
    key = (d.dataset, d.data_dir, d.image_size, d.limit)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(d.dataset, d.data_dir, image_size=d.image_size, limit=d.limit)
    return _DATA_CACHE[key]


def result_attrs(result: TrainResult, kind: str, fidelity: str) -> dict[str, Any]:
    """The user attributes every completed trial carries (the export/plot schema)."""
    return {
        "kind": kind,
        "fidelity": fidelity,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "nonzeros": result.nonzeros,
        "penalised_size": result.penalised_size,
        "fraction_kept": result.fraction_kept,
        "nonzeros_per_layer": result.nonzeros_per_layer,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "seed": result.config.seed,
        "alpha_mean": result.alpha_mean,
        "history": [
            {
                "epoch": r.epoch,
                "nonzeros": r.nonzeros,
                "nonzeros_per_layer": r.nonzeros_per_layer,
                "l1": r.l1,
                "val_accuracy": r.val_accuracy,
                "val_cross_entropy": r.val_cross_entropy,
                "alpha_mean": r.alpha_mean,
            }
            for r in result.history
        ],
    }


EpochHook = Callable[[optuna.Trial, EpochRecord, int], None]


@dataclass
class Objective:
    """The trial objective: train one network, keep its checkpoint, return ``(f1, f2)``.

    Picklable (a plain dataclass) so worker processes can receive it.
    """

    config: StudyConfig
    artifact_dir: str
    on_epoch: EpochHook | None = None
    on_start: Callable[[optuna.Trial, str, float | None, int], None] | None = None

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        kind = trial_kind(trial)
        fidelity = KneeSampler.fidelity(trial) if kind == "weighted_sum" else "full"
        lam = trial.suggest_float(PARAM, 0.0, 1.0) if kind == "weighted_sum" else None
        seed = self.config.study.seed + trial.number
        cfg = self.config.train_config(kind, l1_weight=lam or 0.0, full=fidelity == "full", seed=seed)
        if self.on_start is not None:
            self.on_start(trial, kind, lam, cfg.epochs)
        hook = (lambda record: self.on_epoch(trial, record, cfg.epochs)) if self.on_epoch else None
        try:
            result = train(cfg, data=cached_dataset(self.config), callback=hook)
        except DivergenceError as exc:
            trial.set_user_attr("kind", kind)
            trial.set_user_attr("fail_reason", str(exc))
            raise
        for key, value in result_attrs(result, kind, fidelity).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("checkpoint", self._store_checkpoint(trial, result, kind, lam))
        return result.cross_entropy, result.l1

    def _store_checkpoint(self, trial: optuna.Trial, result: TrainResult, kind: str, lam: float | None) -> str:
        store = FileSystemArtifactStore(self.artifact_dir)
        Path(self.artifact_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="motune-ckpt-") as tmp:
            path = save_checkpoint(
                Path(tmp, f"trial-{trial.number:04d}.pt"),
                model=result.config.model,
                input_shape=result.input_shape,
                num_classes=result.num_classes,
                state_dict=result.state_dict,
                metadata={"trial": trial.number, "kind": kind, "l1_weight": lam, "val_accuracy": result.val_accuracy},
            )
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


# ----------------------------------------------------------------------------- queries


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with two finite values."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and len(t.values) == 2 and all(math.isfinite(v) for v in t.values)
    ]


def knee_trial(study: optuna.Study, config: StudyConfig | None = None) -> FrozenTrial | None:
    """The knee of the weighted-sum front (the full-fidelity retrain when there is one)."""
    config = config or load_study_config(study)
    return make_sampler(config).knee_trial(study)


def hypervolume_normalised(trials: Sequence[FrozenTrial], bounds: tuple[Sequence[float], Sequence[float]] | None = None) -> float:
    """Hypervolume of ``trials``' values in objectives normalised to [0, 1] by ideal/nadir, reference (1.1, 1.1)."""
    from motune.pareto import hypervolume, normalise
    import numpy as np

    if not trials:
        return 0.0
    points = np.array([t.values for t in trials], dtype=float)
    ideal, nadir = (points.min(axis=0), points.max(axis=0)) if bounds is None else (np.asarray(bounds[0]), np.asarray(bounds[1]))
    return float(hypervolume(normalise(points, ideal, nadir), np.array([1.1, 1.1])))


@dataclass
class StudySummary:
    """What ``motune status`` and the end of ``motune run`` print."""

    study_name: str
    states: dict[str, int]
    front_size: int
    knee: FrozenTrial | None
    hypervolume: float
    converged: bool
    pareto: list[FrozenTrial] = field(default_factory=list)


def summarize(study: optuna.Study, config: StudyConfig | None = None) -> StudySummary:
    """Trials by state, the Pareto set, the knee, and the hypervolume of the front."""
    from motune.pareto import nondominated_mask
    import numpy as np

    config = config or load_study_config(study)
    trials = study.get_trials(deepcopy=False)
    states = {state.name: 0 for state in TrialState}
    for t in trials:
        states[t.state.name] += 1
    done = completed(study)
    pareto: list[FrozenTrial] = []
    if done:
        mask = nondominated_mask(np.array([t.values for t in done], dtype=float))
        pareto = sorted((t for t, keep in zip(done, mask) if keep), key=lambda t: t.values[0])
    return StudySummary(
        study_name=study.study_name,
        states={k: v for k, v in states.items() if v},
        front_size=len(pareto),
        knee=knee_trial(study, config),
        hypervolume=hypervolume_normalised(done),
        converged=make_sampler(config).is_converged(study),
        pareto=pareto,
    )


def run_study(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage | str,
    *,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    artifact_dir: str | os.PathLike[str] | None = None,
    objective: Objective | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    seed: int | None = None,
) -> optuna.Study:
    """Run (or resume) a study until it has ``n_trials`` completed trials, converges, or times out.

    ``n_trials`` counts COMPLETE trials of the whole study, not of this call, so running
    again after an interruption finishes the same budget. Diverging trials end as FAIL
    with their reason and the study goes on.
    """
    sampler = make_sampler(config, seed=seed)
    study = create_or_load_study(config, storage, study_name, sampler=sampler)
    target = n_trials or config.study.n_trials
    url_dir = artifact_dir or default_artifact_dir(storage if isinstance(storage, str) else "", study.study_name)
    objective = objective or Objective(config, str(url_dir))

    def stop_when_done(study: optuna.Study, _trial: FrozenTrial) -> None:
        failed = len(study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))
        # Stop on the budget, on convergence, or when trials keep failing (a broken setup).
        if len(completed(study)) >= target or sampler.is_converged(study) or failed >= max(5, target):
            study.stop()

    if len(completed(study)) >= target or sampler.is_converged(study):
        return study
    study.optimize(
        objective,
        timeout=timeout if timeout is not None else config.study.timeout,
        callbacks=[stop_when_done, *callbacks],
        catch=(DivergenceError,),
        gc_after_trial=False,
    )
    return study
