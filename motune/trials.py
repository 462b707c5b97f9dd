"""The trial schema: what a motune trial records, and the queries every reader shares.

One place for the vocabulary that the study runner writes and the CLI, export, plots
and benchmarks read: the weight parameter's name, the user-attribute keys, the trial
kinds, the fidelities, the failure codes, and the few queries that must mean the same
everywhere ("completed trials with finite values", "the Pareto set", the normalised
hypervolume and its reference point).

Example::

    import optuna
    from motune import trials

    study = optuna.create_study(directions=["minimize", "minimize"])
    for x in (0.0, 0.5, 1.0):
        study.add_trial(optuna.trial.create_trial(values=[x, 1 - x * x]))
    front = trials.pareto_set(trials.finite_complete(study.get_trials()))
    print([t.values for t in front], trials.hypervolume_normalised(front))
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from motune.pareto import hypervolume, nondominated_mask, normalise
from motune.sampler import FULL, KneeSampler

PARAM = "l1_weight"  # the weight λ of the l1 term: the one parameter a weighted-sum trial suggests

# User attributes of a trial (what export, plots and `motune status` read).
KIND = "kind"  # one of KINDS; set on enqueued baselines before they run, on every trial after
FIDELITY = "fidelity"  # FRONT or FULL (the sampler's own mark is a system attribute, see KneeSampler.fidelity)
FAIL_REASON = "fail_reason"  # for people: why a FAIL trial failed
FAILURE = "failure"  # for programs: a Failure value
CHECKPOINT = "checkpoint"  # artifact id of the pruned network
CHECKPOINT_BYTES = "checkpoint_bytes"  # its size on disk (sparse storage: it follows the nonzeros)
INTERMEDIATES = "intermediates"  # [[epoch, val cross-entropy, l1, val accuracy], ...] when trial pruning is on
PRUNE_REASON = "prune_reason"  # for people: why a PRUNED trial was stopped (motune.trial_pruning)
HISTORY = "history_artifact"  # artifact id of the per-epoch history, a JSON list of records (read: trial_history)
LEGACY_HISTORY = "history"  # studies of older motune: the records themselves, as a user attribute
WARM_START_FROM = "warm_start_from"  # number of the trial whose network this one started from, or None (fresh)
WARM_START_NOTE = "warm_start_note"  # why a trial that should have continued started fresh (missing/corrupt parent)
# Study user attributes.
CONFIG_ATTR = "motune:config"  # the StudyConfig the study was created with; its presence marks a finished setup
ORPHAN_ATTR_PREFIX = "motune:result_of_trial_"  # + N: the result of trial N, failed elsewhere while it trained
# System attribute RetryTrial writes: the numbers of the trials this one retries, oldest first.
RETRY_HISTORY = "retry_history"

WEIGHTED_SUM = "weighted_sum"
BASELINE_KINDS: tuple[str, ...] = ("smgd", "multi_adam", "multi_rmsprop")  # multi-gradient runs, no λ
GMP = "gmp"  # gradual magnitude pruning to the knee's sparsity (motune.gmp), enqueued once the knee is retrained
GMP_TARGET = "gmp_target_fraction"  # on a gmp trial: the fraction of penalised weights it keeps (the knee's)
GMP_OF = "gmp_of_trial"  # on a gmp trial: the number of the knee trial it is compared with
GMP_SEED = "gmp_seed"  # on a gmp trial: the knee's seed, which it trains with (same init and batch order)
KINDS: tuple[str, ...] = (WEIGHTED_SUM, *BASELINE_KINDS, GMP)

METRIC_NAMES = ["cross_entropy", "l1"]
HYPERVOLUME_REFERENCE: tuple[float, float] = (1.1, 1.1)  # in normalised objectives: a little beyond the nadir


class Failure(str, Enum):
    """Why motune marked a trial FAIL (the ``failure`` user attribute)."""

    DIVERGED = "diverged"  # NaN / inf loss: not retried, it would diverge again
    INTERRUPTED = "interrupted"  # SIGINT / SIGTERM: queued again
    WORKER_LOST = "worker_lost"  # its worker died or went silent: queued again
    NOT_RUN = "not_run"  # started after other workers had filled the budget
    ERROR = "error"  # an exception in motune or the user's code: the run stops


def trial_kind(trial: Any) -> str:
    """``weighted_sum`` unless the trial was enqueued as a baseline."""
    return str(trial.user_attrs.get(KIND, WEIGHTED_SUM))


def trial_seed(study_seed: int, kind: str, lam: float | None, fidelity: str) -> int:
    """The seed a trial trains with (initial weights, batch order): the study's, shifted by what it trains.

    A hash of kind, λ and fidelity, not the trial number: with several workers the same
    λ gets another number, and its network must not depend on how many workers ran (nor
    may the knee it leads to). A retry trains with the same seed. In ``[0, 2**32)``.

    Example::

        from motune.trials import trial_seed
        assert trial_seed(0, "weighted_sum", 1e-3, "front") == trial_seed(0, "weighted_sum", 1e-3, "front")
        assert trial_seed(0, "weighted_sum", 1e-3, "front") != trial_seed(0, "weighted_sum", 1e-3, "full")
    """
    return (study_seed + zlib.crc32(f"{kind}:{fidelity}:{lam!r}".encode())) % 2**32


def failure(trial: FrozenTrial) -> Failure | None:
    """The trial's :class:`Failure`, if motune recorded one."""
    try:
        return Failure(trial.user_attrs.get(FAILURE))
    except ValueError:
        return None


def is_full(trial: FrozenTrial) -> bool:
    """Whether the trial is a full-fidelity retrain (of the knee, or a baseline)."""
    return KneeSampler.fidelity(trial) == FULL or trial.user_attrs.get(FIDELITY) == FULL


def number_or_none(value: Any) -> float | None:
    """``value`` as a finite float, or None (for attributes that may be missing, NaN or of the wrong type)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def trial_lambda(trial: FrozenTrial) -> float | None:
    """λ of a weighted-sum trial; None for the multi-gradient baselines."""
    if trial_kind(trial) != WEIGHTED_SUM:
        return None
    return number_or_none(trial.params.get(PARAM, trial.user_attrs.get(PARAM)))


def has_finite_values(trial: FrozenTrial) -> bool:
    values = trial.values
    return values is not None and len(values) == 2 and all(math.isfinite(v) for v in values)


def finite_complete(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The COMPLETE trials with two finite objective values, in the given order."""
    return [t for t in trials if t.state == TrialState.COMPLETE and has_finite_values(t)]


def pareto_set(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The nondominated ones of ``trials`` (finite values assumed), by cross-entropy, then number."""
    if not trials:
        return []
    mask = nondominated_mask(np.array([t.values for t in trials], dtype=float))
    return sorted((t for t, keep in zip(trials, mask) if keep), key=lambda t: (t.values[0], t.number))


def hypervolume_normalised(trials: Sequence[FrozenTrial]) -> float:
    """Hypervolume of ``trials``' values normalised to [0, 1] by their own ideal and nadir points.

    The reference point is :data:`HYPERVOLUME_REFERENCE`, so the extreme points count too.
    """
    if not trials:
        return 0.0
    points = np.array([t.values for t in trials], dtype=float)
    ideal, nadir = points.min(axis=0), points.max(axis=0)
    return float(hypervolume(normalise(points, ideal, nadir), np.array(HYPERVOLUME_REFERENCE)))


def trial_history(trial: FrozenTrial, artifact_store: Any = None) -> list[dict[str, Any]]:
    """The trial's per-epoch history records (epoch, nonzeros, nonzeros_per_layer, l1, ...); [] if none recorded.

    The records are the JSON artifact named by :data:`HISTORY`, read from ``artifact_store``
    (an Optuna artifact store, the one the checkpoints are in); a study made by an older
    motune keeps them in the :data:`LEGACY_HISTORY` user attribute, which is read as is.
    Raises ``ValueError`` (one line) when the artifact is named but cannot be read.
    """
    artifact_id = trial.user_attrs.get(HISTORY)
    if artifact_id is None:
        legacy = trial.user_attrs.get(LEGACY_HISTORY)
        return [r for r in legacy if isinstance(r, dict)] if isinstance(legacy, list) else []
    if artifact_store is None:
        raise ValueError(f"trial {trial.number}'s history is artifact {artifact_id!r}: give the artifact store to read it")
    try:
        with artifact_store.open_reader(str(artifact_id)) as f:
            records = json.load(f)
    except Exception as exc:  # a missing file, another store, a corrupt upload
        raise ValueError(f"trial {trial.number}'s history artifact {artifact_id!r} cannot be read: {exc}") from None
    if not isinstance(records, list):
        raise ValueError(f"trial {trial.number}'s history artifact {artifact_id!r} is not a JSON list")
    return [r for r in records if isinstance(r, dict)]
