"""Warm-start continuation along λ: a front trial starts from a trained neighbour.

With ``[study] continuation = true`` a weighted-sum front trial starts from the network
of the COMPLETE weighted-sum front trial with the nearest *smaller* λ (its parent) and
trains ``continuation_epochs`` instead of ``front_epochs``, so the front is traced from
the dense network outward, the way gradual magnitude pruning prunes a trained network
step by step. The parent's weights come from its checkpoint artifact (the
:data:`~motune.trials.CHECKPOINT` user attribute), downloaded from the study's artifact
store, so a worker on another machine continues just the same.

Which trial is the parent does not depend on timing: :class:`~motune.sampler.KneeSampler`
writes, with each trial's λ, the weight of the parent the one-worker search would have
used (:data:`~motune.sampler.PARENT_ATTR`: the nearest smaller λ among the results it
had read when it asked for this λ). When an idle worker's trial was planned on the
guess that a running trial is that parent, it waits (:func:`wait_for_parent`) until
that trial has finished, so the same λ starts from the same network with 1 or 16
workers; with :func:`motune.trials.trial_seed` (the seed follows λ, not the trial
number) the front, and the knee, do not depend on the number of workers. A trial
planned without it (enqueued by hand, or by another sampler) takes the nearest smaller
λ completed when it starts.

A trial with no parent (the smallest λ so far) trains fresh. The knee's full-fidelity
retrain continues the same path: it starts from the knee's own front network (the front
trial with its λ) and trains the full ``epochs`` (or ``[study] retrain_epochs``). A
knee found on a warm-started front describes a network reached along that path:
retrained fresh at the same λ it came out 3-11 pp less accurate on digits (2 seeds,
docs/benchmarks.md §2). A parent whose checkpoint is
missing, unreadable or of another network is not fatal: the trial logs a warning,
records it (:data:`~motune.trials.WARM_START_NOTE`) and trains fresh, at its fidelity's
length.

Example (no completed trial yet, so no parent)::

    import optuna
    from motune import continuation

    study = optuna.create_study(directions=["minimize", "minimize"])
    print(continuation.choose_parent(study.get_trials(), 1e-3, "front"))   # None
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from optuna.artifacts import download_artifact
from optuna.trial import FrozenTrial, TrialState

from motune.checkpoint import CheckpointError, load_checkpoint
from motune.faults import DEFAULT_GRACE, HEARTBEAT_ATTR
from motune.sampler import FRONT, FULL, PARENT_ATTR, trial_fidelity, trial_weight, wait_for_a_result
from motune.trials import CHECKPOINT, FIDELITY, WARM_START_FROM, WARM_START_NOTE, WEIGHTED_SUM, trial_kind, trial_lambda

if TYPE_CHECKING:
    import optuna
    from optuna.artifacts._protocol import ArtifactStore

    from motune.config import StudyConfig

_log = logging.getLogger(__name__)

UNPLANNED = "unplanned"  # a trial without PARENT_ATTR: its parent is the nearest smaller λ completed when it starts


@dataclass
class WarmStart:
    """How one trial starts: from ``state`` (its parent's weights), or fresh when ``state`` is None."""

    parent: int | None = None  # the parent's trial number (also set when loading it failed)
    state: dict[str, torch.Tensor] | None = None
    epochs: int | None = None  # epochs of a warm-started trial (None: its fidelity's, e.g. the knee's retrain)
    note: str | None = None  # why a planned warm start fell back to a fresh one

    @property
    def warm(self) -> bool:
        """Whether the trial starts from its parent's weights."""
        return self.state is not None

    def attrs(self) -> dict[str, Any]:
        """The trial's user attributes: ``warm_start_from`` always, the note when there is one."""
        out: dict[str, Any] = {WARM_START_FROM: self.parent if self.warm else None}
        if self.note:
            out[WARM_START_NOTE] = self.note
        return out


def continuation_epochs(config: StudyConfig) -> int:
    """Epochs of a warm-started trial: ``[study] continuation_epochs``, default half of ``front_epochs`` (≥ 1).

    Half, not a third: on digits (bench/continuation.py) children of 5 of 10 epochs gave
    knees 1.2 pp more accurate at matched sparsity than children of 3, for 2% more epochs.
    """
    n = config.study.continuation_epochs
    return n if n is not None else max(1, config.train.front_epochs // 2)


def choose_parent(
    trials: Sequence[FrozenTrial], lam: float, fidelity: str, *, inclusive: bool = False
) -> FrozenTrial | None:
    """The COMPLETE weighted-sum trial at ``fidelity`` with a checkpoint and the largest λ below ``lam``.

    ``inclusive``: λ equal to ``lam`` counts too (the knee's retrain finds its own front
    trial). Ties (the same λ twice) go to the lower trial number, so every worker picks
    the same parent.
    """
    best: FrozenTrial | None = None
    best_lam = -1.0
    for t in trials:
        if t.state != TrialState.COMPLETE or trial_kind(t) != WEIGHTED_SUM or t.user_attrs.get(FIDELITY) != fidelity:
            continue
        t_lam = trial_lambda(t)
        if t_lam is None or t_lam > lam or (t_lam == lam and not inclusive) or CHECKPOINT not in t.user_attrs:
            continue
        if best is None or t_lam > best_lam or (t_lam == best_lam and t.number < best.number):
            best, best_lam = t, t_lam
    return best


def load_parent_state(parent: FrozenTrial, store: ArtifactStore, config: StudyConfig) -> dict[str, torch.Tensor]:
    """The parent's weights from its checkpoint artifact; :class:`CheckpointError` if missing, corrupt or another network."""
    artifact_id = parent.user_attrs.get(CHECKPOINT)
    with tempfile.TemporaryDirectory(prefix="motune-parent-") as tmp:
        path = Path(tmp) / "parent.pt"
        try:
            download_artifact(artifact_store=store, artifact_id=str(artifact_id), file_path=str(path))
        except Exception as exc:  # each store raises its own types (FileNotFoundError, botocore errors, ...)
            raise CheckpointError(f"checkpoint artifact {artifact_id} of trial {parent.number} cannot be read "
                                  f"({type(exc).__name__}: {exc})") from None
        payload = load_checkpoint(path)
    t = config.train
    if payload["model"] != t.model or payload["model_args"] != dict(t.model_args):
        raise CheckpointError(f"checkpoint of trial {parent.number} holds network {payload['model']!r}, "
                              f"this study trains {t.model!r}")
    return payload["state_dict"]


def wait_for_parent(trial: optuna.Trial, grace: float = DEFAULT_GRACE) -> tuple[list[FrozenTrial], float | str | None]:
    """The study's COMPLETE trials once the trial's planned parent has finished, and the parent's weight.

    The weight is :data:`~motune.sampler.PARENT_ATTR` (``None``: no parent;
    :data:`UNPLANNED`: the sampler planned none). While a front trial at that weight
    runs, this waits for it (the trial's own heartbeat goes on); a parent whose
    heartbeat has not changed for ``grace`` seconds is taken for lost (its worker died;
    another worker will fail and retry it) and the trial goes on without it.
    """
    study = trial.study
    attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
    weight = attrs.get(PARENT_ATTR, UNPLANNED)
    if weight is not None and weight != UNPLANNED:
        weight = float(weight)
    beats: dict[int, tuple[object, float]] = {}  # trial number -> (last heartbeat seen, when it changed)
    warned: set[int] = set()
    announced = False
    while True:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        if not isinstance(weight, float):
            return done, weight
        now = time.monotonic()
        running = []
        for t in trials:
            lam = trial_weight(t)
            if (t.state != TrialState.RUNNING or t.number == trial.number or lam is None or trial_kind(t) != WEIGHTED_SUM
                    or trial_fidelity(t) != FRONT or not math.isclose(lam, weight, rel_tol=1e-9, abs_tol=1e-12)):
                continue
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            seen = beats.get(t.number)
            if seen is None or seen[0] != beat:
                beats[t.number] = seen = (beat, now)
            if beat is None or now - seen[1] <= grace:
                running.append(t)
            elif t.number not in warned:
                warned.add(t.number)
                _log.warning("motune: trial %d: its parent, trial %d (l1_weight %.3g), sent no heartbeat for %g s; "
                             "going on without it", trial.number, t.number, weight, grace)
        if not running:
            return done, weight
        if not announced:
            announced = True
            _log.info("motune: trial %d waits for trial %d (l1_weight %.3g), the network it continues",
                      trial.number, running[0].number, weight)
        wait_for_a_result(study, trials, time.monotonic() + 1.0)  # back within a second to check heartbeats


def warm_start(
    config: StudyConfig, trials: Sequence[FrozenTrial], kind: str, fidelity: str, lam: float | None, store: ArtifactStore,
    parent_weight: float | str | None = UNPLANNED,
) -> WarmStart:
    """Where a trial starts (see the module docstring); never raises for a bad parent checkpoint.

    ``parent_weight``: from :func:`wait_for_parent`; the parent is the COMPLETE front
    trial at that weight (or, if it was pruned or failed, the nearest below it).
    """
    if not config.study.continuation or kind != WEIGHTED_SUM or lam is None:
        return WarmStart()
    full = fidelity == FULL  # the knee's retrain: from its own front network, at full length
    if parent_weight == UNPLANNED:
        parent = choose_parent(trials, lam, FRONT, inclusive=full)
    else:
        parent = None if parent_weight is None else choose_parent(trials, float(parent_weight), FRONT, inclusive=True)
    if parent is None:
        return WarmStart()
    try:
        state = load_parent_state(parent, store, config)
    except CheckpointError as exc:
        note = f"warm start from trial {parent.number} failed, trained fresh: {exc}"
        _log.warning("motune: %s", note)
        return WarmStart(parent=parent.number, note=note)
    return WarmStart(parent=parent.number, state=state,
                     epochs=config.study.retrain_epochs if full else continuation_epochs(config))
