"""A study config becomes an Optuna multi-objective study: the trial objective and the runner.

Each trial trains one network with :func:`motune.train` and returns
``(cross_entropy, l1)``; weighted-sum trials take ``λ`` from
``trial.suggest_float("l1_weight", 0, 1)`` (chosen by :class:`~motune.sampler.KneeSampler`),
baseline trials (SMGD, multi-Adam, multi-RMSprop) are enqueued with a ``kind`` user
attribute and take no ``λ``. Every trial's pruned weights are kept as an Optuna artifact
(so optuna-dashboard can offer them), its metrics as user attributes.

Storages are opened by :mod:`motune.storage`; fault handling lives in :mod:`motune.faults`.

Scale out and faults (DESIGN.md §7). Any number of processes, on any machines, run
:func:`run_study` on one storage; the sampler coordinates through the storage alone.
:func:`run_study` counts COMPLETE trials of the whole study and starts a trial only while
``completed + running < n_trials``, so a study asked for N completed trials ends with N,
whoever trained them. A trial whose worker dies is failed and queued again with the same
``λ``, fidelity and kind (:class:`RetryTrial`) by the next worker that notices
(:class:`WorkerWatch`): its process is gone (same host), its heartbeat stopped (a
``motune:heartbeat`` system attribute every few seconds, any storage), or Optuna's RDB
heartbeat went stale. SIGINT / SIGTERM (:func:`handle_signals`) stop the running trial
as FAIL with ``fail_reason`` and queue it again, so running again resumes the budget.

Every FAIL trial motune makes carries user attributes ``fail_reason`` (for people) and
``failure`` (``diverged``, ``interrupted``, ``worker_lost``, ``not_run``).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from motune.checkpoint import save_checkpoint
from motune.config import StudyConfig
from motune.data import Dataset, load_dataset
from motune.faults import (
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    Interrupted,
    RetryTrial,
    TrialHeartbeat,
    WorkerWatch,
    check_interrupt,
    fail_and_retry,
    interrupt_reason,
    interruptible,
)
from motune.sampler import KneeSampler
from motune.storage import (
    StudyError,
    default_artifact_dir,
)
from motune.train import DivergenceError, EpochRecord, TrainResult, train

METRIC_NAMES = ["cross_entropy", "l1"]
CONFIG_ATTR = "motune:config"
PARAM = "l1_weight"


_log = logging.getLogger(__name__)


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
    written. The config is stored last, as the mark of a finished setup, so a setup cut
    short (Ctrl-C, a crash) is completed on the next run rather than left half-made.
    """
    name = study_name or config.study.name
    sampler = sampler or make_sampler(config)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True
        )
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is not None:
        if StudyConfig.from_dict(stored) != config:
            raise StudyError(
                f"study {name!r} exists in this storage with a different config; "
                "resume it with the config it was created with, or pass --study NEWNAME"
            )
        return study
    trials = study.get_trials(deepcopy=False)
    queued = [t for t in trials if t.state == TrialState.WAITING and "kind" in t.user_attrs]
    if len(study.directions) != 2 or len(queued) != len(trials):
        raise StudyError(f"study {name!r} exists in this storage and was not created by motune; pass --study NEWNAME")
    have = [trial_kind(t) for t in queued]
    for kind in config.study.baselines:
        if kind in have:
            have.remove(kind)
        else:
            study.enqueue_trial({}, user_attrs={"kind": kind}, skip_if_exists=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRIC_NAMES)
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return study


def load_existing_study(
    storage: optuna.storages.BaseStorage | str, study_name: str, *, sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    """Open a study motune created, never creating one (what a joining worker does)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        raise StudyError(f"study {study_name!r} not found in this storage; create it first with `motune create CONFIG`") from None
    load_study_config(study)  # raises StudyError if motune did not set it up
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


# ----------------------------------------------------------------------------- objective


EpochHook = Callable[[optuna.Trial, EpochRecord, int], None]


@dataclass
class Objective:
    """The trial objective: train one network, keep its checkpoint, return ``(f1, f2)``.

    Picklable (a plain dataclass) so worker processes can receive it. While a trial runs
    it is marked alive (:class:`TrialHeartbeat`, every ``heartbeat_interval`` seconds;
    ``None``: the worker is recorded, no heartbeat). A diverging trial (NaN/inf loss) and
    an interrupted one end as FAIL with ``fail_reason``; only training can be
    interrupted, so a checkpoint is either stored whole or not at all.
    """

    config: StudyConfig
    artifact_dir: str
    on_epoch: EpochHook | None = None
    on_start: Callable[[optuna.Trial, str, float | None, int], None] | None = None
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        with TrialHeartbeat(trial.storage, trial._trial_id, self.heartbeat_interval):
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> tuple[float, float]:
        kind = trial_kind(trial)
        fidelity = KneeSampler.fidelity(trial) if kind == "weighted_sum" else "full"
        lam = trial.suggest_float(PARAM, 0.0, 1.0) if kind == "weighted_sum" else None
        seed = self.config.study.seed + trial.number
        cfg = self.config.train_config(kind, l1_weight=lam or 0.0, full=fidelity == "full", seed=seed)
        if self.on_start is not None:
            self.on_start(trial, kind, lam, cfg.epochs)
        hook = (lambda record: self.on_epoch(trial, record, cfg.epochs)) if self.on_epoch else None
        try:
            with interruptible():
                result = train(cfg, data=cached_dataset(self.config), callback=hook)
        except DivergenceError as exc:
            trial.set_user_attr("kind", kind)
            trial.set_user_attr("fail_reason", str(exc))
            trial.set_user_attr("failure", "diverged")
            raise
        except KeyboardInterrupt as exc:
            trial.set_user_attr("fail_reason", interrupt_reason(exc))
            trial.set_user_attr("failure", "interrupted")
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


class BudgetReached(Exception):
    """A trial was started after other workers had already filled the study's budget."""


def _queued(trial: FrozenTrial) -> bool:
    """Whether a trial came from the queue (a baseline or a retry), not from the sampler alone."""
    return "kind" in trial.user_attrs or "retry_history" in trial.system_attrs or "fixed_params" in trial.system_attrs


@dataclass
class _Budgeted:
    """Wraps the objective: refuses to train past the budget, remembers the running trial."""

    objective: Callable[[optuna.Trial], Any]
    study: optuna.Study
    target: int
    done: Callable[[], bool]
    trial_id: int | None = None

    def __call__(self, trial: optuna.Trial) -> Any:
        self.trial_id = trial._trial_id
        # Trials started before this one by other workers count: with them the budget may be full.
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < trial.number]
        if len(completed(self.study)) + len(ahead) >= self.target or self.done():
            frozen = self.study._storage.get_trial(trial._trial_id)
            if _queued(frozen):  # a baseline or retry popped from the queue: put it back
                RetryTrial()(self.study, frozen, limited=False)
            trial.set_user_attr("fail_reason", f"not run: other workers reached the budget of {self.target} completed trials")
            trial.set_user_attr("failure", "not_run")
            raise BudgetReached()
        return self.objective(trial)


def _requeue_interrupted(study: optuna.Study, trial_id: int | None) -> str:
    """After an interrupt: the running trial is FAIL (with its reason) and queued again."""
    if trial_id is None:
        return ""
    trial = study._storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:  # interrupted outside the objective (e.g. during tell)
        fail_and_retry(study, trial, "interrupted", "interrupted", limited=False)
    elif trial.state == TrialState.FAIL and trial.user_attrs.get("failure") not in ("diverged", "not_run"):
        RetryTrial()(study, trial, limited=False)
    else:
        return ""
    return f"trial {trial.number} marked FAIL and queued to run again"


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
    join: bool = False,
    grace_period: float | None = DEFAULT_GRACE,
    poll_interval: float = 0.5,
) -> optuna.Study:
    """Run (or resume, or join) a study until it has ``n_trials`` completed trials, converges, or times out.

    ``n_trials`` counts COMPLETE trials of the whole study, not of this call, so running
    again after an interruption finishes the same budget, and any number of processes
    can run this on one storage: a trial is started only while ``completed + running <
    n_trials``; otherwise the process waits for the others (and takes over a trial
    whose worker died, see :class:`WorkerWatch` with ``grace_period``). Diverging trials
    end as FAIL with their reason and the study goes on. ``join=True`` opens an existing
    study and never creates one (``config`` is then the stored config, possibly with a
    local ``data_dir``). ``seed`` seeds the sampler's own random stream: give each
    worker a different one (:func:`worker_seed`). On SIGINT / SIGTERM (see
    :func:`handle_signals`) the running trial ends as FAIL, is queued again, and
    :class:`Interrupted` propagates.
    """
    sampler = make_sampler(config, seed=seed)
    if join:
        study = load_existing_study(storage, study_name or config.study.name, sampler=sampler)
    else:
        study = create_or_load_study(config, storage, study_name, sampler=sampler)
    target = n_trials or config.study.n_trials
    url_dir = artifact_dir or default_artifact_dir(storage if isinstance(storage, str) else "", study.study_name)
    objective = objective or Objective(config, str(url_dir))
    timeout = timeout if timeout is not None else config.study.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = WorkerWatch(grace_period)

    def diverged() -> int:
        fails = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        return sum(1 for t in fails if t.user_attrs.get("failure") == "diverged")

    def done() -> bool:
        # The budget, convergence, or trials that keep diverging (a broken setup).
        return len(completed(study)) >= target or sampler.is_converged(study) or diverged() >= max(5, target)

    budgeted = _Budgeted(objective, study, target, done)
    while True:
        check_interrupt()
        watch.sweep(study)
        if done() or (deadline is not None and time.monotonic() >= deadline):
            break
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if len(completed(study)) + running >= target:
            with interruptible():  # the rest of the budget is in other workers' hands: wait
                time.sleep(poll_interval)
            continue
        budgeted.trial_id = None
        try:
            study.optimize(
                budgeted, n_trials=1, callbacks=list(callbacks), catch=(DivergenceError, BudgetReached), gc_after_trial=False
            )
        except KeyboardInterrupt as exc:
            note = _requeue_interrupted(study, budgeted.trial_id)
            if isinstance(exc, Interrupted):
                exc.note = note
            raise
        except UpdateFinishedTrialError:
            # Another worker took this one for dead (no heartbeat for the grace period) and
            # queued it again; the result is dropped, the retry runs.
            _log.warning("trial was failed by another worker (missed heartbeats); its retry will run")
        if budgeted.trial_id is not None and study._storage.get_trial(budgeted.trial_id).user_attrs.get("failure") == "not_run":
            with interruptible():
                time.sleep(poll_interval)
    return study
