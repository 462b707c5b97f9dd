"""Knee-seeking Optuna sampler: dichotomic search over weighted-sum scalarisations.

One trial trains ``F_λ = (1 - λ) f1 + λ f2`` for one weight ``λ`` (the parameter
``l1_weight``). A weighted sum reaches only the *supported* points of the front (the
vertices of its lower convex hull, :mod:`motune.pareto`), and one weight per segment of
the hull found so far is enough to find them all (Aneja & Nair's dichotomic search). The
paper wants one network, the front's knee, so the search splits the segments next to the
current knee first and stops once they are closed. The module has three layers, each
usable and tested without the one above it:

* **reading** a study: :func:`read_trials` turns its trials into one
  :class:`TrialRecord` per trial that trains a weight (λ, values, state, fidelity);
* **choosing**: :func:`choose_weight` decides the next weight from those records alone,
  with the sampler's settings in :class:`SearchRules`; the geometry comes from
  :mod:`motune.pareto` (:func:`search_front`, :func:`segments`, :func:`bracket`,
  :func:`knee_confirmed` are its steps);
* **one search, any workers**: :func:`replay` replays the one-worker search from the
  records (its decisions read only the results it asked for, so the knee does not depend
  on the number of workers); :func:`guesses` / :func:`speculate` give idle workers the
  weights it will likely ask for next (under fantasy results of the running trials,
  :func:`arc_point`), and :func:`plan_weight` combines the two;
* **coordinating**: :class:`KneeSampler` holds the Optuna hooks, writes each trial's
  weight to the storage before the trial runs, lets idle workers wait for a result, and
  resolves races between workers.

The sampler generalises beyond motune (any objective that suggests the weight and
returns two values), so its trial vocabulary is its own: :data:`FIDELITY_ATTR`,
:data:`FRONT`, :data:`FULL` (``motune.trials`` re-exports them for motune's schema).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

import numpy as np
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from motune import pareto
from motune.filelock import FileLock

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import BaseTrial

__all__ = ["KneeSampler"]

_log = logging.getLogger(__name__)

FIDELITY_ATTR = "knee:fidelity"  # system attribute: the fidelity the sampler asked for
FRONT = "front"  # a search trial (the paper approximates the front with a third of the epochs)
FULL = "full"  # the one full-length retrain of the confirmed knee
# System attribute of a PRUNED trial whose result is the end of the front (e.g. a network
# with no weights left, stopped early): the objective pair it reached, read as its values.
FRONT_END_ATTR = "knee:front_end"
ROLE_ATTR = "knee:role"  # system attribute: PATH or EXTRA for a weight the sampler planned
PATH = "path"  # the weight the one-worker search asked for (see replay())
EXTRA = "extra"  # an idle worker's guess, or a weight after convergence
# System attribute: the weight whose network a continuation of the trial starts from
# (motune.continuation), see parent_weight(); None: none. Written with the trial's λ, from
# what the one-worker search had read, so it does not depend on which trials happened to
# have finished when the trial started: the same λ has the same parent with any number
# of workers.
PARENT_ATTR = "knee:parent_weight"
# System attribute: the numbers of the finished trials the one-worker search had read when it
# planned the trial (fantasies and running trials left out), see Plan. Trial pruning judges
# the trial against these (motune.trial_pruning), not against whichever trials happen to
# have finished when it trains: a weight the search asks for has the same references with
# any number of workers, and an idle worker's guess a subset of them (it was planned earlier).
READ_ATTR = "knee:read"

_PENDING = (TrialState.RUNNING, TrialState.WAITING)
_MAX_RETRIES = 8  # re-plans when another worker planned the same λ at the same moment
_ATOL = 1e-12  # weights closer than this are the same weight whatever their ratio
_MIN_GAP_RATIO = 1.05  # narrower λ gaps are bisected last (see _bisect_farthest_gap)


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TrialRecord:
    """What the search knows of one trial that trained (or will train) a weight.

    ``values`` are both minimised (a maximised objective is negated) and present only
    for a COMPLETE trial whose two values are finite, or a PRUNED one marked as the
    front's end (:data:`FRONT_END_ATTR`); ``fidelity`` is :data:`FRONT` or
    :data:`FULL`; ``role`` says who chose the weight (:data:`ROLE_ATTR`): the one-worker
    search (:data:`PATH`), an idle worker (:data:`EXTRA`) or the user (``None``: enqueued
    or added), see :func:`replay`. Records are built by :func:`read_trials`, or by hand
    in tests.
    """

    number: int
    lam: float
    state: TrialState
    fidelity: str = FRONT
    values: tuple[float, float] | None = None
    role: str | None = None  # PATH, EXTRA, or None: the user's (enqueued, added); see replay()

    @property
    def pending(self) -> bool:
        """Running or waiting: its weight is taken, its result unknown."""
        return self.state in _PENDING


def trial_fidelity(trial: BaseTrial) -> str:
    """:data:`FULL` if the sampler asked for a full-fidelity run, else :data:`FRONT`.

    Reads the system attribute :data:`FIDELITY_ATTR` (through the storage for a running
    :class:`~optuna.trial.Trial`); trials without it (e.g. added by hand) may say
    ``"full"`` in the user attribute ``"fidelity"``.
    """
    if isinstance(trial, Trial):
        attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
        user = trial.user_attrs
    else:
        attrs = getattr(trial, "system_attrs", None) or {}
        user = getattr(trial, "user_attrs", None) or {}
    return FULL if attrs.get(FIDELITY_ATTR, user.get("fidelity")) == FULL else FRONT


def trial_weight(trial: FrozenTrial, param_name: str = "l1_weight") -> float | None:
    """The weight a trial trained (finished) or will train (running / waiting); None if none.

    A pending trial's weight is the one :class:`KneeSampler` planned for it (system
    attribute ``"knee:<param_name>"``) or the one it was enqueued with.
    """
    if param_name in trial.params:
        return float(trial.params[param_name])
    if trial.state in _PENDING:
        lam = trial.system_attrs.get(f"knee:{param_name}")
        if lam is None:
            lam = (trial.system_attrs.get("fixed_params") or {}).get(param_name)
        return None if lam is None else float(lam)
    return None  # finished without suggesting the weight: not a search trial


def read_trials(
    trials: Sequence[FrozenTrial],
    param_name: str = "l1_weight",
    directions: Sequence[StudyDirection] = (StudyDirection.MINIMIZE, StudyDirection.MINIMIZE),
    exclude: int | None = None,
) -> list[TrialRecord]:
    """One :class:`TrialRecord` per trial with a weight, in trial order (trial ``exclude`` left out).

    Trials that never suggest ``param_name`` (e.g. baselines sharing the study) have no
    weight and no record.
    """
    signs = np.array([-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in directions])
    records = []
    for t in trials:
        lam = None if t.number == exclude else trial_weight(t, param_name)
        if lam is None:
            continue
        values = None
        raw = t.values if t.state == TrialState.COMPLETE else None
        if t.state == TrialState.PRUNED:  # stopped at the end of the front: what it reached there
            raw = t.system_attrs.get(FRONT_END_ATTR)
        if raw is not None and len(raw) == 2:
            v = signs * np.asarray(raw, dtype=float)
            if np.all(np.isfinite(v)):
                values = (float(v[0]), float(v[1]))
        role = (t.system_attrs or {}).get(ROLE_ATTR)
        records.append(TrialRecord(t.number, lam, t.state, trial_fidelity(t), values, role))
    return records


def weight_bounds(
    trials: Sequence[FrozenTrial], param_name: str = "l1_weight", exclude: int | None = None
) -> tuple[float, float]:
    """Range of the weight's distribution as the latest trial declared it; ``(0, 1)`` before any."""
    bounds = (0.0, 1.0)
    for t in trials:
        dist = t.distributions.get(param_name)
        if t.number != exclude and isinstance(dist, FloatDistribution):
            bounds = (float(dist.low), float(dist.high))
    return bounds


# ---------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class SearchRules:
    """The settings the choice of a weight depends on (see :class:`KneeSampler`'s arguments).

    Example:

        .. testcode::

            from motune.sampler import SearchRules

            rules = SearchRules(tolerance=0.05)
            assert rules.same(0.1, 0.10001) and not rules.same(0.1, 0.11)
    """

    start_weights: tuple[float, ...] = (0.0, 0.1)
    knee: Literal["angle", "distance"] = "angle"
    tolerance: float = 0.02
    min_lambda_gap: float = 1e-3
    f2_floor: float | None = 0.0
    full_fidelity: bool = True
    collapsed_nadir: bool = True  # False: results at f2_floor do not set the knee's nadir
    grid: int = 10  # weights per decade the search snaps to (0: none)

    def __post_init__(self) -> None:
        weights = list(self.start_weights)
        if len(weights) < 2 or not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError(f"start_weights needs two or more weights in [0, 1], got {weights}")
        if self.knee not in ("angle", "distance"):
            raise ValueError(f"knee must be 'angle' or 'distance', got {self.knee!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {self.tolerance}")
        if not 0.0 < self.min_lambda_gap < 1.0:
            raise ValueError(f"min_lambda_gap must be in (0, 1), got {self.min_lambda_gap}")
        if self.grid < 0:
            raise ValueError(f"grid must be a number of weights per decade >= 0 (0: no grid), got {self.grid}")
        if self.f2_floor is not None and not math.isfinite(self.f2_floor):
            raise ValueError(f"f2_floor must be a finite number or None, got {self.f2_floor}")

    def snap(self, lam: float) -> float:
        """``lam`` on the search's log grid (``grid`` weights per decade); 0 and ``grid = 0`` leave it."""
        if self.grid <= 0 or lam <= 0.0:
            return lam
        return float(10.0 ** (round(math.log10(lam) * self.grid) / self.grid))

    def same(self, a: float, b: float) -> bool:
        """Whether two weights are the same weight (within a relative ``min_lambda_gap``)."""
        return abs(a - b) <= self.min_lambda_gap * max(abs(a), abs(b)) + _ATOL

    def near_any(self, lam: float, weights: Sequence[float]) -> bool:
        """Whether ``lam`` is the same weight as one of ``weights``."""
        return any(self.same(lam, w) for w in weights)


@dataclass(frozen=True)
class SearchFront:
    """The search front: COMPLETE front-fidelity results with finite values, and its geometry.

    ``points`` (minimised) and ``records`` are in trial order; ``scale`` is
    :func:`motune.pareto.front_scale`; ``supported`` indexes the supported points sorted
    by f1; ``knee`` indexes the knee (``None`` without points).
    """

    records: tuple[TrialRecord, ...]
    points: np.ndarray
    scale: np.ndarray
    supported: np.ndarray
    knee: int | None

    @property
    def lambdas(self) -> np.ndarray:
        return np.array([r.lam for r in self.records], dtype=float)

    @property
    def knee_pos(self) -> int | None:
        """Position of the knee among the supported points."""
        return None if self.knee is None else int(np.flatnonzero(self.supported == self.knee)[0])


@dataclass(frozen=True)
class Segment:
    """A segment of the search front's hull, between supported points ``pos`` and ``pos + 1``."""

    pos: int
    lam: float  # normal weight in raw objectives
    length: float  # in normalised objectives
    closed: bool  # a finished trial probed it (see segments())
    busy: bool  # a running / waiting trial is probing it


def search_front(records: Sequence[TrialRecord], rules: SearchRules) -> SearchFront:
    """The front the search has found: supported points and knee with ``rules.tolerance``.

    Without ``rules.collapsed_nadir``, collapsed results (f2 at ``rules.f2_floor``, or no
    better in f1) end the front but do not set the knee's nadir
    (:func:`motune.pareto.knee_index` with ``floor``).
    """
    return _front_of(tuple(r for r in records if r.fidelity == FRONT and r.values is not None), rules)


@functools.lru_cache(maxsize=1024)
def _front_of(found: tuple[TrialRecord, ...], rules: SearchRules) -> SearchFront:
    """:func:`search_front` of its results, remembered: the replay and the guesses ask for the same fronts often."""
    points = np.array([r.values for r in found], dtype=float).reshape(-1, 2)
    front = SearchFront(
        records=found,
        points=points,
        scale=pareto.front_scale(points),
        supported=pareto.supported_points(points, rules.tolerance),
        knee=pareto.knee_index(points, rules.knee, rules.tolerance,
                               floor=None if rules.collapsed_nadir else rules.f2_floor),
    )
    for array in (front.points, front.scale, front.supported):
        array.setflags(write=False)  # shared by every caller of the cache
    return front


def _front_weights(records: Sequence[TrialRecord], pending: bool) -> list[float]:
    return [r.lam for r in records if r.fidelity == FRONT and r.pending == pending]


def segments(front: SearchFront, records: Sequence[TrialRecord], rules: SearchRules) -> list[Segment]:
    """The hull's segments, with whether finished (``closed``) or pending (``busy``) trials probe them.

    A trial with weight ``λ'`` probes ``AB`` if it is ``AB``'s normal weight or ties A and
    B within ``tolerance`` (:func:`motune.pareto.weights_tie`). A segment probed by a
    finished trial that survived (its ends are still adjacent supported points) is an
    edge of the front up to noise: near-duplicate, dominated, failed and pruned results
    all close what they probed, so no weight is retried forever.
    """
    probed, planned = _front_weights(records, False), _front_weights(records, True)
    vertices = front.points[front.supported]
    weights, lengths = pareto.hull_segments(vertices, front.scale)
    snap = rules.snap if len(vertices) > 2 else float

    def probes(pos: int, lams: list[float]) -> bool:
        if not lams:
            return False
        a, b = vertices[pos], vertices[pos + 1]
        return rules.near_any(snap(float(weights[pos])), lams) or bool(
            np.any(pareto.weights_tie(a, b, np.asarray(lams), front.scale, rules.tolerance))
        )

    return [
        Segment(pos, snap(float(weights[pos])), float(lengths[pos]), probes(pos, probed), probes(pos, planned))
        for pos in range(len(weights))
    ]


def bracket(
    records: Sequence[TrialRecord], front: SearchFront, rules: SearchRules, bounds: tuple[float, float]
) -> tuple[bool, float | None]:
    """Whether the front may go on beyond the largest weight tried, and the weight to try there.

    Returns ``(open, extension)``. The end of the front counts as reached when the
    largest weight tried, ``λ_max``, is the upper bound (or 0); when its result has
    ``f2 <= rules.f2_floor`` (no weights left); when raising the weight from the
    next-smaller tried one neither lowered f2 nor raised f1 by more than ``tolerance``
    (normalised: the same network, a plateau); or when ``λ_max`` failed (nothing to
    judge, and a weight that crashes is not pushed further). Otherwise ``extension`` is
    ``min(10 λ_max, upper bound)``, or ``None`` while the trial at ``λ_max`` still runs
    (nobody extends past a result not yet known, and no knee is confirmed meanwhile).
    """
    planned = _front_weights(records, True)
    taken = _front_weights(records, False) + planned
    if not taken:
        return True, None
    low, high = bounds
    lambdas, points, scale = front.lambdas, front.points, front.scale
    top = max(taken)
    at_top = np.array([rules.same(float(lam), top) for lam in lambdas], dtype=bool)
    if not at_top.any() and rules.near_any(top, planned):
        return True, None  # running: its result may still move the end of the front
    if top <= 0.0 or top >= high or rules.same(top, high):
        return False, None  # nothing to scale, or nowhere further to go
    if not at_top.any():
        return False, None  # failed or pruned at λ_max: no result to judge, no retries past it
    # Of several results at one weight (retries), the one farthest along the front.
    f1_top, f2_top = points[at_top][np.argmin(points[at_top, 1])]
    if rules.f2_floor is not None and f2_top <= rules.f2_floor:
        return False, None  # no weights left: the end of the front
    below = (lambdas < top) & ~at_top
    if below.any():
        prev = float(lambdas[below].max())
        f1_prev, f2_prev = points[lambdas == prev][np.argmin(points[lambdas == prev, 1])]
        lowered = f2_prev - f2_top > rules.tolerance * scale[1]
        traded = f1_top - f1_prev > rules.tolerance * scale[0]
        if not (lowered or traded):
            return False, None  # a larger weight gave the same network: the end plateau
    return True, min(max(10.0 * top, low), high)


def knee_confirmed(front: SearchFront, segs: Sequence[Segment], bracket_open: bool) -> bool:
    """Knee confirmed: an interior supported point whose two segments are closed.

    A front of two supported points (a straight line) has no knee to confirm, and
    neither has a front whose end may lie beyond the largest weight tried (the bracket
    is open): its knee could move once the end is known.
    """
    pos = front.knee_pos
    if pos is None or len(front.supported) < 3 or bracket_open:
        return False
    return all(s.closed for s in segs if s.pos in (pos - 1, pos))


def is_confirmed(records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float]) -> bool:
    """:func:`knee_confirmed` for the front of ``records``."""
    front = search_front(records, rules)
    return knee_confirmed(front, segments(front, records, rules), bracket(records, front, rules, bounds)[0])


def _clamp(lam: float, bounds: tuple[float, float]) -> float:
    return min(max(lam, bounds[0]), bounds[1])


def choose_weight(
    records: Sequence[TrialRecord],
    rules: SearchRules,
    bounds: tuple[float, float] = (0.0, 1.0),
    rng: np.random.RandomState | None = None,
) -> tuple[float, str]:
    """The next trial's ``(λ, fidelity)``, given every other trial's record.

    In order: the first start weight not taken; the bracket's extension
    (:func:`bracket`); the longest open segment next to the knee; once the knee is
    confirmed, its full-fidelity retrain (once per study, never again at a weight
    where one failed); the longest open segment anywhere; else a gap between tried
    weights (:func:`_fill_gap`). Every front-fidelity weight returned is one that no
    record has (:meth:`SearchRules.same`), so a study never repeats itself.

    Example:

        .. testcode::

            from optuna.trial import TrialState
            from motune.sampler import SearchRules, TrialRecord, choose_weight

            done = TrialState.COMPLETE
            records = [
                TrialRecord(0, 0.0, done, values=(0.05, 3000.0)),
                TrialRecord(1, 0.1, done, values=(2.3, 0.0)),
            ]
            lam, fidelity = choose_weight(records, SearchRules())
            assert fidelity == "front" and abs(lam - 2.25 / 3002.25) < 1e-12  # the extremes' normal
    """
    front = search_front(records, rules)
    taken = [r.lam for r in records if r.fidelity == FRONT]
    for w in rules.start_weights:
        w = _clamp(w, bounds)
        if not rules.near_any(w, taken):
            return w, FRONT

    bracket_open, extension = bracket(records, front, rules, bounds)
    if extension is not None:
        return extension, FRONT

    pos = front.knee_pos
    if pos is not None and len(front.supported) >= 2:
        segs = segments(front, records, rules)
        usable = [
            s for s in segs if not (s.closed or s.busy) and not rules.near_any(_clamp(s.lam, bounds), taken)
        ]
        usable.sort(key=lambda s: -s.length)
        near_knee = [s for s in usable if s.pos in (pos - 1, pos)]
        if near_knee:
            return _clamp(near_knee[0].lam, bounds), FRONT
        lam = float(front.lambdas[front.knee])
        full = [r for r in records if r.fidelity == FULL]
        if (
            rules.full_fidelity
            and knee_confirmed(front, segs, bracket_open)
            and not any(r.pending or r.state == TrialState.COMPLETE for r in full)
            and not rules.near_any(lam, [r.lam for r in full])  # failed there: not again
        ):
            return lam, FULL
        if usable:
            return _clamp(usable[0].lam, bounds), FRONT

    return _fill_gap(front, taken, rules, bounds, rng), FRONT


def _fill_gap(
    front: SearchFront,
    taken: list[float],
    rules: SearchRules,
    bounds: tuple[float, float],
    rng: np.random.RandomState | None,
) -> float:
    """A new weight when no segment is open: bisect the gap whose results differ most.

    A gap between two tried weights is scored by the distance of their results in
    normalised objectives (log-width breaks ties and scores gaps with an unfinished
    end), so the search refines where the front still moves, not where training has
    collapsed and every weight gives the same network. Gaps between tried positive
    weights around the knee (between the weights of its neighbouring supported points)
    come first, then between all tried positive weights; then a decade below the
    smallest, the geometric middle above the largest, and finally a random weight.
    """
    low, high = bounds
    tried = sorted({v for v in taken if low <= v <= high and v > 0})
    windows: list[list[float]] = []
    pos = front.knee_pos
    if pos is not None and len(front.supported) >= 2:
        near = front.lambdas[front.supported[max(pos - 1, 0) : pos + 2]]
        lo, hi = float(near.min()), float(near.max())
        windows.append([v for v in tried if lo <= v <= hi])
    windows.append(tried)
    results = {float(lam): point / front.scale for lam, point in zip(front.lambdas, front.points)}
    for values in windows:
        lam = _bisect_farthest_gap(values, taken, results, rules)
        if lam is not None:
            return lam
    edges = [tried[0] / 10, math.sqrt(tried[-1] * high)] if tried else []
    for lam in edges:
        if low < lam < high and not rules.near_any(lam, taken):
            return lam
    rng = rng if rng is not None else np.random.RandomState(0)  # only now: seeding costs more than the rest
    for _ in range(100):
        lam = float(rng.uniform(low, high))
        if not rules.near_any(lam, taken):
            return lam
    return float(rng.uniform(low, high))  # pragma: no cover - range exhausted


def _bisect_farthest_gap(
    values: list[float], taken: list[float], results: dict[float, np.ndarray], rules: SearchRules
) -> float | None:
    """Geometric middle of the free gap between sorted ``values`` whose results lie farthest apart.

    Score: (wide, distance of the two results in normalised objectives, log width); a
    gap with an end that has no result yet counts as infinitely far, so it is not
    starved. A gap under 5 % in λ whose results still differ is a cliff (training
    collapses there), not a stretch of front: it is refined only when nothing wider is
    left, or the search creeps towards the edge forever.
    """
    best: tuple[tuple[bool, float, float], float] | None = None
    for a, b in itertools.pairwise(values):
        mid = math.sqrt(a * b)
        if a < mid < b and not rules.near_any(mid, taken):
            ra, rb = results.get(a), results.get(b)
            distance = math.inf if ra is None or rb is None else float(np.hypot(*(ra - rb)))
            wide = b / a >= _MIN_GAP_RATIO
            score = (wide, distance if wide else 0.0, math.log(b / a))
            if best is None or score > best[0]:
                best = (score, mid)
    return None if best is None else best[1]


def wait_for_a_result(study: Study, trials: Sequence[FrozenTrial], deadline: float) -> None:
    """Sleep until a trial of ``study`` finishes beyond those in ``trials``, or until ``deadline`` (``time.monotonic``).

    Polls the storage at a fiftieth of the finished trials' median duration (1 ms .. 0.5 s),
    so the wait costs little next to a trial and ends soon after a result lands. Workers
    woken by the same result would all plan the same weight: the waiting ones (running,
    no weight yet) then plan in turn (:meth:`KneeSampler._choose`). Used by the sampler's
    idle workers and by :func:`motune.continuation.wait_for_parent`.

    Example (nothing finishes here, so it returns at the deadline):

    .. testcode::

        import time
        import optuna
        from motune.sampler import wait_for_a_result

        study = optuna.create_study(directions=["minimize", "minimize"])
        start = time.monotonic()
        wait_for_a_result(study, study.get_trials(), deadline=start + 0.05)
        assert time.monotonic() - start >= 0.05
    """
    finished = [t for t in trials if t.state.is_finished()]
    spans = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished
             if t.datetime_complete is not None and t.datetime_start is not None]
    poll = min(max(0.02 * float(np.median(spans)), 0.001), 0.5) if spans else 0.005
    while (now := time.monotonic()) < deadline:
        time.sleep(min(poll, deadline - now))
        if sum(t.state.is_finished() for t in study.get_trials(deepcopy=False)) != len(finished):
            return


def _to_distribution(lam: float, dist: FloatDistribution) -> float:
    """``lam`` clamped to the distribution's range and rounded to its step."""
    lam = min(max(lam, dist.low), dist.high)
    if dist.step is not None:
        lam = dist.low + round((lam - dist.low) / dist.step) * dist.step
        lam = min(max(lam, dist.low), dist.high)
    return lam


# ------------------------------------------------------------ parallel: one search, any workers


@dataclass(frozen=True)
class Replay:
    """Where the one-worker search stands, replayed from the records of any number of workers.

    ``records``: the finished records it has read; ``next``: the ``(λ, fidelity)`` it
    asks for now, ``None`` once it has converged; ``running``: the pending record that
    already trains ``next`` (the search waits on it), ``None`` if nobody does.
    """

    records: tuple[TrialRecord, ...]
    next: tuple[float, str] | None
    running: TrialRecord | None


def _converged(records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float]) -> bool:
    if rules.full_fidelity:
        return any(r.fidelity == FULL and r.state == TrialState.COMPLETE for r in records)
    return is_confirmed(records, rules, bounds)


def _unread_at(
    records: Sequence[TrialRecord], lam: float, fidelity: str, rules: SearchRules, read: set[int]
) -> list[TrialRecord]:
    return [r for r in records if r.fidelity == fidelity and r.number not in read and rules.same(r.lam, lam)]


def replay(
    records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float] = (0.0, 1.0)
) -> Replay:
    """The search one worker would have run, replayed from the records of any number of workers.

    It starts from the user's finished records (``role`` None: enqueued or added), asks
    :func:`choose_weight` for the next weight *from what it has read*, and reads the
    finished records at that weight (an :data:`EXTRA` one too: an idle worker guessed
    right) as if it had just asked for them; it stops at a weight nobody has finished,
    or once converged. Results it never asks for do not enter its decisions, so its
    knee, and the moment it is confirmed, are those of one worker given the same
    results, however many workers ran, in what order their results came, and whatever
    they guessed. Deterministic (gap filling, a last resort, uses a fixed seed).

    Example:

        .. testcode::

            from optuna.trial import TrialState
            from motune.sampler import SearchRules, TrialRecord, replay

            done, running = TrialState.COMPLETE, TrialState.RUNNING
            records = [
                TrialRecord(0, 0.0, done, values=(0.05, 3000.0)),
                TrialRecord(1, 0.5, done, values=(1.0, 10.0), role="extra"),  # not asked for
                TrialRecord(2, 0.1, running),
            ]
            state = replay(records, SearchRules())
            assert [r.number for r in state.records] == [0]
            assert state.next == (0.1, "front") and state.running.number == 2
    """
    return _replay_from(records, [r for r in records if r.role is None and not r.pending], rules, bounds)


@functools.lru_cache(maxsize=4096)
def _next_step(read: tuple[TrialRecord, ...], rules: SearchRules, bounds: tuple[float, float]) -> tuple[float, str] | None:
    """The weight the search that has read ``read`` asks for next, ``None`` once converged; remembered.

    Every plan replays the search from its start, and each fantasy branch from where it
    forks, so the same steps recur across branches, plans and workers of a round.
    """
    return None if _converged(read, rules, bounds) else choose_weight(read, rules, bounds)


def _replay_from(
    records: Sequence[TrialRecord], read: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float]
) -> Replay:
    """:func:`replay` from a given start: the search that has read ``read`` (fantasies allowed) goes on."""
    read = list(read)
    numbers = {r.number for r in read}
    while (step := _next_step(tuple(read), rules, bounds)) is not None:
        lam, fidelity = step
        at = _unread_at(records, lam, fidelity, rules, numbers)
        done = [r for r in at if not r.pending]
        running = [r for r in at if r.pending]
        if not any(r.values is not None for r in done) and (running or not done):
            # Nothing there yet, or only failures while a retry runs: wait for it.
            return Replay(tuple(read), (lam, fidelity), running[0] if running else None)
        read.extend(done)
        numbers.update(r.number for r in done)
    return Replay(tuple(read), None, None)


def arc_point(
    a: np.ndarray, la: float, b: np.ndarray, lb: float, lam: float, sharpness: float = 1.0
) -> tuple[np.ndarray, np.ndarray] | None:
    """Where the front between A and B likely touches weight ``lam``: ``(point, corner)``, or None.

    A was found with weight ``la`` and B with ``lb`` (``la < lam < lb``), so the front
    lies above the line of weight ``la`` through A and the one of ``lb`` through B, and
    below the segment AB: inside the triangle of A, B and the lines' crossing, the
    *corner*. The likely arc is a conic through A and B with those lines as tangents: the
    rational quadratic Bézier curve with the corner as control point, of weight
    ``sharpness`` (1: a parabola, as a smooth front looks between close points; larger:
    a sharper knee, nearer the corner). The point returned is the weighted sum's optimum
    on it, where its tangent has weight ``lam`` (to 1/1024 of the curve). ``None`` when
    the weights do not bracket ``lam`` or the lines do not cross between A and B (noise).

    Example: the extremes of ``√f1 + √f2 = 1`` (found with weights 0 and 1) predict
    the front exactly, a parabola with its corner at the origin; a sharper prior puts
    the point nearer the corner.

        >>> a, b = np.array([0.0, 1.0]), np.array([1.0, 0.0])
        >>> point, corner = arc_point(a, 0.0, b, 1.0, 0.5)
        >>> point.tolist(), corner.tolist()
        ([0.25, 0.25], [0.0, 0.0])
        >>> arc_point(a, 0.0, b, 1.0, 0.5, sharpness=3.0)[0].tolist()
        [0.125, 0.125]
    """

    def normal(w: float) -> np.ndarray:
        return np.array([1.0 - w, w])

    if not la < lam < lb:
        return None
    lines = np.array([normal(la), normal(lb)])
    if abs(float(np.linalg.det(lines))) < 1e-15:
        return None
    corner = np.linalg.solve(lines, np.array([normal(la) @ a, normal(lb) @ b]))
    if not (a[0] <= corner[0] <= b[0] and b[1] <= corner[1] <= a[1]):
        return None
    if not float(normal(lam) @ (corner - a)) < 0.0 < float(normal(lam) @ (b - corner)):
        return None
    s = np.linspace(0.0, 1.0, 1025)[:, None]
    basis = ((1 - s) ** 2, 2 * sharpness * s * (1 - s), s**2)
    curve = (basis[0] * a + basis[1] * corner + basis[2] * b) / sum(basis)
    return curve[int(np.argmin(curve @ normal(lam)))], corner


_LIKELY = 0.6  # prior that a running dichotomic trial finds a new point (else it closes its segment)
_SHAPES = (1.0,)  # arc_point sharpness a new point is predicted with (bench/parallel.py: adding 1.5, 2 or 3 did worse)
_MIN_GUESS_P = 0.3  # a guess is trained only if the search asks for it with at least this prior
_MIN_FULL_P = 0.8  # ... and a speculative full retrain (it costs front_epochs x 3 in motune; 0.5 wasted more, no faster)
_MAX_BRANCHES = 24  # fantasy branches explored per plan (more changed no guess in bench/parallel.py)
# Front-fidelity guesses running at once (a speculative full retrain comes on top, one at a
# time). bench/parallel.py: 2 let 8 workers halve the wall time (simulated) within 2x the
# sequential trials; 3 or 4 spent more trials (digits: over 2x) for the same wall time.
_MAX_GUESSES = 2
_SURE = 0.9  # a guess this likely runs even past the cap (e.g. a segment whose neighbour surely closes)
# Finished guesses the search has not read (yet), at most, before idle workers stop guessing:
# while the path stalls (a slow trial, or one waiting for the network it continues) guesses
# pile up on fantasies and would spend the study's budget before the knee is retrained.
_MAX_UNREAD = 6


def _outcomes(read: Sequence[TrialRecord], lam: float, rules: SearchRules) -> list[tuple[TrialRecord, float]]:
    """A running trial's likely results (fantasies) and their priors, given the front of ``read``.

    With ``lam`` between the weights of two adjacent supported points A and B, the trial
    finds a new point with prior :data:`_LIKELY`, shared by the shapes of
    :data:`_SHAPES` (:func:`arc_point`; a shape whose point lies within ``tolerance`` of
    AB gives its share to closing), or closes AB (a point on it,
    :func:`motune.pareto.predict`) with the rest. When even the corner lies within
    ``tolerance`` of AB, closing is certain. Elsewhere (no such A and B, e.g. noisy
    results) the front's prediction gets prior :data:`_LIKELY` and nothing else is
    fantasised. No front, or a weight beyond every result's
    (the bracket's extension, which may find more front): no fantasies.
    """
    front = search_front(read, rules)
    if len(front.supported) < 2 or lam > front.lambdas.max():
        return []  # no front to predict from, or the bracket's extension: it may find more front
    number = -1 - len(read)

    def fantasy(v: np.ndarray) -> TrialRecord:
        return TrialRecord(number, lam, TrialState.COMPLETE, FRONT, (float(v[0]), float(v[1])))

    closes = fantasy(pareto.predict(front.points[front.supported], lam))
    segment = _bracketing_segment(front, lam)
    arcs = [] if segment is None else [arc_point(*segment[0], *segment[1], lam, w) for w in _SHAPES]
    if not arcs or arcs[0] is None:
        return [(closes, _LIKELY)]  # no triangle to bound the result: likely, never certain
    (a, _), (b, _) = segment
    corner = arcs[0][1]
    if _depth(a, b, corner, front.scale) <= rules.tolerance:
        return [(closes, 1.0)]
    found = [(fantasy(arc[0]), _LIKELY / len(_SHAPES)) for arc in arcs
             if arc is not None and _depth(a, b, arc[0], front.scale) > rules.tolerance]
    return [*found, (closes, 1.0 - sum(p for _, p in found))]


def _bracketing_segment(front: SearchFront, lam: float) -> tuple[tuple[np.ndarray, float], tuple[np.ndarray, float]] | None:
    """Adjacent supported points A, B with the weights that found them, ``la < lam < lb``; None if none."""
    weights: dict[tuple[float, float], list[float]] = {}
    for r in front.records:
        weights.setdefault(r.values, []).append(r.lam)
    vertices = front.points[front.supported]
    for a, b in itertools.pairwise(vertices):
        la, lb = max(weights[tuple(a)]), min(weights[tuple(b)])  # the tightest lines through A and B
        if la < lam < lb:
            return (a, la), (b, lb)
    return None


def _depth(a: np.ndarray, b: np.ndarray, point: np.ndarray, scale: np.ndarray) -> float:
    """Distance of ``point`` below the line through ``a`` and ``b``, in objectives divided by ``scale``."""
    a, b, point = a / scale, b / scale, point / scale
    n = np.array([a[1] - b[1], b[0] - a[0]])
    return float((n @ a - point @ n) / np.linalg.norm(n))


def _bracket_guess(records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float]) -> float | None:
    """Ten times the largest weight while the trial there runs (the bracket's likely next step).

    Only one step ahead: not past a guess, unless that guess is a start weight (certain).
    """
    lams = [r.lam for r in records if r.fidelity == FRONT]
    if not lams:
        return None
    top = max(lams)
    starts = [_clamp(w, bounds) for w in rules.start_weights]
    at_top = [r for r in records if r.fidelity == FRONT and rules.same(r.lam, top)]
    if not all(r.pending and (r.role != EXTRA or rules.near_any(top, starts)) for r in at_top):
        return None  # known already, or itself a guess
    lam = _clamp(10.0 * top, bounds)
    return lam if lam > top and not rules.near_any(lam, lams) else None


def guesses(
    records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float], state: Replay
) -> list[tuple[float, str, float]]:
    """Weights the one-worker search will likely ask for next and nobody trains: ``(λ, fidelity, prior)``.

    Fantasy results ("constant liar", several lies): each running trial the search waits
    on is given its likely results (:func:`_outcomes`) and the replay goes on from each
    (:func:`_replay_from`), most likely branch first, up to :data:`_MAX_BRANCHES`; a
    branch ends at the first weight nobody trains, a guess whose prior is the
    product of the branch's. Priors of the same guess on several branches add up. Guesses
    never include a weight finished trials have (the replay reads those), nor one whose
    segment they closed. Before the front has two points only the start weights are
    certain; past them the guess is the bracket's next weight (:func:`_bracket_guess`).
    Most likely first.
    """
    return [(g.lam, g.fidelity, g.prior) for g in _guesses(records, rules, bounds, state)]


class _Guess(NamedTuple):
    lam: float
    fidelity: str
    prior: float
    read: tuple[TrialRecord, ...]  # what the search had read on the guess's most likely branch (fantasies too)


def _guesses(
    records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float], state: Replay
) -> list[_Guess]:
    """:func:`guesses`, each with the records its most likely branch had read (for :func:`parent_weight`)."""
    found: dict[tuple[float, str], _Guess] = {}
    order = itertools.count()
    heap = [(-1.0, next(order), state)]
    for _ in range(_MAX_BRANCHES):
        if not heap:
            break
        neg, _, branch = heapq.heappop(heap)
        if branch.next is None or (branch.running is not None and branch.next[1] == FULL):
            continue  # converged under fantasies, or the knee's retrain runs: nothing beyond
        outcomes = [] if branch.running is None else _branch_outcomes(branch, rules, bounds)
        if not outcomes:  # nobody trains the weight asked for, or nothing to fantasise: a guess
            leaf = _leaf(records, rules, bounds, branch)
            if leaf is not None:
                lam, fidelity, read = leaf
                seen = found.get((lam, fidelity))
                found[(lam, fidelity)] = _Guess(lam, fidelity, -neg, read) if seen is None else \
                    seen._replace(prior=seen.prior - neg)  # most likely branch first: keep its records
            continue
        for fantasy, prior in outcomes:
            nxt = _replay_from(records, [*branch.records, fantasy], rules, bounds)
            heapq.heappush(heap, (neg * prior, next(order), nxt))
    return sorted(found.values(), key=lambda g: -g.prior)


def _branch_outcomes(branch: Replay, rules: SearchRules, bounds: tuple[float, float]) -> list[tuple[TrialRecord, float]]:
    """:func:`_outcomes` of the running trial a branch waits on; a start weight's result may be anything."""
    lam = branch.next[0]
    outcomes = _outcomes(branch.records, lam, rules)
    if not outcomes and rules.near_any(lam, [_clamp(w, bounds) for w in rules.start_weights]):
        # A start weight's result does not decide the next start weight: any result will do.
        outcomes = [(TrialRecord(-1 - len(branch.records), lam, TrialState.COMPLETE, FRONT), 1.0)]
    return outcomes


def _leaf(
    records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float], branch: Replay
) -> tuple[float, str, tuple[TrialRecord, ...]] | None:
    """The guess a branch ends at, with what the search had read there.

    The weight the branch asks for; or, without a front to predict from, the bracket's
    step, which the search takes once the running weights below it have finished.
    """
    lam, fidelity = branch.next
    certain = fidelity == FULL or rules.near_any(lam, [_clamp(w, bounds) for w in rules.start_weights])
    if branch.running is None and (certain or len(search_front(branch.records, rules).supported) >= 2):
        return lam, fidelity, branch.records
    guess = _bracket_guess(records, rules, bounds)
    if guess is None:
        return None
    below = tuple(dataclasses.replace(r, state=TrialState.COMPLETE) for r in records
                  if r.pending and r.fidelity == FRONT and r.lam < guess)
    return guess, FRONT, (*branch.records, *below)


def speculate(
    records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float], state: Replay
) -> tuple[float, str, tuple[TrialRecord, ...]] | None:
    """The guess for an idle worker (:func:`guesses`) with what the search had read there, or ``None``.

    ``None``: nothing likely enough, or enough running. A full-fidelity retrain of the
    knee that likely branches confirm comes first (it ends the search; a wasted one costs
    the most, so it needs a prior of :data:`_MIN_FULL_P`, one at a time). A
    front-fidelity guess needs :data:`_MIN_GUESS_P` and fewer than :data:`_MAX_GUESSES`
    guesses running, unless it is near certain (:data:`_SURE`). No guess at all once
    :data:`_MAX_UNREAD` finished guesses wait unread.
    """
    read = {r.number for r in state.records}
    if sum(r.role == EXTRA and not r.pending and r.number not in read for r in records) >= _MAX_UNREAD:
        return None
    front_guesses = sum(r.pending and r.role == EXTRA and r.fidelity == FRONT for r in records)
    full_guesses = sum(r.pending and r.role == EXTRA and r.fidelity == FULL for r in records)
    likely = _guesses(records, rules, bounds, state)
    for g in likely:
        if g.fidelity == FULL and g.prior >= _MIN_FULL_P and not full_guesses:
            return g.lam, FULL, g.read
    for g in likely:
        if g.fidelity == FRONT and g.prior >= _MIN_GUESS_P and (front_guesses < _MAX_GUESSES or g.prior >= _SURE):
            return g.lam, FRONT, g.read
    return None


def parent_weight(read: Sequence[TrialRecord], lam: float, fidelity: str, rules: SearchRules) -> float | None:
    """The weight whose network a continuation of ``(lam, fidelity)`` starts from (:data:`PARENT_ATTR`).

    The largest front weight below ``lam`` among the COMPLETE records in ``read``, what
    the search had read when it asked for ``lam`` (a fantasy stands for its running
    trial); for a full retrain, ``lam``'s own front record. ``None``: none there.

    Example:

        .. testcode::

            from optuna.trial import TrialState
            from motune.sampler import SearchRules, TrialRecord, parent_weight

            done = TrialState.COMPLETE
            read = [TrialRecord(0, 0.0, done), TrialRecord(1, 0.1, done), TrialRecord(2, 0.01, TrialState.PRUNED)]
            assert parent_weight(read, 0.05, "front", SearchRules()) == 0.0
            assert parent_weight(read, 0.1, "full", SearchRules()) == 0.1
            assert parent_weight(read, 0.0, "front", SearchRules()) is None
    """
    def usable(r: TrialRecord) -> bool:
        if r.state != TrialState.COMPLETE or r.fidelity != FRONT:
            return False
        same = rules.same(r.lam, lam)
        return (fidelity == FULL and same) or (r.lam < lam and not same)

    return max((r.lam for r in read if usable(r)), default=None)


class Plan(NamedTuple):
    """A new trial's weight and fidelity, who chose it (:data:`PATH` / :data:`EXTRA`), its parent, what it read.

    ``parent``: :func:`parent_weight`. ``read``: the numbers of the finished trials the one-worker search had read when it
    asked for the weight (:data:`READ_ATTR`); for a guess, those of its most likely
    branch, without the fantasies that stand for running trials.
    """

    lam: float
    fidelity: str
    role: str
    parent: float | None
    read: tuple[int, ...] = ()


def _finished_numbers(read: Sequence[TrialRecord], records: Sequence[TrialRecord]) -> tuple[int, ...]:
    """Numbers of the records in ``read`` whose trials have finished in ``records`` (fantasies are not there)."""
    finished = {r.number for r in records if not r.pending}
    return tuple(sorted({r.number for r in read if r.number in finished}))


def _anywhere(
    records: Sequence[TrialRecord], rules: SearchRules, bounds: tuple[float, float], rng: np.random.RandomState | None
) -> Plan:
    """An :data:`EXTRA` plan from :func:`choose_weight` over all records (after convergence, or as a last resort)."""
    lam, fidelity = choose_weight(records, rules, bounds, rng)
    return Plan(lam, fidelity, EXTRA, parent_weight(records, lam, fidelity, rules), _finished_numbers(records, records))


def plan_weight(
    records: Sequence[TrialRecord],
    rules: SearchRules,
    bounds: tuple[float, float] = (0.0, 1.0),
    rng: np.random.RandomState | None = None,
) -> Plan | None:
    """The :class:`Plan` for a new trial, or ``None``: better wait for a running result.

    The one-worker search's next weight if nobody trains it (:func:`replay`); else a
    likely-needed guess (:func:`speculate`), an :data:`EXTRA`; else ``None``. Once the
    search has converged, :func:`choose_weight` over all records refines anywhere
    (:data:`EXTRA`: it no longer moves the confirmed knee).
    """
    state = replay(records, rules, bounds)
    if state.next is None:
        return _anywhere(records, rules, bounds, rng)
    if state.running is None:
        return Plan(*state.next, PATH, parent_weight(state.records, *state.next, rules),
                    _finished_numbers(state.records, records))
    guess = speculate(records, rules, bounds, state)
    if guess is None:
        return None
    lam, fidelity, read = guess
    return Plan(lam, fidelity, EXTRA, parent_weight(read, lam, fidelity, rules), _finished_numbers(read, records))


# ------------------------------------------------------------------------ coordinating


class SharedLock(Protocol):
    """A lock that worker processes share (:class:`~motune.filelock.FileLock`, :class:`~motune.dblock.DatabaseLock`).

    ``acquire`` blocks until held and returns ``True`` (or ``None``), or returns ``False``
    when it gave up (the caller goes on without it; an ``OSError`` from it counts the same,
    e.g. a lock file that cannot be opened); ``release`` follows a hold. Picklable.
    """

    def acquire(self) -> bool | None: ...

    def release(self) -> None: ...


class _PlanningLock:
    """Taken while a worker plans: by the threads of one process, and with ``shared`` by every process that locks it.

    The process-wide part is a re-entrant thread lock, new in a forked or unpickled copy
    (never one held elsewhere): the thread that holds it may take it again
    (:meth:`KneeSampler.planning_turn` holds it across ``study.ask()``, whose planning takes
    it too). ``shared`` (a file's path, or a :class:`SharedLock`) is taken by the outermost
    hold; one that gives up (a database lock past its timeout) or fails (a lock file that
    cannot be opened: one warning per process) leaves this hold to the
    write-then-re-read check of :meth:`KneeSampler._plan`, as does the first plan of two
    threads of a fresh fork that each make a thread lock at first use.
    """

    def __init__(self, shared: str | SharedLock | None = None) -> None:
        self.shared: SharedLock | None = FileLock(shared) if isinstance(shared, str) else shared
        self._pid, self._lock, self._depth, self._held = os.getpid(), threading.RLock(), 0, False
        self._warned = False  # said once per process that the shared lock could not be taken
        self.plan: Plan | None = None  # a plan made under this hold, for the holder to use (planning_turn)

    def __enter__(self) -> None:
        if self._pid != os.getpid():  # a forked child: its own thread lock (the shared lock reopens itself)
            self._pid, self._lock, self._depth, self.plan = os.getpid(), threading.RLock(), 0, None
        lock = self._lock
        lock.acquire()
        if self._depth == 0 and self.shared is not None:
            try:
                self._held = self.shared.acquire() is not False
            except OSError as exc:  # e.g. its file's directory was removed: plan without it, as past a timeout
                self._held = False
                if not self._warned:
                    self._warned = True
                    _log.warning("planning without the shared planning lock (%s); workers still keep off each "
                                 "other's weights", exc)
            except BaseException:
                lock.release()
                raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.plan = None  # made under this hold only
        try:
            if self._depth == 0 and self._held:
                self._held = False
                self.shared.release()  # type: ignore[union-attr]
        finally:
            self._lock.release()

    def __getstate__(self) -> dict[str, Any]:
        return {"shared": self.shared}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["shared"])


class KneeSampler(BaseSampler):
    """Sampler that finds the knee of a biobjective front by dichotomic search.

    Each trial trains the weighted sum ``(1 - λ) f1 + λ f2`` of the study's two
    objectives with ``λ = trial.suggest_float(param_name, 0.0, 1.0)``. The sampler
    picks ``λ`` (:func:`choose_weight`):

    1. the ``start_weights``, in order;
    2. then the *bracket*: while the largest weight tried may not reach the end of the
       front, ten times that weight (capped at the upper bound) is tried next, so the
       knee is never taken on a truncated front (:func:`bracket` says when the end counts
       as reached);
    3. then, for adjacent supported points ``A, B`` of the front found so far, the
       weight normal to the segment, ``λ_AB = (b1 - a1) / ((b1 - a1) + (a2 - b2))``,
       on a log grid once the front has more than two points (``grid``). Segments
       next to the current knee come first, then the others, longest (in normalised
       objectives) first. A finished trial *closes* the segment it probed
       (:func:`segments`): a result less than ``tolerance`` below ``AB`` is noise;
    4. once both segments next to the knee are closed the knee is *confirmed*; with
       ``full_fidelity`` one more trial retrains the knee's ``λ``, marked ``"full"``
       (see :meth:`fidelity`), and :meth:`is_converged` is true once it completes;
    5. when nothing is open (or after convergence) it bisects gaps between tried
       weights, where the results differ most, so ``study.optimize`` never stalls or
       repeats a weight.

    The sampler keeps no search state: every decision is derived from
    ``study.get_trials()`` each time, so any number of processes can share one
    storage. With several workers the steps above are the *one-worker* search,
    replayed from the trials (:func:`replay`): its decisions read only the results
    it asked for, so the confirmed knee does not depend on the number of workers.
    Idle workers meanwhile train weights that search will likely ask for next,
    under likely results of the running trials (:func:`guesses`, :func:`speculate`,
    marked ``"knee:role" = "extra"``; possibly the knee's full retrain before its
    confirmation lands, which confirms nothing), or wait for a result (``idle_wait``).
    The chosen weight and the fidelity are written to the new trial's
    system attributes in :meth:`before_trial` (``"knee:<param_name>"`` and
    ``"knee:fidelity"``); other workers see them and skip that weight while the
    trial runs. If two workers plan the same weight at the same moment, at least one
    of them sees the other on re-reading and plans again. Failed and pruned trials
    close what they probed; a pruned trial whose system attribute :data:`FRONT_END_ATTR`
    holds the objective pair it stopped at (a network that collapsed: the end of the
    front) counts as a result there; use Optuna's ``RetryFailedTrialCallback`` for transient
    failures (the retry keeps the weight and fidelity). Trials that never suggest
    ``param_name`` (e.g. baselines sharing the study) are not part of the search;
    maximised objectives are negated internally; other parameters are sampled by
    ``independent_sampler``.

    Example:

        .. testcode::

            import numpy as np
            import optuna

            from motune.sampler import KneeSampler

            # A synthetic front: f1 (an error) against f2 (an l1 norm, thousands).
            x = np.linspace(0.0, 1.0, 2001)
            f1, f2 = 0.05 + 2.25 * x, 3000.0 * (1.0 - x**2) / (1.0 + 30.0 * x)


            def objective(trial):
                lam = trial.suggest_float("l1_weight", 0.0, 1.0)
                i = np.argmin((1.0 - lam) * f1 + lam * f2)  # "training"
                # KneeSampler.fidelity(trial) == "full" would ask for a longer run.
                return float(f1[i]), float(f2[i])


            sampler = KneeSampler(seed=0)
            study = optuna.create_study(
                directions=["minimize", "minimize"], sampler=sampler
            )
            for _ in range(30):
                study.optimize(objective, n_trials=1)
                if sampler.is_converged(study):
                    break
            knee = sampler.knee_trial(study)
            assert knee is not None and KneeSampler.fidelity(knee) == "full"

    Args:
        start_weights:
            Weights tried first. The default ``(0.0, 0.1)`` is the paper's: ``λ = 0``
            gives the most accurate end of the front, and ``λ = 0.1`` is usually
            large enough to prune a real network to nothing, the other end. When the
            largest start weight falls short of that end, the bracket step (2 above)
            extends it; a pair that brackets the knee saves those trials.
        knee:
            ``"angle"`` (the paper's widest normal cone) or ``"distance"`` (farthest
            from the line through the extremes); see :func:`motune.pareto.knee_index`.
        tolerance:
            Depth below a segment, as a fraction of the front's extent in each
            objective, that makes a result a new supported point; also the closing
            tolerance. The default 0.02 is well above rounding and below any
            trade-off worth a trial; raise it to the noise level of the training
            (a few standard deviations of the objectives, normalised).
        min_lambda_gap:
            Relative difference below which two weights are the same weight
            (default ``1e-3``): they train the same network up to noise.
        f2_floor:
            Lowest value the second (minimised) objective can take, default ``0.0``
            (an l1 norm or a count of weights: a result there has no weights left,
            the end of the front, and ends the bracket without a trial beyond it).
            ``None`` when no floor is known: the end is then recognised by a plateau,
            which costs one trial past it.
        full_fidelity:
            Retrain the confirmed knee's weight once as a ``"full"`` trial (the paper
            approximates the front with a third of the epochs). Default ``True``.
        collapsed_nadir:
            Whether collapsed results (f2 at ``f2_floor``, or no better in f1 than
            one that is: a network with no weights left, at chance level) may set the
            nadir the knee is measured by. Default ``True`` (any front); motune's
            studies pass ``False``: a collapsed network's f1 (ln of the number of
            classes) squeezes the live front and drags the knee to the last network
            before the collapse (docs/benchmarks.md, ``bench/knee_nadir.py``).
        grid:
            Weights per decade the search's weights are snapped to (default 10, steps
            of 26 % in λ; ``0``: exact normal weights). Every segment's weight except
            the first one (the extremes' normal) lies on this log grid, so that an idle
            worker's guess can be exactly the weight the search asks for next (see
            :func:`guesses`); a segment whose weight snaps onto a weight already tried
            counts as closed. The knee's precision is one grid step in λ.
        independent_sampler:
            Sampler for all other parameters; default ``RandomSampler(seed)``.
        seed:
            Seed for the default independent sampler and for the sampler's own
            random fallback. The weights themselves are deterministic given the
            trials.
        param_name:
            Name of the weight parameter, default ``"l1_weight"``.
        idle_wait:
            Most seconds a worker inside ``study.optimize`` waits for a running
            trial's result when no weight is likely needed meanwhile (default 600);
            after that, or with ``0``, or outside ``study.optimize`` (ask-and-tell), it
            takes an ``extra`` weight at once (:func:`choose_weight` over all trials).
        wait:
            Whether idle workers wait (see ``idle_wait``): ``None`` (default) only
            inside ``study.optimize``; ``True`` also in ask-and-tell loops where each
            thread runs one trial at a time (a worker loop like ``motune worker``'s; a
            single thread asking twice before telling would wait ``idle_wait`` on itself);
            ``False`` never.
        planning_lock:
            What worker processes lock while they plan a trial, so that they plan one
            at a time, each reading the weights the others stored: none collides with
            another's weight or waits to avoid one. A file's path (``flock``, workers
            on one machine: e.g. the journal file's path with ``.plan`` added), or a
            :class:`SharedLock` such as :class:`motune.dblock.DatabaseLock` on the
            study's database server (workers on several machines);
            :func:`motune.storage.planning_lock_for` picks one for a storage URL. ``None``
            (default): the threads of one process take turns; processes stagger their
            plans after a wait. Either way a worker checks after storing its weight
            that no other worker (on any machine) stored the same one, and plans again
            if one did.
    """

    def __init__(
        self,
        *,
        start_weights: Sequence[float] = (0.0, 0.1),
        knee: Literal["angle", "distance"] = "angle",
        tolerance: float = 0.02,
        min_lambda_gap: float = 1e-3,
        f2_floor: float | None = 0.0,
        full_fidelity: bool = True,
        collapsed_nadir: bool = True,
        grid: int = 10,
        independent_sampler: BaseSampler | None = None,
        seed: int | None = None,
        param_name: str = "l1_weight",
        idle_wait: float = 600.0,
        wait: bool | None = None,
        planning_lock: str | os.PathLike[str] | SharedLock | None = None,
    ) -> None:
        if not (idle_wait >= 0.0 and math.isfinite(idle_wait)):
            raise ValueError(f"idle_wait must be a finite number of seconds >= 0, got {idle_wait}")
        self._idle_wait = float(idle_wait)
        self._wait = wait
        self._rules = SearchRules(
            start_weights=tuple(float(w) for w in start_weights),
            knee=knee,
            tolerance=float(tolerance),
            min_lambda_gap=float(min_lambda_gap),
            f2_floor=None if f2_floor is None else float(f2_floor),
            full_fidelity=bool(full_fidelity),
            collapsed_nadir=bool(collapsed_nadir),
            grid=int(grid),
        )
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._rng = LazyRandomState(seed)
        self._param_name = param_name
        self._lambda_attr = f"knee:{param_name}"
        shared = os.fspath(planning_lock) if isinstance(planning_lock, (str, os.PathLike)) else planning_lock
        self._planning = _PlanningLock(shared)
        self._mine: set[int] = set()  # trials this process is planning
        self._plan_seconds = 0.01  # running mean of one plan (read, plan_weight, store): the stagger step

    # ------------------------------------------------------------------ public API

    @staticmethod
    def fidelity(trial: BaseTrial) -> str:
        """``"full"`` if the sampler asked for a full-fidelity run, else ``"front"``.

        Works on a running :class:`~optuna.trial.Trial` (inside the objective, to
        choose the number of epochs) and on a :class:`~optuna.trial.FrozenTrial`;
        see :func:`trial_fidelity`.
        """
        return trial_fidelity(trial)

    def is_converged(self, study: Study) -> bool:
        """Whether the search has done its job.

        With ``full_fidelity``: a full-fidelity retrain of a confirmed knee has
        completed. Without: the one-worker search's knee is confirmed, i.e. both
        segments next to it are closed by finished trials. Either stays true: later
        trials are ``extra`` and do not move the knee (see :func:`replay`).
        """
        _, records, bounds = self._read(study)
        return replay(records, self._rules_for(study), bounds).next is None

    def wait_for_work(self, study: Study, timeout: float) -> bool:
        """Wait, at most ``timeout`` seconds, while a new trial would have no weight worth training; say if it has.

        A check only: another worker may take that weight before this one asks. A worker
        loop that creates trials itself should ask inside :meth:`planning_turn` instead.
        """
        with self.planning_turn(study, timeout) as ready:
            return ready

    @contextlib.contextmanager
    def planning_turn(self, study: Study, timeout: float) -> Iterator[bool]:
        """Wait, at most ``timeout`` seconds, for a weight worth training; while it says True, hold the planning lock.

        For a worker loop that creates trials itself with ``study.ask()``: outside
        ``study.optimize`` the sampler does not wait (``wait``), and a trial asked for while
        the search waits on running results gets a gap-filling weight, often in the
        collapsed tail. Asked for inside the turn, the trial gets the weight this check
        found: the threads of this process, and with a ``planning_lock`` every process
        that shares it, cannot take it in between (without one, other processes still can;
        the write-then-re-read check of ``_plan`` then keeps them apart). The wait itself
        does not hold the lock.

        Example (the search's first weight, then its second start weight, guessed while the
        first trains; then nothing worth starting until a result arrives):

        .. testcode::

            import optuna
            from motune import KneeSampler

            sampler = KneeSampler(start_weights=[0.0, 1.0])
            study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
            asked = []
            for _ in range(3):
                with sampler.planning_turn(study, timeout=0.1) as ready:
                    if ready:  # planned inside the turn: nobody else takes this weight meanwhile
                        asked.append(study.ask().suggest_float("l1_weight", 0.0, 1.0))
            assert asked == [0.0, 1.0]
        """
        deadline = time.monotonic() + timeout
        rules = self._rules_for(study)
        while True:
            with self._planning:
                trials, records, bounds = self._read(study)
                plan = plan_weight(records, rules, bounds, self._rng.rng)
                if plan is not None:
                    self._planning.plan = plan  # the ask() inside the turn plans with it, not again (_choose)
                    yield True
                    return
            if time.monotonic() >= deadline:
                yield False
                return
            wait_for_a_result(study, trials, deadline)

    def unused_guesses(self, study: Study) -> set[int]:
        """Numbers of the finished trials that idle workers guessed and the one-worker search has not read.

        What one worker would not have trained (so far): a budget that counts only the
        other trials ends at the same point of the search with any number of workers.
        """
        _, records, bounds = self._read(study)
        read = {r.number for r in replay(records, self._rules_for(study), bounds).records}
        return {r.number for r in records if r.role == EXTRA and not r.pending and r.number not in read}

    def knee_trial(self, study: Study) -> FrozenTrial | None:
        """The trial at the knee of the one-worker search's front (``None`` before any).

        That front holds the results the search asked for (:func:`replay`), not the
        extra ones idle workers or later trials added, so the confirmed knee stays put.
        If a completed full-fidelity trial retrained the knee's weight, that trial
        (the latest such) is returned instead.
        """
        trials, records, bounds = self._read(study)
        front = search_front(replay(records, self._rules_for(study), bounds).records, self._rules)
        if front.knee is None:
            return None
        if front.records[front.knee].state != TrialState.COMPLETE:
            return None  # only a front end stopped early so far: no network to hand out
        lam = front.records[front.knee].lam
        full = [
            r.number
            for r in records
            if r.fidelity == FULL and r.state == TrialState.COMPLETE and self._rules.same(r.lam, lam)
        ]
        number = full[-1] if full else front.records[front.knee].number
        return copy.deepcopy(next(t for t in trials if t.number == number))

    def supported_trials(self, study: Study) -> list[FrozenTrial]:
        """Trials at the supported points of the search front, sorted by f1."""
        trials, records, _ = self._read(study)
        by_number = {t.number: t for t in trials}
        front = search_front(records, self._rules)
        return [copy.deepcopy(by_number[front.records[i].number]) for i in front.supported]

    # ------------------------------------------------------------- sampler protocol

    def reseed_rng(self) -> None:
        self._independent_sampler.reseed_rng()
        self._rng.rng.seed()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self._independent_sampler.before_trial(study, trial)
        if len(study.directions) != 2:
            return  # sample_independent raises; there Optuna fails the trial cleanly
        attrs = trial.system_attrs
        if self._lambda_attr in attrs:
            return  # planned already, e.g. a retry of a failed trial
        fixed = attrs.get("fixed_params") or {}
        given = fixed.get(self._param_name, trial.params.get(self._param_name))
        if given is not None:  # enqueued or added with the weight: record it as planned
            storage = study._storage
            storage.set_trial_system_attr(trial._trial_id, self._lambda_attr, float(given))
            if FIDELITY_ATTR not in attrs:
                storage.set_trial_system_attr(trial._trial_id, FIDELITY_ATTR, FRONT)
            return
        if "fixed_params" in attrs:
            # Enqueued without the weight: likely a baseline that never suggests it
            # (e.g. SMGD). Plan lazily in sample_independent rather than block a λ.
            return
        self._plan(study, trial)

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        if param_name != self._param_name:
            return self._independent_sampler.sample_independent(study, trial, param_name, param_distribution)
        self._check_study(study)
        if not isinstance(param_distribution, FloatDistribution):
            raise TypeError(
                f"KneeSampler needs {param_name!r} to be a float parameter "
                f"(trial.suggest_float), got {param_distribution}"
            )
        lam = trial.system_attrs.get(self._lambda_attr)
        if lam is None:  # not planned in before_trial (e.g. sampler swapped in late)
            lam, _ = self._plan(study, trial)
        return _to_distribution(float(lam), param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)

    # ---------------------------------------------------------------- coordination

    def _plan(self, study: Study, trial: FrozenTrial) -> tuple[float, str]:
        """Choose (λ, fidelity) for ``trial``, store them, resolve races with others.

        Threads of one process, and processes sharing a ``planning_lock``, plan one
        at a time (:meth:`_choose`), each reading the weights the others stored; other
        processes are kept apart by the stagger after a wait, and all by the
        write-then-re-read check here.
        """
        storage = study._storage
        self._mine.add(trial.number)
        try:
            for attempt in range(_MAX_RETRIES):
                plan = self._choose(study, trial, last_resort=attempt == _MAX_RETRIES - 1)
                lam, fidelity = plan.lam, plan.fidelity
                # Write, then re-read: of two workers that planned the same λ concurrently,
                # the later reader sees the other. Yield on *any* conflict (not only with
                # a lower-numbered trial): a worker that re-read before the other wrote
                # keeps its λ, so the one that sees the conflict must move.
                others = self._conflicts(study, trial.number, lam, fidelity)
                if not others or attempt == _MAX_RETRIES - 1:
                    break
                # Unplanned while re-planning, so that no worker waits on this trial's λ
                # (it may not keep it). Back-off: the lowest-numbered of the colliding trials
                # re-plans at once, the others one planning time apart each, with jitter, so
                # that two workers do not re-plan in step.
                storage.set_trial_system_attr(trial._trial_id, self._lambda_attr, None)
                rank = sum(n < trial.number for n in others)
                jitter = float(np.random.default_rng().uniform(0.0, 1.0))
                time.sleep(self._plan_seconds * (rank + jitter) * (attempt + 1))
        finally:
            self._mine.discard(trial.number)
        return lam, fidelity

    def _choose(self, study: Study, trial: FrozenTrial, last_resort: bool = False) -> Plan:
        """:func:`plan_weight` for ``trial``, stored on it; while it says wait, wait (see ``idle_wait``).

        Reading, planning and storing hold this process's planning lock, so that its
        threads plan one after the other; waiting does not. After a wait the workers woken
        by the same result plan in trial-number order (:meth:`_stagger`).
        """
        rules = self._rules_for(study)
        waits = self._wait if self._wait is not None else bool(getattr(study._thread_local, "in_optimize_loop", False))
        deadline = time.monotonic() + self._idle_wait
        while True:
            with self._planning:
                began = time.monotonic()
                plan, self._planning.plan = (None if last_resort else self._planning.plan), None
                planned = plan is None  # else this thread's planning_turn planned it, under the same hold of the lock
                if planned:
                    trials, records, bounds = self._read(study, exclude=trial.number)
                    plan = None if last_resort else plan_weight(records, rules, bounds, self._rng.rng)
                if plan is None and (last_resort or not waits or time.monotonic() >= deadline):
                    # The last resort, still in step with others, is a weight nobody has, off the path.
                    plan = _anywhere(records, rules, bounds, np.random.RandomState() if last_resort else self._rng.rng)
                if plan is not None:
                    storage = study._storage
                    storage.set_trial_system_attr(trial._trial_id, FIDELITY_ATTR, plan.fidelity)
                    storage.set_trial_system_attr(trial._trial_id, ROLE_ATTR, plan.role)
                    storage.set_trial_system_attr(trial._trial_id, PARENT_ATTR, plan.parent)
                    storage.set_trial_system_attr(trial._trial_id, READ_ATTR, list(plan.read))
                    storage.set_trial_system_attr(trial._trial_id, self._lambda_attr, plan.lam)  # last: now a record
                    if planned:
                        self._plan_seconds += 0.5 * (time.monotonic() - began - self._plan_seconds)
                    return plan
            wait_for_a_result(study, trials, deadline)
            self._stagger(study, trial.number)

    def _stagger(self, study: Study, number: int) -> None:
        """Sleep a planning time per worker of other processes that waits with a lower trial number.

        Waiting workers hold running trials without a weight; those of this process, and
        with a ``planning_lock`` those of every process, queue on the lock instead.
        """
        if self._planning.shared is not None:
            return
        waiting = sum(
            t.number < number and t.number not in self._mine and t.state == TrialState.RUNNING
            and t.system_attrs.get(self._lambda_attr) is None
            for t in study.get_trials(deepcopy=False)
        )
        if waiting:
            time.sleep(1.5 * waiting * self._plan_seconds)  # 1.5: one plan may take longer than the mean

    def _conflicts(self, study: Study, number: int, lam: float, fidelity: str) -> list[int]:
        """The other trials of the same fidelity that have (or plan) the same weight."""
        _, records, _ = self._read(study, exclude=number)
        return [r.number for r in records if r.fidelity == fidelity and self._rules.same(r.lam, lam)]

    def _read(
        self, study: Study, exclude: int | None = None
    ) -> tuple[list[FrozenTrial], list[TrialRecord], tuple[float, float]]:
        """The study's trials, their records and the weight's range (trial ``exclude`` left out)."""
        self._check_study(study)
        trials = study.get_trials(deepcopy=False)
        records = read_trials(trials, self._param_name, study.directions, exclude)
        return trials, records, weight_bounds(trials, self._param_name, exclude)

    def _rules_for(self, study: Study) -> SearchRules:
        """The rules, without ``f2_floor`` when the second objective is maximised."""
        if study.directions[1] == StudyDirection.MINIMIZE:
            return self._rules
        return dataclasses.replace(self._rules, f2_floor=None)

    @staticmethod
    def _check_study(study: Study) -> None:
        if len(study.directions) != 2:
            raise ValueError(
                "KneeSampler needs a study with exactly two objectives (e.g. "
                "optuna.create_study(directions=['minimize', 'minimize'])), got "
                f"{len(study.directions)} direction(s)."
            )
