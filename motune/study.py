"""A study config becomes an Optuna multi-objective study: the trial objective and the runner.

Each trial trains one network with :func:`motune.train` and returns
``(cross_entropy, l1)``; weighted-sum trials take ``λ`` from
``trial.suggest_float("l1_weight", 0, 1)`` (chosen by :class:`~motune.sampler.KneeSampler`),
baseline trials (SMGD, multi-Adam, multi-RMSprop) are enqueued with a ``kind`` user
attribute and take no ``λ``; so does the GMP baseline (``baselines = ["gmp"]``,
:mod:`motune.gmp`), queued once the knee's full-fidelity retrain completes and run on
top of ``n_trials``. Every trial's pruned weights are kept as an Optuna artifact
(so optuna-dashboard can offer them), its metrics as user attributes (the schema is
:mod:`motune.trials`). With ``[study] prune`` a weighted-sum trial whose network collapses,
or whose intermediate objectives are dominated, stops early as PRUNED
(:mod:`motune.trial_pruning`).

Scale out. Any number of processes, on any machines, run :func:`run_study` on one
storage; the sampler coordinates through the storage alone. :func:`run_study` counts
COMPLETE trials of the whole study and starts a trial only while ``completed + running
< n_trials``, so a study asked for N completed trials ends with N, whoever trained them.
It drives Optuna's ask-and-tell interface itself (rather than ``study.optimize``) so
that training and recording are separate steps: a result whose trial was failed
elsewhere meanwhile still lands (:func:`record_outcome`), and a signal can stop a trial
at any point. Faults (dead workers, signals, heartbeats) are :mod:`motune.faults`;
storage outages are ridden out by :mod:`motune.patience`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from motune.checkpoint import save_checkpoint
from motune.config import ConfigError, StudyConfig, config_key
from motune.continuation import WarmStart, wait_for_parent, warm_start
from motune.data import Dataset, Loaders, load_data
from motune.faults import (
    DEFAULT_GRACE,
    DEFAULT_HEARTBEAT,
    WORKER_ATTR,
    Interrupted,
    RetryTrial,
    TrialHeartbeat,
    WorkerWatch,
    deferred,
    interrupt_reason,
    interruptible,
    requeue_interrupted,
    worker_identity,
)
from motune.gmp import enqueue_for_knee, gmp_trials, train_gmp
from motune.imports import ImportPathError
from motune.models import build_model, penalised_parameters
from motune.patience import DEFAULT_PATIENCE, StorageUnavailable, patient
from motune.sampler import EXTRA, FULL, ROLE_ATTR, KneeSampler, SharedLock
from motune.storage import StudyError, default_artifact_dir, planning_lock_for
from motune.train import DivergenceError, EpochRecord, TrainResult, train
from motune.trial_pruning import TrialMonitor
from motune.trials import (
    CHECKPOINT,
    CHECKPOINT_BYTES,
    CONFIG_ATTR,
    FAIL_REASON,
    FAILURE,
    FIDELITY,
    GMP,
    GMP_OF,
    GMP_SEED,
    GMP_TARGET,
    HISTORY,
    INTERMEDIATES,
    KIND,
    METRIC_NAMES,
    ORPHAN_ATTR_PREFIX,
    PARAM,
    RETRY_HISTORY,
    WEIGHTED_SUM,
    Failure,
    finite_complete,
    hypervolume_normalised,
    pareto_set,
    trial_kind,
    trial_seed,
)

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- study


def make_sampler(
    config: StudyConfig, seed: int | None = None, planning_lock: str | SharedLock | None = None
) -> KneeSampler:
    """The study's :class:`KneeSampler` from the ``[study]`` table.

    Collapsed networks (no weights left, chance level) do not set the knee's nadir
    (``collapsed_nadir=False``; measured with ``bench/knee_nadir.py``, docs/benchmarks.md).
    ``planning_lock``: see :class:`KneeSampler` (:func:`motune.storage.planning_lock_for`).
    """
    s = config.study
    return KneeSampler(start_weights=s.start_weights, knee=s.knee, full_fidelity=s.full_fidelity, seed=seed,
                       collapsed_nadir=False, planning_lock=planning_lock)


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
        if StudyConfig.from_dict(stored).on_device(config.train.device) != config:  # the device is local
            raise StudyError(
                f"study {name!r} exists in this storage with a different config; "
                "resume it with the config it was created with, or pass --study NEWNAME"
            )
        return study
    trials = study.get_trials(deepcopy=False)
    queued = [t for t in trials if t.state == TrialState.WAITING and KIND in t.user_attrs]
    if len(study.directions) != 2 or len(queued) != len(trials):
        raise StudyError(f"study {name!r} exists in this storage and was not created by motune; pass --study NEWNAME")
    have = [trial_kind(t) for t in queued]
    for kind in (k for k in config.study.baselines if k != GMP):  # gmp is queued once the knee is known
        if kind in have:
            have.remove(kind)
        else:
            study.enqueue_trial({}, user_attrs={KIND: kind}, skip_if_exists=False)
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


_DATA_CACHE: dict[tuple[Any, ...], Dataset | Loaders] = {}
_NETWORKS_CHECKED: set[tuple[Any, ...]] = set()  # (data, model, model_args, penalise) that built fine


def _config_error(exc: ValueError) -> ConfigError:
    """A training-layer error ('model_args: ...') as a ConfigError naming the config key ('train.model_args: ...')."""
    if isinstance(exc, ImportPathError):
        return ConfigError(f"{config_key(exc.field)}: {exc.detail}")
    name, _, rest = str(exc).partition(": ")
    return ConfigError(f"{config_key(name)}: {rest}" if rest else str(exc))


def cached_dataset(config: StudyConfig) -> Dataset | Loaders:
    """Load the study's data once per process (trials share it) and check that the network builds on it.

    Built-in data or the user's (an import path, see :func:`motune.data.load_data`). The
    first call per data also builds the model once and picks its penalised weights, so a
    module that does not import, a callable that raises or returns the wrong thing, loaders
    that yield something other than ``(x, y)``, an unknown ``*_args`` key or a ``penalise``
    pattern that matches nothing is a :class:`ConfigError` naming the config key, before
    anything touches a storage. This calls the config's import paths: only for a config
    the user trusts (their own file, or ``motune worker --trust-study-config``).
    """
    d, t = config.data, config.train
    key = (d.dataset, d.data_dir, d.image_size, d.limit, json.dumps(d.args, sort_keys=True, default=str))
    if key not in _DATA_CACHE:
        try:
            data = load_data(d.dataset, d.data_dir, image_size=d.image_size, limit=d.limit, args=d.args)
            if isinstance(data, Loaders):
                data.check_train()
        except ImportPathError as exc:
            raise _config_error(exc) from None
        _DATA_CACHE[key] = data
    data = _DATA_CACHE[key]
    network = (key, t.model, json.dumps(t.model_args, sort_keys=True, default=str), json.dumps(t.penalise))
    if network not in _NETWORKS_CHECKED:
        try:
            model = build_model(t.model, data.input_shape, data.num_classes, t.model_args)
            penalised_parameters(model, t.penalise)
        except ValueError as exc:
            raise _config_error(exc) from None
        _NETWORKS_CHECKED.add(network)
    return data


def result_attrs(result: TrainResult, kind: str, fidelity: str) -> dict[str, Any]:
    """The user attributes every completed trial carries (the export/plot schema)."""
    return {
        KIND: kind,
        FIDELITY: fidelity,
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
    }


def history_records(result: TrainResult) -> list[dict[str, Any]]:
    """The per-epoch history as JSON records: stored as the trial's history artifact (``trials.HISTORY``).

    Kept out of the user attributes so that the trial's page in optuna-dashboard stays
    readable; read it back with :func:`motune.trials.trial_history`.
    """
    return [
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
    ]


# ----------------------------------------------------------------------------- objective


EpochHook = Callable[[optuna.Trial, EpochRecord, int], None]


class AtomicArtifactStore(FileSystemArtifactStore):
    """Optuna's file-system artifact store, but a file appears whole or not at all.

    Optuna's store writes straight to the final name, so a worker stopped mid-upload would
    leave a truncated checkpoint that later exports trust. Here the bytes go to a hidden
    temporary file in the same directory, which is renamed into place when complete and
    removed if anything (a signal included) interrupts the copy.
    """

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        final = Path(self._base_path, artifact_id)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                shutil.copyfileobj(content_body, f)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@dataclass
class TrialOutcome:
    """A trained network's results, not yet in the storage: values, user attributes, checkpoint file.

    Training and recording are separate steps so that a result whose trial was failed
    elsewhere meanwhile can still be recorded (see :func:`record_outcome`).
    """

    values: tuple[float, float]
    attrs: dict[str, Any]
    checkpoint: Path  # a file in a private temporary directory; :meth:`discard` removes it
    history: list[dict[str, Any]] = field(default_factory=list)  # history_records: stored as an artifact

    def discard(self) -> None:
        shutil.rmtree(self.checkpoint.parent, ignore_errors=True)


@dataclass
class Objective:
    """The trial objective: train one network, keep its checkpoint, return ``(f1, f2)``.

    Picklable (a plain dataclass) so worker processes can receive it. :meth:`train_trial`
    trains and returns a :class:`TrialOutcome` without recording it; calling the
    objective (what ``study.optimize`` does) also records it on the trial. While a trial
    runs it is marked alive (:class:`TrialHeartbeat`, every ``heartbeat_interval``
    seconds; ``None``: the worker is recorded, no heartbeat). A diverging trial (NaN/inf
    loss) raises :class:`DivergenceError` with ``fail_reason`` recorded.
    """

    config: StudyConfig
    artifact_dir: str
    on_epoch: EpochHook | None = None
    on_start: Callable[[optuna.Trial, str, float | None, int], None] | None = None
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        with TrialHeartbeat(trial.storage, trial._trial_id, self.heartbeat_interval):
            try:
                outcome = self.train_trial(trial)
            except KeyboardInterrupt as exc:
                trial.set_user_attr(FAIL_REASON, interrupt_reason(exc))
                trial.set_user_attr(FAILURE, Failure.INTERRUPTED.value)
                raise
            try:
                _store(trial.storage, trial._trial_id, outcome, self.artifact_store())
            finally:
                outcome.discard()
        return outcome.values

    def artifact_store(self) -> AtomicArtifactStore:
        Path(self.artifact_dir).mkdir(parents=True, exist_ok=True)
        return AtomicArtifactStore(self.artifact_dir)

    def train_trial(self, trial: optuna.Trial) -> TrialOutcome:
        """Train the trial's network (data loading, training, evaluation, checkpoint file)."""
        kind = trial_kind(trial)
        fidelity = KneeSampler.fidelity(trial) if kind == WEIGHTED_SUM else FULL
        lam = trial.suggest_float(PARAM, 0.0, 1.0) if kind == WEIGHTED_SUM else None
        seed = trial_seed(self.config.study.seed, kind, lam, fidelity)
        if kind == GMP:  # the knee's seed: same initial weights and batch order, a paired comparison
            seed = int(trial.user_attrs.get(GMP_SEED, seed))
        cfg = self.config.train_config(kind, l1_weight=lam or 0.0, full=fidelity == FULL, seed=seed)
        if self.config.study.continuation and kind == WEIGHTED_SUM:  # may wait for a parent another worker trains
            done, parent = wait_for_parent(trial)
            warm = warm_start(self.config, done, kind, fidelity, lam, self.artifact_store(), parent)
        else:
            warm = WarmStart()
        cfg = cfg.replace(epochs=warm.epochs) if warm.epochs else cfg
        if self.on_start is not None:
            self.on_start(trial, kind, lam, cfg.epochs)
        data = cached_dataset(self.config)
        s = self.config.study
        monitor = TrialMonitor.for_trial(trial, fidelity, data.num_classes, cfg.epochs, patience=s.prune_patience,
                                         margin=s.prune_margin, warm_started=warm.warm) \
            if s.prune and kind == WEIGHTED_SUM else None
        cfg = cfg.replace(eval_every_epoch=True) if monitor else cfg  # the pruner reads validation metrics

        def hook(record: EpochRecord) -> None:
            if self.on_epoch:
                self.on_epoch(trial, record, cfg.epochs)
            if monitor:
                monitor(record)  # raises optuna.TrialPruned

        try:
            if kind == GMP:
                result = train_gmp(cfg, trial.user_attrs[GMP_TARGET], data=data, callback=hook)
            else:
                result = train(cfg, data=data, callback=hook, init_state=warm.state)
        except optuna.TrialPruned:
            monitor.record(trial, {KIND: kind, FIDELITY: fidelity, "epochs": len(monitor.intermediates), **warm.attrs()})
            raise
        except DivergenceError as exc:
            trial.set_user_attr(KIND, kind)
            trial.set_user_attr(FAIL_REASON, str(exc))
            trial.set_user_attr(FAILURE, Failure.DIVERGED.value)
            raise
        tmp = Path(tempfile.mkdtemp(prefix="motune-ckpt-"))
        try:
            path = save_checkpoint(
                tmp / f"trial-{trial.number:04d}.pt",
                model=result.model_name,
                model_args=result.model_args,
                penalised=result.penalised,
                input_shape=result.input_shape,
                num_classes=result.num_classes,
                state_dict=result.state_dict,
                metadata={"trial": trial.number, KIND: kind, PARAM: lam, "val_accuracy": result.val_accuracy},
            )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        attrs = {**result_attrs(result, kind, fidelity), CHECKPOINT_BYTES: path.stat().st_size, **warm.attrs()}
        if monitor:
            attrs[INTERMEDIATES] = monitor.stored()
        return TrialOutcome((result.cross_entropy, result.l1), attrs, path, history_records(result))


def _store(storage: optuna.storages.BaseStorage, trial_id: int, outcome: TrialOutcome, store: AtomicArtifactStore) -> None:
    """Write ``outcome``'s attributes, checkpoint and history to a RUNNING trial (each write retried through outages)."""
    for key, value in outcome.attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    frozen = storage.get_trial(trial_id)
    artifact_id = upload_artifact(artifact_store=store, file_path=str(outcome.checkpoint), study_or_trial=frozen, storage=storage)
    if outcome.history:
        path = outcome.checkpoint.with_name(f"history-trial-{frozen.number:04d}.json")
        path.write_text(json.dumps(outcome.history), encoding="utf-8")
        history_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=frozen, storage=storage,
                                     mimetype="application/json")
        storage.set_trial_user_attr(trial_id, HISTORY, history_id)
    storage.set_trial_user_attr(trial_id, CHECKPOINT, artifact_id)


def _find_retry(study: optuna.Study, number: int) -> FrozenTrial | None:
    """The WAITING trial queued to retry trial ``number`` (by :class:`RetryTrial`), if any."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        if t.system_attrs.get(RETRY_HISTORY, [None])[-1] == number:
            return t
    return None


def record_outcome(study: optuna.Study, trial_id: int, outcome: TrialOutcome, store: AtomicArtifactStore) -> FrozenTrial:
    """Record ``outcome`` on its trial and tell it COMPLETE; return the trial that holds the result.

    If the trial was failed elsewhere while it trained (another worker took it for dead,
    or a person failed it), the result is not lost: it completes the trial's queued retry
    (same ``λ``, kind and fidelity) when nobody has started that yet, and is otherwise
    kept, checkpoint included, in the study user attribute ``motune:result_of_trial_N``.
    """
    storage = study._storage
    try:
        if storage.get_trial(trial_id).state == TrialState.RUNNING:
            _store(storage, trial_id, outcome, store)
            with deferred():  # a tell is never cut in half
                study.tell(storage.get_trial_number_from_id(trial_id), outcome.values)
            return storage.get_trial(trial_id)
    except (UpdateFinishedTrialError, ValueError):  # failed elsewhere between the check and a write
        pass
    frozen = storage.get_trial(trial_id)
    if frozen.state == TrialState.COMPLETE:  # our tell landed (an answer lost in an outage, then retried)
        return frozen
    retry = _find_retry(study, frozen.number)
    if retry is not None and storage.set_trial_state_values(retry._trial_id, TrialState.RUNNING):  # claimed it
        storage.set_trial_system_attr(retry._trial_id, WORKER_ATTR, worker_identity())
        _log.warning("motune: trial %d was failed elsewhere while it trained (%s); its result completes its retry, trial %d",
                     frozen.number, frozen.user_attrs.get(FAIL_REASON, "no reason given"), retry.number)
        return record_outcome(study, retry._trial_id, outcome, store)
    artifact_id = upload_artifact(artifact_store=store, file_path=str(outcome.checkpoint), study_or_trial=study)
    kept = dict(outcome.attrs)
    kept.update({"values": list(outcome.values), CHECKPOINT: artifact_id})
    study.set_user_attr(f"{ORPHAN_ATTR_PREFIX}{frozen.number}", kept)
    _log.warning("motune: trial %d was failed elsewhere while it trained and its retry is already taken; "
                 "its result is kept in study user attribute %s%d", frozen.number, ORPHAN_ATTR_PREFIX, frozen.number)
    return frozen


# ----------------------------------------------------------------------------- queries


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """The study's COMPLETE trials with two finite values (a list: its length is what the budget counts)."""
    return finite_complete(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


def knee_trial(study: optuna.Study, config: StudyConfig | None = None) -> FrozenTrial | None:
    """The knee of the weighted-sum front (the full-fidelity retrain when there is one)."""
    config = config or load_study_config(study)
    return make_sampler(config).knee_trial(study)


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
    config = config or load_study_config(study)
    states = {state.name: 0 for state in TrialState}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] += 1
    done = completed(study)
    pareto = pareto_set(done)
    return StudySummary(
        study_name=study.study_name,
        states={k: v for k, v in states.items() if v},
        front_size=len(pareto),
        knee=knee_trial(study, config),
        hypervolume=hypervolume_normalised(done),
        converged=make_sampler(config).is_converged(study),
        pareto=pareto,
    )


def _budget_count(study: optuna.Study, sampler: KneeSampler) -> int:
    """The completed trials that count towards ``n_trials``: what one worker would have trained.

    Baselines and the trials the one-worker search read (:func:`motune.sampler.replay`);
    guesses of idle workers that it never read come on top (``KneeSampler.unused_guesses``),
    and so does a gmp baseline. So the budget ends the search at the same
    point, and with the same knee, with any number of workers.
    """
    unused = sampler.unused_guesses(study)
    return sum(1 for t in completed(study) if trial_kind(t) != GMP and t.number not in unused)


def _running_budgeted(study: optuna.Study, before: int | None = None) -> int:
    """RUNNING trials (numbered below ``before``) that will count towards ``n_trials``: all but idle workers' guesses."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return sum(1 for t in running if t.system_attrs.get(ROLE_ATTR) != EXTRA and (before is None or t.number < before))


def _gmp_waiting(study: optuna.Study) -> bool:
    return any(t.state == TrialState.WAITING for t in gmp_trials(study))


def _gmp_after_knee(config: StudyConfig) -> Callable[[optuna.Study, FrozenTrial], None]:
    """A callback: once the search has converged (its knee retrained), queue the knee's GMP trial (motune.gmp).

    Any worker, after any trial: the retrain may have completed before the trial that
    confirmed its knee (an idle worker's early retrain, :mod:`motune.sampler`), and
    queueing is idempotent (a GMP trial queued twice in a race runs once).
    """
    sampler = make_sampler(config)

    def after(study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state == TrialState.COMPLETE and trial_kind(trial) != GMP and sampler.is_converged(study):
            enqueue_for_knee(study, sampler.knee_trial(study))

    return after


def _first_gmp_for_same_knee(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial | None:
    """An earlier, not failed GMP trial for the same knee as ``trial``, if any.

    Two workers resuming at once may each queue the knee's GMP trial (the check and the
    queueing are two storage calls); the lower number runs, the other is not run.
    """
    of = trial.user_attrs.get(GMP_OF)
    return next((t for t in gmp_trials(study, of) if t.number < trial.number and t.state != TrialState.FAIL), None)


class BudgetReached(Exception):
    """A trial was started after other workers had already filled the study's budget."""


def _queued(trial: FrozenTrial) -> bool:
    """Whether a trial came from the queue (a baseline or a retry), not from the sampler alone."""
    return KIND in trial.user_attrs or RETRY_HISTORY in trial.system_attrs or "fixed_params" in trial.system_attrs


@dataclass
class _Budgeted:
    """Wraps the objective: refuses to train past the budget."""

    objective: Callable[[optuna.Trial], Any]
    study: optuna.Study
    target: int
    done: Callable[[], bool]
    sampler: KneeSampler

    def check(self, trial: optuna.Trial) -> None:
        """Raise :class:`BudgetReached` (trial marked ``not_run``, a queued one put back) if the budget is full."""
        # Trials started before this one by other workers count: with them the budget may be full.
        if trial_kind(trial) == GMP:  # queued after the knee: runs on top of the budget, once per knee
            first = _first_gmp_for_same_knee(self.study, trial)
            if first is not None:
                trial.set_user_attr(FAIL_REASON, f"not run: GMP trial {first.number} already compares the same knee")
                trial.set_user_attr(FAILURE, Failure.NOT_RUN.value)
                raise BudgetReached()
            return
        ahead = _running_budgeted(self.study, before=trial.number)
        full = _budget_count(self.study, self.sampler) + ahead >= self.target
        if full or self.done():
            frozen = self.study._storage.get_trial(trial._trial_id)
            if _queued(frozen):  # a baseline or retry popped from the queue: put it back
                RetryTrial()(self.study, frozen, limited=False)
            why = f"other workers reached the budget of {self.target} completed trials" if full else \
                "the search had ended (its knee retrained) when this trial started"
            trial.set_user_attr(FAIL_REASON, f"not run: {why}")
            trial.set_user_attr(FAILURE, Failure.NOT_RUN.value)
            raise BudgetReached()

    def __call__(self, trial: optuna.Trial) -> Any:
        self.check(trial)
        return self.objective(trial)


def _ask(study: optuna.Study, current: list[int]) -> optuna.Trial:
    """Create a trial and claim it for this worker; ``current`` receives its id, for the interrupt handler."""
    with deferred():  # a trial is created and claimed by this worker as one step
        trial = study.ask()
        current.append(trial._trial_id)
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, worker_identity())
    return trial


def _run_one(
    study: optuna.Study,
    trial: optuna.Trial,
    objective: Objective,
    budgeted: _Budgeted,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]],
) -> bool:
    """Train the trial from :func:`_ask`, record it (see :func:`record_outcome`); False if the budget was full."""
    storage = study._storage
    try:
        budgeted.check(trial)
        with TrialHeartbeat(storage, trial._trial_id, objective.heartbeat_interval):
            outcome = objective.train_trial(trial)
            try:
                frozen = record_outcome(study, trial._trial_id, outcome, objective.artifact_store())
            finally:
                outcome.discard()
    except optuna.TrialPruned:  # stopped early (motune.trial_pruning): not in the budget, not retried
        with deferred():
            study.tell(trial, state=TrialState.PRUNED, skip_if_finished=True)
        _call(callbacks, study, storage.get_trial(trial._trial_id))
        return True
    except (DivergenceError, BudgetReached) as exc:
        with deferred():
            study.tell(trial, state=TrialState.FAIL)
        frozen = storage.get_trial(trial._trial_id)
        _call(callbacks, study, frozen)
        return not isinstance(exc, BudgetReached)
    except StorageUnavailable:
        raise  # the trial stays RUNNING; whoever sees it next fails it and queues it again
    except Exception as exc:  # a bug or a broken setup: FAIL with the reason, then stop
        with contextlib.suppress(Exception), deferred():
            storage.set_trial_user_attr(trial._trial_id, FAIL_REASON, f"{type(exc).__name__}: {exc}")
            storage.set_trial_user_attr(trial._trial_id, FAILURE, Failure.ERROR.value)
            study.tell(trial, state=TrialState.FAIL)
        raise
    _call(callbacks, study, frozen)
    return True


def _call(callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]], study: optuna.Study, trial: FrozenTrial) -> None:
    for callback in callbacks:
        callback(study, trial)


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
    storage_patience: float = DEFAULT_PATIENCE,
    planning_lock: str | SharedLock | None = None,
) -> optuna.Study:
    """Run (or resume, or join) a study until it has ``n_trials`` completed trials, converges, or times out.

    ``n_trials`` counts COMPLETE trials of the whole study, not of this call, so running
    again after an interruption finishes the same budget, and any number of processes
    can run this on one storage: a trial is started only while ``completed + running <
    n_trials``, where an idle worker's guess counts only once the search has used it
    (:func:`_budget_count`: the budget stops the search where one worker's would), and
    only while the search has a weight worth training (asked for inside
    :meth:`KneeSampler.planning_turn`, so workers woken together do not take
    gap-filling weights); otherwise the process waits for the others (and takes over a trial
    whose worker died, see :class:`WorkerWatch` with ``grace_period``). Diverging trials
    end as FAIL with their reason and the study goes on; so do trials stopped early by
    ``[study] prune`` (:mod:`motune.trial_pruning`), as PRUNED: they do not count towards
    ``n_trials`` and are not retried (``max(5, n_trials)`` pruned trials end the run).
    ``join=True`` opens an existing study and never creates one (``config`` is then the stored config, possibly with a
    local ``data_dir``). ``seed`` seeds the sampler's own random stream: give each
    worker a different one (:func:`worker_seed`). ``planning_lock``: what the sampler's
    workers lock while planning (:class:`KneeSampler`); default
    :func:`motune.storage.planning_lock_for` of ``storage`` when it is a URL.

    Every storage call is retried through outages of up to ``storage_patience`` seconds
    (:mod:`motune.patience`); past that :class:`StorageUnavailable` propagates. On
    SIGINT / SIGTERM (see :func:`handle_signals`) the running trial ends as FAIL at
    whatever point it was (data loading, training, evaluation, checkpoint upload), is
    queued again, and :class:`Interrupted` propagates; a checkpoint is stored whole or
    not at all.
    """
    url = storage if isinstance(storage, str) else ""
    storage = patient(storage, storage_patience)
    lock = planning_lock or planning_lock_for(url, study_name or config.study.name)
    sampler = make_sampler(config, seed=seed, planning_lock=lock)
    if join:
        study = load_existing_study(storage, study_name or config.study.name, sampler=sampler)
    else:
        study = create_or_load_study(config, storage, study_name, sampler=sampler)
    target = n_trials or config.study.n_trials
    checkpoints = artifact_dir or default_artifact_dir(url, study.study_name)
    objective = objective or Objective(config, str(checkpoints))
    timeout = timeout if timeout is not None else config.study.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = WorkerWatch(grace_period)

    def diverged() -> int:
        fails = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        return sum(1 for t in fails if t.user_attrs.get(FAILURE) == Failure.DIVERGED)

    def pruned() -> int:
        return len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))

    def done() -> bool:
        # The budget or convergence (then a queued gmp trial still runs), or trials that keep diverging
        # or being pruned (a broken setup).
        return (((_budget_count(study, sampler) >= target or sampler.is_converged(study)) and not _gmp_waiting(study))
                or diverged() >= max(5, target) or pruned() >= max(5, target))

    budgeted = _Budgeted(objective, study, target, done, sampler)
    if GMP in config.study.baselines:  # the worker that completes the knee's retrain queues its GMP trial
        callbacks = [_gmp_after_knee(config), *callbacks]
        enqueue_for_knee(study, knee_trial(study, config))  # on resume: one lost with a worker that died meanwhile
    current: list[int] = []
    try:
        with interruptible():  # a signal stops whatever runs, except a storage call in flight
            while True:
                watch.sweep(study)
                if done() or (deadline is not None and time.monotonic() >= deadline):
                    break
                if _budget_count(study, sampler) + _running_budgeted(study) >= target and not _gmp_waiting(study):
                    time.sleep(poll_interval)  # the rest of the budget is in other workers' hands: wait
                    continue
                current.clear()
                if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                    trial = _ask(study, current)  # ask() takes the queued trials first
                else:
                    # Ask inside the turn, so the weight the search is ready for is this trial's:
                    # a worker that asked after another took it would get a gap-filling weight.
                    with sampler.planning_turn(study, poll_interval) as ready:
                        if not ready:
                            continue  # the search waits on running trials: nothing worth starting yet
                        if done():
                            break  # the result it waited for ended the search
                        trial = _ask(study, current)
                if not _run_one(study, trial, objective, budgeted, callbacks):
                    time.sleep(poll_interval)
    except KeyboardInterrupt as exc:
        note = requeue_interrupted(study, current[-1] if current else None, interrupt_reason(exc))
        if isinstance(exc, Interrupted):
            exc.note = note
        raise
    return study
