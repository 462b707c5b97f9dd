"""Multi-objective trial pruning: stop a weighted-sum trial early when it cannot add to the front.

Optuna prunes single-objective trials only: ``trial.report`` raises in a study with several
objectives (optuna issues #3450, #2792), and its pruners compare one number per step. A
motune trial has two objectives, so the rule here looks at its *intermediates*, one
``(epoch, validation cross-entropy, l1, validation accuracy)`` per epoch, and decides in
the spirit of Optuna's pruners (one object, one method: :meth:`FrontPruner.prune`). A
trial is pruned when, for ``patience`` consecutive epochs, either

(a) its network has **collapsed**: no penalised weight is left (``l1 == 0``) or the
    validation accuracy is at chance level (at most ``1 / classes +`` :data:`CHANCE_SLACK`);
    such a network is the end of the front, whatever more training it gets; or
(b) its intermediate ``(cross-entropy, l1)`` is **dominated by a margin**: a completed
    trial of the same fidelity had, at the same epoch, both values lower by at least
    ``margin`` times the extent of the completed trials' front at that epoch (normalised
    objectives, as :class:`~motune.sampler.KneeSampler`'s tolerance). In a study of
    :class:`~motune.sampler.KneeSampler` the completed trials are those its plan had read
    (:data:`~motune.sampler.READ_ATTR`), so that a trial's references, and whether it is
    pruned, do not depend on how many workers ran or which trials finished first.

It never prunes at a trial's last epoch (the network is trained by then; it completes).
The trial then ends PRUNED (``optuna.TrialPruned`` from the epoch callback of
:func:`motune.train`), does not count towards the study's budget of completed trials and
is not retried; its intermediates and reason stay on it as user attributes
(:data:`~motune.trials.INTERMEDIATES`, :data:`~motune.trials.PRUNE_REASON`). A collapsed
trial is also marked with the end of the front it was heading to (:func:`front_end`, in
:data:`~motune.sampler.FRONT_END_ATTR`), which :class:`~motune.sampler.KneeSampler` reads
as that trial's values, so the search knows where the front ends without training a
collapsed network to its last epoch.

Example:

    >>> pruner = FrontPruner(patience=2, margin=0.1)
    >>> dying = [Intermediate(1, 2.28, 111.6, 0.18), Intermediate(2, 2.30, 18.3, 0.10), Intermediate(3, 2.30, 2.0, 0.10)]
    >>> pruner.prune(dying, {}, num_classes=10, epochs=10).reason
    'collapsed: chance-level validation accuracy (10.0%) for 2 epochs (epochs 2-3)'
    >>> pruner.prune(dying[:2], {}, num_classes=10, epochs=10) is None   # one epoch at chance: patience
    True
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from motune.pareto import nondominated_mask
from motune.sampler import FRONT_END_ATTR, READ_ATTR
from motune.trials import FIDELITY, INTERMEDIATES, PRUNE_REASON, WARM_START_FROM, WEIGHTED_SUM, trial_kind

# Defaults of [study] prune_patience and prune_margin (chosen with bench/samplers.py's
# calibration table, docs/benchmarks.md §1: no false prune on the digits sweep).
DEFAULT_PATIENCE = 2
DEFAULT_MARGIN = 0.1
# Chance level is at most 1 / classes + this: a constant predictor on a balanced split
# scores about 1 / classes (0.100 on the digits validation split).
CHANCE_SLACK = 0.02


class Intermediate(NamedTuple):
    """One epoch of a trial: validation cross-entropy and accuracy, l1 of the penalised weights."""

    epoch: int
    cross_entropy: float
    l1: float
    accuracy: float


class Decision(NamedTuple):
    """Why a trial is pruned: the reason (for people), and whether its network collapsed."""

    reason: str
    collapsed: bool
    epoch: int


# ----------------------------------------------------------------------------- the rule


def chance_level(accuracy: float, num_classes: int) -> bool:
    """Whether ``accuracy`` is no better than guessing one class (``1 / num_classes +`` :data:`CHANCE_SLACK`).

    >>> chance_level(0.10, 10), chance_level(0.25, 10), chance_level(0.51, 2)
    (True, False, True)
    """
    return accuracy <= 1.0 / max(num_classes, 1) + CHANCE_SLACK


def collapse_reason(point: Intermediate, num_classes: int) -> str | None:
    """``"chance-level validation accuracy"``, ``"no penalised weight left"`` or None (alive)."""
    if chance_level(point.accuracy, num_classes):
        return "chance-level validation accuracy"
    if point.l1 <= 0.0:
        return "no penalised weight left"
    return None


def reference_scale(points: np.ndarray) -> np.ndarray | None:
    """Extent (``nadir - ideal``) of the nondominated ``points`` in each objective; None if it is 0 in one.

    The margin of rule (b) is measured in these units, so it needs a front with extent in
    both objectives: two or more different nondominated points.

    >>> reference_scale(np.array([[0.2, 800.0], [2.3, 0.0], [1.0, 900.0]])).tolist()
    [2.0999999999999996, 800.0]
    >>> reference_scale(np.array([[0.2, 800.0]])) is None
    True
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    front = pts[nondominated_mask(pts)] if len(pts) else pts
    if len(front) < 2:
        return None
    extent = front.max(axis=0) - front.min(axis=0)
    return extent if bool(np.all(extent > 0)) else None


def dominating(point: Sequence[float], reference: np.ndarray, margin: float) -> int | None:
    """Index of the first reference point better than ``point`` by ``margin`` in both objectives, or None.

    ``q`` dominates ``p`` by the margin when ``q_i <= p_i - margin * s_i`` for both
    objectives, ``s`` being :func:`reference_scale` of ``reference`` (None: no decision).

    >>> ref = np.array([[0.2, 800.0], [0.5, 200.0], [2.3, 0.0]])
    >>> dominating([0.9, 500.0], ref, 0.1), dominating([0.6, 210.0], ref, 0.1)
    (1, None)
    """
    ref = np.asarray(reference, dtype=float).reshape(-1, 2)
    scale = reference_scale(ref)
    if scale is None:
        return None
    better = np.all(ref <= np.asarray(point, dtype=float) - margin * scale, axis=1)
    hits = np.flatnonzero(better)
    return int(hits[0]) if len(hits) else None


@dataclass(frozen=True)
class FrontPruner:
    """The pruning rule of a weighted-sum trial (see the module docstring): collapse or dominance, with patience.

    ``patience``: consecutive epochs a condition must hold (≥ 1). ``margin``: by how much,
    in normalised objectives, a completed trial must be better in both objectives (≥ 0).

    Example:

        .. testcode::

            from motune.trial_pruning import FrontPruner, Intermediate

            done = {  # two completed trials' intermediates: trial number -> one per epoch
                0: [Intermediate(1, 1.8, 440.0, 0.74), Intermediate(2, 0.9, 540.0, 0.89)],
                4: [Intermediate(1, 1.9, 270.0, 0.75), Intermediate(2, 1.2, 220.0, 0.86)],
            }
            worse = [Intermediate(1, 2.1, 480.0, 0.60), Intermediate(2, 1.0, 600.0, 0.70)]
            decision = FrontPruner(patience=2, margin=0.1).prune(worse, done, num_classes=10, epochs=10)
            assert decision is not None and not decision.collapsed and "completed trial 0" in decision.reason
    """

    patience: int = DEFAULT_PATIENCE
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if not isinstance(self.patience, int) or isinstance(self.patience, bool) or self.patience < 1:
            raise ValueError(f"prune_patience: must be a positive integer, got {self.patience!r}")
        if isinstance(self.margin, bool) or not isinstance(self.margin, (int, float)) or not 0.0 <= self.margin < 1.0:
            raise ValueError(f"prune_margin: must be a number in [0, 1), got {self.margin!r}")

    def prune(
        self,
        intermediates: Sequence[Intermediate],
        reference: Mapping[int, Sequence[Intermediate]],
        num_classes: int,
        epochs: int | None = None,
    ) -> Decision | None:
        """Whether to stop the trial now, given its intermediates so far (oldest first).

        ``reference``: completed trials of the same fidelity, trial number -> their
        intermediates. ``epochs``: the trial's planned length (at that epoch it is never
        pruned). Returns a :class:`Decision`, or None to go on.
        """
        if len(intermediates) < self.patience:
            return None
        last = intermediates[-1]
        if epochs is not None and last.epoch >= epochs:
            return None
        recent = list(intermediates)[-self.patience :]
        span = f"epoch {last.epoch}" if self.patience == 1 else f"epochs {recent[0].epoch}-{last.epoch}"
        why = [collapse_reason(p, num_classes) for p in recent]
        if all(why):
            kind = why[-1] if len(set(why)) == 1 else "chance-level validation accuracy or no penalised weight left"
            detail = f" ({100 * last.accuracy:.1f}%)" if kind.endswith("accuracy") else ""
            return Decision(f"collapsed: {kind}{detail} for {self.patience} epoch{'s' * (self.patience > 1)} ({span})",
                            True, last.epoch)
        by: int | None = None
        for p in recent:
            numbers, points = _at_epoch(reference, p.epoch)
            hit = dominating((p.cross_entropy, p.l1), points, self.margin) if len(points) else None
            if hit is None:
                return None
            by = numbers[hit]
        return Decision(f"dominated: completed trial {by} had lower cross-entropy and l1, each by more than "
                        f"{self.margin:g} of the front's extent, at the same epoch ({span})", False, last.epoch)


def _at_epoch(reference: Mapping[int, Sequence[Intermediate]], epoch: int) -> tuple[list[int], np.ndarray]:
    """Trial numbers and ``(cross-entropy, l1)`` of the reference trials that have an intermediate at ``epoch``."""
    numbers, points = [], []
    for number, rows in reference.items():
        for row in rows:
            if row.epoch == epoch:
                numbers.append(number)
                points.append((row.cross_entropy, row.l1))
                break
    return numbers, np.array(points, dtype=float).reshape(-1, 2)


def front_end(point: Intermediate) -> tuple[float, float]:
    """The end of the front a collapsed trial was heading to: its cross-entropy, and l1 = 0.

    Once the network's output ignores its input, no cross-entropy gradient reaches the
    penalised weights and the l1 term alone drives them all to zero (soft pruning then
    removes them): the trial would have ended at the front's end ``(≈ ln classes, 0)``.
    Reporting that, not the l1 it had left when stopped, lets the search see the end of
    the front (:class:`~motune.sampler.KneeSampler` stops extending there) exactly as a
    collapsed trial trained to its last epoch would show it.

    >>> front_end(Intermediate(3, 2.304, 17.5, 0.1))
    (2.304, 0.0)
    """
    return float(point.cross_entropy), 0.0


# ----------------------------------------------------------------------------- storing


def compact(intermediates: Sequence[Intermediate]) -> list[list[float]]:
    """The user-attribute form: ``[[epoch, cross-entropy, l1, accuracy], ...]``, 6 significant digits.

    >>> compact([Intermediate(1, 1.8190234567, 440.9876543, 0.7388888)])
    [[1, 1.81902, 440.988, 0.738889]]
    """
    return [[int(p.epoch), *(float(f"{v:.6g}") for v in p[1:])] for p in intermediates]


def read_intermediates(trial: FrozenTrial) -> list[Intermediate]:
    """A trial's stored intermediates (empty when it has none or they are malformed)."""
    rows = trial.user_attrs.get(INTERMEDIATES)
    if not isinstance(rows, list):
        return []
    out = []
    for row in rows:
        if isinstance(row, list) and len(row) == 4 and all(isinstance(v, (int, float)) for v in row):
            out.append(Intermediate(int(row[0]), float(row[1]), float(row[2]), float(row[3])))
    return out


def reference_intermediates(
    trials: Sequence[FrozenTrial], fidelity: str, warm_started: bool = False, numbers: Collection[int] | None = None
) -> dict[int, list[Intermediate]]:
    """Completed weighted-sum trials of ``fidelity`` with stored intermediates: number -> intermediates.

    Only trials with the same warm-start status as the judged one (``warm_started``: it
    started from a parent's network, :mod:`motune.continuation`): epoch e of a
    warm-started trial is not comparable with epoch e of a fresh one. With ``numbers``,
    only those trials (what the judged trial's plan read, :data:`~motune.sampler.READ_ATTR`).
    """
    out = {}
    for t in trials:
        if (t.state == TrialState.COMPLETE and trial_kind(t) == WEIGHTED_SUM and t.user_attrs.get(FIDELITY) == fidelity
                and (t.user_attrs.get(WARM_START_FROM) is not None) == warm_started
                and (numbers is None or t.number in numbers)):
            rows = read_intermediates(t)
            if rows:
                out[t.number] = rows
    return out


@dataclass
class TrialMonitor:
    """The epoch callback of a pruned-able trial: collects intermediates, raises ``optuna.TrialPruned``.

    Called with each :class:`~motune.train.EpochRecord` (which must carry validation
    metrics: ``TrainConfig.eval_every_epoch``). On a prune it keeps the :class:`Decision`
    and raises; :meth:`record` then writes what the trial reached onto it.
    """

    pruner: FrontPruner
    reference: Mapping[int, Sequence[Intermediate]]
    num_classes: int
    epochs: int
    intermediates: list[Intermediate] = field(default_factory=list)
    decision: Decision | None = None

    @classmethod
    def for_trial(cls, trial: optuna.Trial, fidelity: str, num_classes: int, epochs: int, *,
                  patience: int = DEFAULT_PATIENCE, margin: float = DEFAULT_MARGIN,
                  warm_started: bool = False) -> TrialMonitor:
        """A monitor whose reference is the study's completed trials of ``fidelity`` and warm-start status (read once, now).

        Of a trial that :class:`~motune.sampler.KneeSampler` planned, only those its plan
        had read (:data:`~motune.sampler.READ_ATTR`): all of them had finished when it was
        planned, so the reference is the same whenever this trial starts.
        """
        read = trial.storage.get_trial_system_attrs(trial._trial_id).get(READ_ATTR)
        numbers = set(read) if isinstance(read, list) else None
        reference = reference_intermediates(trial.study.get_trials(deepcopy=False), fidelity, warm_started, numbers)
        return cls(FrontPruner(patience, margin), reference, num_classes, epochs)

    def __call__(self, record: Any) -> None:
        if record.val_cross_entropy is None or record.val_accuracy is None:
            raise ValueError("trial pruning needs validation metrics every epoch (TrainConfig.eval_every_epoch = True)")
        point = Intermediate(record.epoch, record.val_cross_entropy, record.l1, record.val_accuracy)
        if not all(math.isfinite(v) for v in point[1:]):
            return  # no judgement on NaN; divergence is train()'s to report
        self.intermediates.append(point)
        decision = self.pruner.prune(self.intermediates, self.reference, self.num_classes, self.epochs)
        if decision is not None:
            self.decision = decision
            raise optuna.TrialPruned(decision.reason)

    def stored(self) -> list[list[float]]:
        """The intermediates so far, as stored on the trial (:func:`compact`)."""
        return compact(self.intermediates)

    def record(self, trial: optuna.Trial, attrs: Mapping[str, Any]) -> None:
        """Write ``attrs``, the intermediates and the reason onto a pruned trial (and the front-end mark if collapsed).

        A trial failed elsewhere meanwhile (finished, so read-only) is left as it is.
        """
        storage, trial_id = trial.storage, trial._trial_id
        with contextlib.suppress(UpdateFinishedTrialError):
            for key, value in {**attrs, INTERMEDIATES: self.stored()}.items():
                storage.set_trial_user_attr(trial_id, key, value)
            if self.decision is not None:
                storage.set_trial_user_attr(trial_id, PRUNE_REASON, self.decision.reason)
                if self.decision.collapsed:
                    storage.set_trial_system_attr(trial_id, FRONT_END_ATTR, list(front_end(self.intermediates[-1])))
