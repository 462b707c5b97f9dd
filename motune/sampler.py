"""Knee-seeking Optuna sampler: dichotomic search over weighted-sum scalarisations.

See DESIGN.md §2 and §5. One trial trains ``F_λ = (1 - λ) f1 + λ f2`` for one weight
``λ`` (the parameter ``l1_weight``); :class:`KneeSampler` chooses the ``λ`` of each
trial so that the supported points of the front are found around its knee first.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from optuna.distributions import FloatDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, Trial, TrialState

from motune import pareto

if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import BaseTrial

__all__ = ["KneeSampler"]

FIDELITY_ATTR = "knee:fidelity"
FRONT = "front"
FULL = "full"

_PENDING = (TrialState.RUNNING, TrialState.WAITING)
_MAX_RETRIES = 5  # re-plans when another worker planned the same λ at the same moment
_ATOL = 1e-12  # weights closer than this are the same weight whatever their ratio


_MIN_GAP_RATIO = 1.05  # narrower λ gaps are bisected last (see _widest_gap)


@dataclass
class _Segment:
    pos: int  # between supported[pos] and supported[pos + 1]
    lam: float  # normal weight λ_AB in raw objectives
    length: float  # in normalised objectives
    closed: bool  # a finished trial probed it (see KneeSampler docstring)
    busy: bool  # a running / waiting trial is probing it


@dataclass
class _Snapshot:
    """Everything the sampler knows, derived from the study's trials."""

    search: list[FrozenTrial]  # COMPLETE, front fidelity, with λ and finite values
    points: np.ndarray  # their values as minimisation, shape (n, 2)
    lambdas: np.ndarray  # their λ
    scale: np.ndarray  # nadir - ideal of the front (raw units, > 0)
    supported: np.ndarray  # indices into `search`, sorted by f1
    knee: int | None  # index into `search`
    probed: list[float]  # λ of finished front trials (COMPLETE, FAIL, PRUNED)
    planned: list[float]  # λ of RUNNING / WAITING front trials
    full_complete: list[float]  # λ of COMPLETE full-fidelity trials
    full_taken: list[float]  # λ of full-fidelity trials in any state
    full_pending: list[float]  # λ of RUNNING / WAITING full-fidelity trials
    full_trials: list[FrozenTrial]  # COMPLETE full-fidelity trials
    bounds: tuple[float, float]  # range of the λ distribution
    bracket_open: bool = True  # the end of the front may lie beyond the largest λ tried
    extension: float | None = None  # the λ that extends the bracket, when one is due now

    @property
    def knee_pos(self) -> int | None:
        if self.knee is None:
            return None
        return int(np.flatnonzero(self.supported == self.knee)[0])


class KneeSampler(BaseSampler):
    """Sampler that finds the knee of a biobjective front by dichotomic search.

    Each trial trains the weighted sum ``(1 - λ) f1 + λ f2`` of the study's two
    objectives with ``λ = trial.suggest_float(param_name, 0.0, 1.0)``. The sampler
    picks ``λ``:

    1. the ``start_weights``, in order;
    2. then the *bracket*: while the largest weight tried, ``λ_max``, may not reach
       the end of the front, ``min(10 λ_max, upper bound)`` is tried next, so the
       knee is never taken on a truncated front. The end counts as reached when
       ``λ_max`` is the distribution's upper bound; when its result has
       ``f2 <= f2_floor`` (an l1 norm of 0: no weights left); when raising the
       weight from the next-smaller tried one neither lowered ``f2`` nor raised
       ``f1`` by more than ``tolerance`` (normalised: the same network, a plateau,
       so the end was already there); or when ``λ_max`` failed (nothing to judge,
       and a weight that crashes is not pushed further). While the trial at
       ``λ_max`` runs, other workers go on with step 3 but no knee is confirmed;
    3. then, for adjacent supported points ``A, B`` of the front found so far, the
       weight normal to the segment, ``λ_AB = (b1 - a1) / ((b1 - a1) + (a2 - b2))``
       (Aneja & Nair's dichotomic search). Segments next to the current knee come
       first, then the others, longest (in normalised objectives) first;
    4. once both segments next to the knee are closed (and the bracket is, see 2)
       the knee is *confirmed*; with ``full_fidelity`` one more trial retrains the
       knee's ``λ``, marked ``"full"`` (see :meth:`fidelity`), and
       :meth:`is_converged` is true once it completes. That happens once per study
       (a failed full-fidelity trial is not retried at the same weight; another
       confirmed knee gets one);
    5. when nothing is open (or after convergence) it keeps producing new weights
       by bisecting (geometric middle) a gap between tried positive weights: the
       gap whose two results lie farthest apart in normalised objectives, first
       among the weights around the knee, then anywhere (gaps narrower than 5 %
       in ``λ``, i.e. cliffs where training collapses, last; see
       :meth:`_fill_gap`), so ``study.optimize`` never stalls or repeats.

    A segment is *closed* when a finished trial probed it and the segment survived,
    i.e. its endpoints are still adjacent supported points. A trial with weight
    ``λ'`` probes ``AB`` if ``A`` and ``B`` score within ``tolerance`` of each other
    under ``λ'`` (in normalised objectives: ``|n'·(A - B)| <= tolerance`` for the unit
    normal ``n'`` of ``λ'``), which includes ``λ' = λ_AB`` and makes segments shorter
    than ``tolerance`` closed outright. Supported points are computed with the same
    ``tolerance`` (:func:`motune.pareto.supported_points`): a result less than
    ``tolerance`` below ``AB`` is noise, not a new vertex. So near-duplicate and
    dominated results close the segment they probed, a noisy re-discovery of an
    endpoint does not re-open it, and every front-fidelity proposal is a weight no
    finished, running or waiting trial has (weights within a relative
    ``min_lambda_gap`` count as equal). Failed and pruned trials close what they
    probed too, so a weight that crashes is not retried forever; use Optuna's
    ``RetryFailedTrialCallback`` for transient failures (the retry keeps the weight
    and fidelity: they are copied with the system attributes).

    The sampler keeps no search state: every decision is derived from
    ``study.get_trials()`` each time, so any number of processes can share one
    storage. The chosen weight and the fidelity are written to the new trial's
    system attributes in :meth:`before_trial` (``"knee:<param_name>"`` and
    ``"knee:fidelity"``); other workers see them and skip that weight while the
    trial runs. If two workers plan the same weight at the same moment, at least one
    of them sees the other on re-reading and plans again.

    Trials that never suggest ``param_name`` (e.g. baselines sharing the study) and
    full-fidelity trials are not part of the search front. Objectives to be
    maximised are negated internally. Other parameters are sampled by
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
            tolerance above. The default 0.02 is well above rounding and below any
            trade-off worth a trial; raise it to the noise level of the training
            (a few standard deviations of the objectives, normalised).
        min_lambda_gap:
            Relative difference below which two weights are the same weight
            (default ``1e-3``): they train the same network up to noise.
        f2_floor:
            Lowest value the second (minimised) objective can take, default ``0.0``
            (an l1 norm or a count of weights: a result there has no weights left,
            the end of the front). A result at the floor ends the bracket (step 2)
            without a trial beyond it. ``None`` when no floor is known: the end is
            then recognised by a plateau, which costs one trial past it.
        full_fidelity:
            Retrain the confirmed knee's weight once as a ``"full"`` trial (the paper
            approximates the front with a third of the epochs). Default ``True``.
        independent_sampler:
            Sampler for all other parameters; default ``RandomSampler(seed)``.
        seed:
            Seed for the default independent sampler and for the sampler's own
            random fallback. The weights themselves are deterministic given the
            trials.
        param_name:
            Name of the weight parameter, default ``"l1_weight"``.
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
        independent_sampler: BaseSampler | None = None,
        seed: int | None = None,
        param_name: str = "l1_weight",
    ) -> None:
        weights = [float(w) for w in start_weights]
        if len(weights) < 2 or not all(0.0 <= w <= 1.0 for w in weights):
            raise ValueError(
                f"start_weights needs two or more weights in [0, 1], got {weights}"
            )
        if knee not in ("angle", "distance"):
            raise ValueError(f"knee must be 'angle' or 'distance', got {knee!r}")
        if not 0.0 <= tolerance < 1.0:
            raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
        if not 0.0 < min_lambda_gap < 1.0:
            raise ValueError(f"min_lambda_gap must be in (0, 1), got {min_lambda_gap}")
        self._start_weights = weights
        self._knee = knee
        self._tolerance = float(tolerance)
        self._rtol = float(min_lambda_gap)
        if f2_floor is not None and not math.isfinite(f2_floor):
            raise ValueError(f"f2_floor must be a finite number or None, got {f2_floor}")
        self._f2_floor = None if f2_floor is None else float(f2_floor)
        self._full_fidelity = bool(full_fidelity)
        self._independent_sampler = independent_sampler or RandomSampler(seed=seed)
        self._rng = LazyRandomState(seed)
        self._param_name = param_name
        self._lambda_attr = f"knee:{param_name}"

    # ------------------------------------------------------------------ public API

    @staticmethod
    def fidelity(trial: BaseTrial) -> str:
        """``"full"`` if the sampler asked for a full-fidelity run, else ``"front"``.

        Works on a running :class:`~optuna.trial.Trial` (inside the objective, to
        choose the number of epochs) and on a :class:`~optuna.trial.FrozenTrial`.
        Reads the system attribute ``"knee:fidelity"``; trials without it (e.g. added
        by hand) may say ``"full"`` in the user attribute ``"fidelity"``.
        """
        if isinstance(trial, Trial):
            attrs = trial.storage.get_trial_system_attrs(trial._trial_id)
            user = trial.user_attrs
        else:
            attrs = getattr(trial, "system_attrs", None) or {}
            user = getattr(trial, "user_attrs", None) or {}
        return FULL if attrs.get(FIDELITY_ATTR, user.get("fidelity")) == FULL else FRONT

    def is_converged(self, study: Study) -> bool:
        """Whether the search has done its job.

        With ``full_fidelity``: a full-fidelity retrain of a confirmed knee has
        completed (this stays true; later trials may still move the knee, see
        :meth:`knee_trial`). Without: the current knee is confirmed, i.e. both
        segments next to it are closed (derived from the current trials, so a
        later trial that moves the knee can make it false again).
        """
        snap = self._snapshot(study)
        if self._full_fidelity:
            return bool(snap.full_complete)
        return self._confirmed(snap, self._segments(snap))

    def knee_trial(self, study: Study) -> FrozenTrial | None:
        """The trial at the current knee of the search front (``None`` before any).

        If a completed full-fidelity trial retrained the knee's weight, that trial
        (the latest such) is returned instead.
        """
        snap = self._snapshot(study)
        if snap.knee is None:
            return None
        lam = float(snap.lambdas[snap.knee])
        full = [
            t for t in snap.full_trials if self._same(t.params[self._param_name], lam)
        ]
        return copy.deepcopy(full[-1] if full else snap.search[snap.knee])

    def supported_trials(self, study: Study) -> list[FrozenTrial]:
        """Trials at the supported points of the search front, sorted by f1."""
        snap = self._snapshot(study)
        return [copy.deepcopy(snap.search[i]) for i in snap.supported]

    # ------------------------------------------------------------- sampler protocol

    def reseed_rng(self) -> None:
        self._independent_sampler.reseed_rng()
        self._rng.rng.seed()

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self,
        study: Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
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
            storage.set_trial_system_attr(
                trial._trial_id, self._lambda_attr, float(given)
            )
            if FIDELITY_ATTR not in attrs:
                storage.set_trial_system_attr(trial._trial_id, FIDELITY_ATTR, FRONT)
            return
        if fixed:
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
            return self._independent_sampler.sample_independent(
                study, trial, param_name, param_distribution
            )
        self._check_study(study)
        if not isinstance(param_distribution, FloatDistribution):
            raise TypeError(
                f"KneeSampler needs {param_name!r} to be a float parameter "
                f"(trial.suggest_float), got {param_distribution}"
            )
        lam = trial.system_attrs.get(self._lambda_attr)
        if lam is None:  # not planned in before_trial (e.g. sampler swapped in late)
            lam, _ = self._plan(study, trial)
        return self._clip(float(lam), param_distribution)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._independent_sampler.after_trial(study, trial, state, values)

    # ------------------------------------------------------------------- planning

    def _plan(self, study: Study, trial: FrozenTrial) -> tuple[float, str]:
        """Choose (λ, fidelity) for ``trial``, store them, resolve races with others."""
        storage = study._storage
        for attempt in range(_MAX_RETRIES):
            lam, fidelity = self._choose(study, trial.number)
            storage.set_trial_system_attr(trial._trial_id, self._lambda_attr, lam)
            storage.set_trial_system_attr(trial._trial_id, FIDELITY_ATTR, fidelity)
            # Write, then re-read: of two workers that planned the same λ concurrently,
            # the later reader sees the other. Yield on *any* conflict (not only with
            # a lower-numbered trial): a worker that re-read before the other wrote
            # keeps its λ, so the one that sees the conflict must move.
            if not self._conflicts(study, trial.number, lam, fidelity):
                break
            # Random back-off, so two workers stuck in step do not re-plan in step.
            time.sleep(
                float(np.random.default_rng().uniform(0.0, 0.02 * (attempt + 1)))
            )
        return lam, fidelity

    def _conflicts(self, study: Study, number: int, lam: float, fidelity: str) -> bool:
        for t in study.get_trials(deepcopy=False):
            if t.number == number or self.fidelity(t) != fidelity:
                continue
            other = self._trial_lambda(t)
            if other is not None and self._same(other, lam):
                return True
        return False

    def _choose(self, study: Study, number: int) -> tuple[float, str]:
        snap = self._snapshot(study, exclude=number)
        taken = snap.probed + snap.planned
        low, high = snap.bounds

        for w in self._start_weights:
            w = min(max(w, low), high)
            if not self._near_any(w, taken):
                return w, FRONT

        if snap.extension is not None:
            return snap.extension, FRONT

        pos = snap.knee_pos
        if pos is not None and len(snap.supported) >= 2:
            segments = self._segments(snap)
            usable = [
                s
                for s in segments
                if not (s.closed or s.busy)
                and not self._near_any(self._clip_to(s.lam, snap), taken)
            ]
            usable.sort(key=lambda s: -s.length)
            near_knee = [s for s in usable if s.pos in (pos - 1, pos)]
            if near_knee:
                return self._clip_to(near_knee[0].lam, snap), FRONT
            lam = float(snap.lambdas[snap.knee])
            if (
                self._full_fidelity
                and self._confirmed(snap, segments)
                and not (snap.full_complete or snap.full_pending)
                and not self._near_any(lam, snap.full_taken)  # failed there: not again
            ):
                return lam, FULL
            if usable:
                return self._clip_to(usable[0].lam, snap), FRONT

        return self._fill_gap(snap, taken), FRONT

    @staticmethod
    def _confirmed(snap: _Snapshot, segments: list[_Segment]) -> bool:
        """Knee confirmed: an interior supported point whose two segments are closed.

        A front of two supported points (a straight line) has no knee to confirm, and
        neither has a front whose end may lie beyond the largest weight tried (the
        bracket is open): its knee could move once the end is known.
        """
        pos = snap.knee_pos
        if pos is None or len(snap.supported) < 3 or snap.bracket_open:
            return False
        return all(s.closed for s in segments if s.pos in (pos - 1, pos))

    def _segments(self, snap: _Snapshot) -> list[_Segment]:
        pts, scale = snap.points[snap.supported], snap.scale
        probed = np.asarray(snap.probed, dtype=float)
        planned = np.asarray(snap.planned, dtype=float)
        segments = []
        for pos in range(len(pts) - 1):
            a, b = pts[pos], pts[pos + 1]
            lam = pareto.normal_weight(a, b)
            segments.append(
                _Segment(
                    pos=pos,
                    lam=lam,
                    length=float(np.hypot(*((b - a) / scale))),
                    closed=self._probes(a, b, lam, probed, scale),
                    busy=self._probes(a, b, lam, planned, scale),
                )
            )
        return segments

    def _probes(
        self,
        a: np.ndarray,
        b: np.ndarray,
        lam: float,
        lams: np.ndarray,
        scale: np.ndarray,
    ) -> bool:
        """Whether any weight in ``lams`` probes segment AB (see the class doc)."""
        if len(lams) == 0:
            return False
        if any(self._same(x, lam) for x in lams):
            return True
        # |F_λ'(A) - F_λ'(B)| over the length of λ''s normal in normalised objectives.
        gap = np.abs((1.0 - lams) * (a[0] - b[0]) + lams * (a[1] - b[1]))
        norm = np.hypot((1.0 - lams) * scale[0], lams * scale[1])
        return bool(np.any(gap <= self._tolerance * norm))

    def _fill_gap(self, snap: _Snapshot, taken: list[float]) -> float:
        """A new weight when no segment is open: bisect the gap whose results differ most.

        A gap between two tried weights is scored by the distance of their results
        in normalised objectives (log-width breaks ties and scores gaps with an
        unfinished end), so the search refines where the front still moves, not
        where training has collapsed and every weight gives the same network.
        Gaps between tried positive weights around the knee (between the weights
        of its neighbouring supported points) come first, then between all tried
        positive weights; then a decade below the smallest, the geometric middle
        above the largest, and finally a random weight.
        """
        low, high = snap.bounds
        tried = sorted({v for v in taken if low <= v <= high and v > 0})
        windows: list[list[float]] = []
        pos = snap.knee_pos
        if pos is not None and len(snap.supported) >= 2:
            near = snap.lambdas[snap.supported[max(pos - 1, 0) : pos + 2]]
            lo, hi = float(near.min()), float(near.max())
            windows.append([v for v in tried if lo <= v <= hi])
        windows.append(tried)
        results = {float(lam): point / snap.scale for lam, point in zip(snap.lambdas, snap.points)}
        for values in windows:
            lam = self._widest_gap(values, taken, results)
            if lam is not None:
                return lam
        edges = [tried[0] / 10, math.sqrt(tried[-1] * high)] if tried else []
        for lam in edges:
            if low < lam < high and not self._near_any(lam, taken):
                return lam
        rng = self._rng.rng
        for _ in range(100):
            lam = float(rng.uniform(low, high))
            if not self._near_any(lam, taken):
                return lam
        return float(rng.uniform(low, high))  # pragma: no cover - range exhausted

    def _widest_gap(
        self, values: list[float], taken: list[float], results: dict[float, np.ndarray] | None = None
    ) -> float | None:
        """Geometric middle of the free gap between ``values`` whose results differ most.

        Score: (distance of the two results in normalised objectives, log width); a gap
        with an end that has no result yet counts as infinitely far, so it is not starved.
        """
        results = results or {}
        best: tuple[tuple[bool, float, float], float] | None = None  # ((wide, distance, log gap), λ)
        for a, b in itertools.pairwise(values):
            mid = math.sqrt(a * b)
            if a < mid < b and not self._near_any(mid, taken):
                ra, rb = results.get(a), results.get(b)
                distance = math.inf if ra is None or rb is None else float(np.hypot(*(ra - rb)))
                # A gap under 5% in λ whose results still differ is a cliff (training
                # collapses there), not a stretch of front: refine it only when nothing
                # wider is left, or the search creeps towards the edge forever.
                wide = b / a >= _MIN_GAP_RATIO
                score = (wide, distance if wide else 0.0, math.log(b / a))
                if best is None or score > best[0]:
                    best = (score, mid)
        return None if best is None else best[1]

    # ------------------------------------------------------------------ snapshot

    def _snapshot(self, study: Study, exclude: int | None = None) -> _Snapshot:
        self._check_study(study)
        signs = np.array(
            [-1.0 if d == StudyDirection.MAXIMIZE else 1.0 for d in study.directions]
        )
        search, values, lambdas = [], [], []
        probed, planned = [], []
        full_complete, full_taken, full_pending, full_trials = [], [], [], []
        bounds = (0.0, 1.0)
        for t in study.get_trials(deepcopy=False):
            if t.number == exclude:
                continue
            dist = t.distributions.get(self._param_name)
            if isinstance(dist, FloatDistribution):
                bounds = (float(dist.low), float(dist.high))
            lam = self._trial_lambda(t)
            if lam is None:
                continue
            full = self.fidelity(t) == FULL
            if full:
                full_taken.append(lam)
                if t.state in _PENDING:
                    full_pending.append(lam)
                elif t.state == TrialState.COMPLETE:
                    full_complete.append(lam)
                    full_trials.append(t)
                continue
            if t.state in _PENDING:
                planned.append(lam)
                continue
            probed.append(lam)
            if t.state == TrialState.COMPLETE and t.values is not None:
                v = signs * np.asarray(t.values, dtype=float)
                if np.all(np.isfinite(v)):
                    search.append(t)
                    values.append(v)
                    lambdas.append(lam)

        points = np.asarray(values, dtype=float).reshape(-1, 2)
        front = points[pareto.nondominated_mask(points)]
        scale = np.ones(2)
        if len(front) >= 2:
            extent = front.max(axis=0) - front.min(axis=0)
            scale = np.where(extent > 0, extent, 1.0)
        lambdas_arr = np.asarray(lambdas, dtype=float)
        floor = self._f2_floor if study.directions[1] == StudyDirection.MINIMIZE else None
        bracket_open, extension = self._bracket(probed, planned, lambdas_arr, points, scale, bounds, floor)
        return _Snapshot(
            search=search,
            points=points,
            lambdas=lambdas_arr,
            scale=scale,
            supported=pareto.supported_points(points, self._tolerance),
            knee=pareto.knee_index(points, self._knee, self._tolerance),
            probed=probed,
            planned=planned,
            full_complete=full_complete,
            full_taken=full_taken,
            full_pending=full_pending,
            full_trials=full_trials,
            bounds=bounds,
            bracket_open=bracket_open,
            extension=extension,
        )

    def _bracket(
        self,
        probed: list[float],
        planned: list[float],
        lambdas: np.ndarray,
        points: np.ndarray,
        scale: np.ndarray,
        bounds: tuple[float, float],
        floor: float | None,
    ) -> tuple[bool, float | None]:
        """Whether the front may go on beyond the largest weight tried, and the weight to try there.

        Returns ``(open, extension)``. ``open`` is false once the end of the front is
        known to be reached (see step 2 of the class docstring); ``extension`` is
        ``min(10 λ_max, upper bound)`` when the bracket is open and the trial at
        ``λ_max`` has finished, ``None`` while it still runs (its weight is taken:
        nobody extends past a result not yet known) or when the bracket is closed.
        Derived from the trials alone, like everything else the sampler decides.
        """
        taken = probed + planned
        if not taken:
            return True, None
        low, high = bounds
        top = max(taken)
        at_top = np.array([self._same(float(lam), top) for lam in lambdas], dtype=bool)
        if not at_top.any() and self._near_any(top, planned):
            return True, None  # running: its result may still move the end of the front
        if top <= 0.0 or top >= high or self._same(top, high):
            return False, None  # nothing to scale, or nowhere further to go
        if not at_top.any():
            return False, None  # failed or pruned at λ_max: no result to judge, no retries past it
        # Of several results at one weight (retries), the one farthest along the front.
        f1_top, f2_top = points[at_top][np.argmin(points[at_top, 1])]
        if floor is not None and f2_top <= floor:
            return False, None  # no weights left: the end of the front
        below = (lambdas < top) & ~at_top
        if below.any():
            prev = float(lambdas[below].max())
            f1_prev, f2_prev = points[lambdas == prev][np.argmin(points[lambdas == prev, 1])]
            lowered = f2_prev - f2_top > self._tolerance * scale[1]
            traded = f1_top - f1_prev > self._tolerance * scale[0]
            if not (lowered or traded):
                return False, None  # a larger weight gave the same network: the end plateau
        return True, min(max(10.0 * top, low), high)

    def _trial_lambda(self, t: FrozenTrial) -> float | None:
        """The weight a trial trained (finished) or will train (running / waiting)."""
        if self._param_name in t.params:
            return float(t.params[self._param_name])
        if t.state in _PENDING:
            lam = t.system_attrs.get(self._lambda_attr)
            if lam is None:
                lam = (t.system_attrs.get("fixed_params") or {}).get(self._param_name)
            return None if lam is None else float(lam)
        return None  # finished without suggesting the weight: not a search trial

    def _check_study(self, study: Study) -> None:
        if len(study.directions) != 2:
            raise ValueError(
                "KneeSampler needs a study with exactly two objectives (e.g. "
                "optuna.create_study(directions=['minimize', 'minimize'])), got "
                f"{len(study.directions)} direction(s)."
            )

    # -------------------------------------------------------------------- helpers

    def _same(self, a: float, b: float) -> bool:
        return abs(a - b) <= self._rtol * max(abs(a), abs(b)) + _ATOL

    def _near_any(self, lam: float, values: Sequence[float]) -> bool:
        return any(self._same(lam, v) for v in values)

    @staticmethod
    def _clip_to(lam: float, snap: _Snapshot) -> float:
        return min(max(lam, snap.bounds[0]), snap.bounds[1])

    @staticmethod
    def _clip(lam: float, dist: FloatDistribution) -> float:
        lam = min(max(lam, dist.low), dist.high)
        if dist.step is not None:
            lam = dist.low + round((lam - dist.low) / dist.step) * dist.step
            lam = min(max(lam, dist.low), dist.high)
        return lam
