"""Two-objective Pareto geometry: nondominance, supported points, knee, segments, hypervolume.

Everything here is generic numpy on an ``(N, 2)`` array of objective vectors that
are both *minimised*; rows keep their input order and the functions return indices
into the input so callers can map results back to trials. No Optuna: the sampler
(:mod:`motune.sampler`) decides *what* to try, this module only measures the front.

Vocabulary:

* *nondominated*: no other point is at least as good in both objectives and better
  in one.
* *supported*: a vertex of the lower-left convex hull of the nondominated set, i.e.
  a point some weighted sum ``(1 - λ) f1 + λ f2`` can reach. Points in the interior
  of a hull edge (collinear) are weakly supported; they are not vertices and are
  not returned.
* *normalised*: ``(f - ideal) / (nadir - ideal)`` with ideal and nadir taken over the
  nondominated set, so the front spans ``[0, 1]`` in both objectives
  (:func:`front_scale` is ``nadir - ideal``).
* *normal weight* of a segment AB: the ``λ`` whose weighted sum is constant along AB
  (:func:`normal_weight`). Training with it finds the front point farthest below AB,
  if there is one: the step of dichotomic search (Aneja & Nair 1979), which finds
  every supported point by recursing on the two new segments.
* *knee*: the supported point where the trade-off turns most; see :func:`knee_index`
  for the two criteria.
"""

from __future__ import annotations

import itertools
from typing import Literal

import numpy as np

__all__ = [
    "collapsed_mask",
    "front_scale",
    "hull_segments",
    "hypervolume",
    "knee_index",
    "nondominated_mask",
    "normal_weight",
    "normalise",
    "predict",
    "supported_points",
    "weights_tie",
]

# Cross products and depths below this (in normalised units) count as zero, so that
# points collinear up to rounding are not hull vertices.
_EPS = 1e-12


def _as_points(points: np.ndarray) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.size == 0:
        return arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(
            f"expected an (N, 2) array of objective values, got shape {arr.shape}"
        )
    return arr


def nondominated_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the nondominated rows of ``points`` (both objectives minimised).

    Of several identical points only the first (lowest index) is kept, so the mask
    selects each front point once. Rows with a NaN or infinite value are never
    nondominated: they carry no usable position.
    """
    pts = _as_points(points)
    n = len(pts)
    mask = np.zeros(n, dtype=bool)
    if n == 0:
        return mask
    finite = np.flatnonzero(np.all(np.isfinite(pts), axis=1))
    # Sort by f1, then f2, then index; sweep keeping the best f2 seen so far. A point
    # is nondominated iff its f2 is strictly below everything with smaller-or-equal f1.
    order = finite[np.lexsort((finite, pts[finite, 1], pts[finite, 0]))]
    f2 = pts[order, 1]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(f2)[:-1]])
    mask[order] = f2 < best_before
    return mask


def normalise(
    points: np.ndarray,
    ideal: np.ndarray | None = None,
    nadir: np.ndarray | None = None,
) -> np.ndarray:
    """Map ``points`` affinely so that ``ideal -> (0, 0)`` and ``nadir -> (1, 1)``.

    By default ideal and nadir are the per-objective minimum and maximum over the
    nondominated points. An objective with zero extent is only shifted, not scaled
    (division by one), so the result is always finite for finite input. The map is
    increasing in each objective, so it preserves dominance and convex hulls.
    """
    pts = _as_points(points)
    if ideal is None or nadir is None:
        front = pts[nondominated_mask(pts)]
        if len(front) == 0:
            front = np.zeros((1, 2))
        if ideal is None:
            ideal = front.min(axis=0)
        if nadir is None:
            nadir = front.max(axis=0)
    ideal = np.asarray(ideal, dtype=float)
    nadir = np.asarray(nadir, dtype=float)
    extent = nadir - ideal
    extent = np.where(extent > 0, extent, 1.0)
    return (pts - ideal) / extent


def front_scale(points: np.ndarray) -> np.ndarray:
    """``nadir - ideal`` of the nondominated ``points``: the front's extent in each objective.

    Dividing a difference of objective vectors by it measures it in normalised objectives
    (see :func:`normalise`). An objective without extent (fewer than two front points, or
    all equal) gets 1, so the result is always positive and finite for finite input.

    >>> front_scale(np.array([[0.0, 10.0], [2.0, 0.0], [3.0, 20.0]]))
    array([ 2., 10.])
    """
    pts = _as_points(points)
    front = pts[nondominated_mask(pts)]
    if len(front) < 2:
        return np.ones(2)
    extent = front.max(axis=0) - front.min(axis=0)
    return np.where(extent > 0, extent, 1.0)


def hull_segments(vertices: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normal weights and normalised lengths of the segments between consecutive ``vertices``.

    ``vertices`` are supported points sorted by f1 (as :func:`supported_points` returns
    them); segment ``i`` joins ``vertices[i]`` and ``vertices[i + 1]``. Its weight is
    :func:`normal_weight` in raw objectives (the ``λ`` a trial trains with), its length
    is measured in objectives divided by ``scale`` (:func:`front_scale`), so that f1 and
    f2 count alike whatever their units. Fewer than two vertices: two empty arrays.

    >>> weights, lengths = hull_segments(np.array([[0.0, 4.0], [1.0, 1.0], [3.0, 0.0]]), np.ones(2))
    >>> weights.tolist(), lengths.round(3).tolist()
    ([0.25, 0.666...], [3.162, 2.236])
    """
    pts = _as_points(vertices)
    if len(pts) < 2:
        return np.zeros(0), np.zeros(0)
    weights = np.array([normal_weight(a, b) for a, b in itertools.pairwise(pts)])
    steps = np.diff(pts, axis=0) / np.asarray(scale, dtype=float)
    return weights, np.hypot(steps[:, 0], steps[:, 1])


def weights_tie(
    a: np.ndarray, b: np.ndarray, weights: np.ndarray, scale: np.ndarray, tolerance: float
) -> np.ndarray:
    """Which ``weights`` score points A and B within ``tolerance`` of each other.

    For each ``λ'`` in ``weights``: ``|F_λ'(A) - F_λ'(B)| <= tolerance`` measured along the
    unit normal of ``λ'`` in normalised objectives (objectives divided by ``scale``).
    This is how the dichotomic search decides that a trial *probed* segment AB: the
    segment's own normal weight ties A and B exactly, a weight close to it nearly, and
    every weight ties the ends of a segment shorter than ``tolerance``. A weight that
    ties A and B cannot find a point more than ``tolerance`` below AB that a weighted sum
    prefers to both, so once it has been trained, AB is an edge of the front up to noise.

    >>> a, b = np.array([0.0, 1.0]), np.array([1.0, 0.0])
    >>> weights_tie(a, b, np.array([0.5, 0.505, 0.9]), np.ones(2), 0.02).tolist()
    [True, True, False]
    """
    lams = np.asarray(weights, dtype=float).reshape(-1)
    scale = np.asarray(scale, dtype=float)
    gap = np.abs((1.0 - lams) * (a[0] - b[0]) + lams * (a[1] - b[1]))
    norm = np.hypot((1.0 - lams) * scale[0], lams * scale[1])
    return gap <= tolerance * norm


def normal_weight(a: np.ndarray, b: np.ndarray) -> float:
    """Weight ``λ`` whose weighted sum ``(1 - λ) f1 + λ f2`` is constant on segment AB.

    ``λ_AB = (b1 - a1) / ((b1 - a1) + (a2 - b2))`` for two mutually nondominated
    points with ``a1 < b1`` and ``a2 > b2`` (the order of ``a`` and ``b`` is fixed
    here if given the other way round). Training with ``λ_AB`` is the dichotomic
    search step: its result is the front point farthest below AB, if there is one.
    The result is in the open interval ``(0, 1)``.
    """
    a1, a2 = (float(v) for v in a)
    b1, b2 = (float(v) for v in b)
    if a1 > b1:
        a1, a2, b1, b2 = b1, b2, a1, a2
    d1, d2 = b1 - a1, a2 - b2
    if not (d1 > 0 and d2 > 0) or not np.isfinite(d1 + d2):
        raise ValueError(
            "normal_weight needs two mutually nondominated finite points, "
            f"got {a!r}, {b!r}"
        )
    return d1 / (d1 + d2)


def predict(vertices: np.ndarray, lam: float) -> np.ndarray:
    """The point of the polyline through ``vertices`` that the weighted sum with ``lam`` picks.

    ``vertices`` are supported points sorted by f1 (a convex front). The minimiser of
    ``(1 - λ) f1 + λ f2`` over the polyline is one of its vertices, or, when ``λ`` is a
    segment's normal weight, the whole segment: then its midpoint. This is what the
    front found so far *predicts* a trial with ``λ`` returns; the sampler uses it as a
    fantasy result for running trials (a point on the front adds no vertex and closes
    the segment it lies on).

    >>> predict(np.array([[0.0, 4.0], [1.0, 1.0], [3.0, 0.0]]), 0.25).tolist()
    [0.5, 2.5]
    >>> predict(np.array([[0.0, 4.0], [1.0, 1.0], [3.0, 0.0]]), 0.9).tolist()
    [3.0, 0.0]
    """
    pts = _as_points(vertices)
    if len(pts) == 0:
        raise ValueError("predict needs at least one vertex")
    scores = (1.0 - lam) * pts[:, 0] + lam * pts[:, 1]
    best = np.flatnonzero(scores <= scores.min() + 1e-12 * max(1.0, abs(float(scores.min()))))
    return pts[best].mean(axis=0) if len(best) > 1 else pts[best[0]].copy()


def _lower_hull(norm: np.ndarray, order: np.ndarray) -> list[int]:
    """Lower-left hull vertices of a front sorted by f1 (Andrew's monotone chain)."""
    hull: list[int] = []
    for i in order:
        while len(hull) >= 2:
            o, a = norm[hull[-2]], norm[hull[-1]]
            p = norm[i]
            cross = (a[0] - o[0]) * (p[1] - o[1]) - (a[1] - o[1]) * (p[0] - o[0])
            if cross <= _EPS:  # `a` is above or on the chord o-p: not a vertex
                hull.pop()
            else:
                break
        hull.append(int(i))
    return hull


def _depth_below(norm: np.ndarray, a: int, b: int, c: np.ndarray) -> np.ndarray:
    """Perpendicular distance of points ``c`` below the line through ``a`` and ``b``."""
    pa, pb = norm[a], norm[b]
    n = np.array([pa[1] - pb[1], pb[0] - pa[0]])  # normal pointing up-right (both > 0)
    return (n @ pa - norm[c] @ n) / np.linalg.norm(n)


def supported_points(points: np.ndarray, tolerance: float = 0.0) -> np.ndarray:
    """Indices of the supported points (hull vertices), sorted by f1 ascending.

    With ``tolerance = 0`` these are exactly the vertices of the lower-left convex
    hull of the nondominated set. With ``tolerance > 0`` the hull is rebuilt top-down
    the way dichotomic search builds it: start from the two extreme points, split a
    segment at the point farthest below it only if that point is more than
    ``tolerance`` below (perpendicular distance in normalised objectives, i.e. as a
    fraction of the front's extent), and recurse. The result is a subset of the exact
    vertices, still convex, and every point lies at most ``tolerance`` below it:
    noise-level dents do not become vertices.
    """
    pts = _as_points(points)
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    nd = np.flatnonzero(nondominated_mask(pts))
    if len(nd) <= 2:
        return nd[np.argsort(pts[nd, 0], kind="stable")]
    norm = normalise(pts)
    order = nd[np.argsort(pts[nd, 0], kind="stable")]
    hull = _lower_hull(norm, order)
    if tolerance == 0 or len(hull) <= 2:
        return np.asarray(hull, dtype=int)
    keep = {0, len(hull) - 1}
    stack = [(0, len(hull) - 1)]
    while stack:
        i, j = stack.pop()
        if j - i < 2:
            continue
        inner = np.asarray(hull[i + 1 : j])
        depth = _depth_below(norm, hull[i], hull[j], inner)
        k = int(np.argmax(depth))
        if depth[k] > tolerance:
            m = i + 1 + k
            keep.add(m)
            stack.extend([(i, m), (m, j)])
    return np.asarray([hull[i] for i in sorted(keep)], dtype=int)


def collapsed_mask(points: np.ndarray, floor: float, tolerance: float = 0.0) -> np.ndarray:
    """Boolean mask of the *collapsed* rows of ``points``: the end of the front reached by collapse.

    A row is collapsed when its f2 is at or below ``floor`` (an l1 norm of 0: no weights
    left), or when its f1 is no better than such a row's by more than ``tolerance`` times
    the front's f1 extent (:func:`front_scale`): a network as bad as an empty one, at
    chance level. Without a row at the floor nothing is collapsed.

    >>> collapsed_mask(np.array([[0.1, 800.0], [1.0, 20.0], [2.29, 0.4], [2.3, 0.0]]), 0.0, 0.02).tolist()
    [False, False, True, True]
    """
    pts = _as_points(points)
    finite = np.all(np.isfinite(pts), axis=1)
    dead = finite & (pts[:, 1] <= floor)
    if not dead.any():
        return dead
    worst = float(pts[dead, 0].min()) - tolerance * float(front_scale(pts[finite])[0])
    return dead | (finite & (pts[:, 0] >= worst))


def knee_index(
    points: np.ndarray,
    criterion: Literal["angle", "distance"] = "angle",
    tolerance: float = 0.0,
    floor: float | None = None,
) -> int | None:
    """Index (into ``points``) of the front's knee; ``None`` without finite points.

    The knee is chosen among the supported points (see :func:`supported_points`,
    ``tolerance`` is passed on) in normalised objectives:

    * ``"angle"`` (the paper's): the point with the widest normal cone, i.e. the
      largest interval ``λ(i-1, i) .. λ(i, i+1)`` of normalised weights for which it
      is the weighted-sum optimum: the largest change of slope.
    * ``"distance"``: the point farthest below the straight line through the two
      extreme points (Das 1999; "Kneedle").

    The two extreme points are never knees when there are three or more supported
    points: their cones are cut off artificially by ``λ = 0`` / ``λ = 1`` and their
    distance to the extremes' line is zero. With one or two supported points there is
    no knee in this sense; the first (smallest f1, most accurate) point is returned so
    that callers always get a point to refine around. Ties go to the smaller f1.

    ``floor`` (e.g. 0 for an l1 norm): collapsed points (:func:`collapsed_mask`, networks
    with nothing left or no better than that) neither set the nadir nor are knees: the
    knee is chosen among the other supported points, normalised by their own ideal and
    nadir (see docs/benchmarks.md §1 for why). While fewer than three supported points are
    alive (no interior one to be a knee) the collapsed ones count as usual.
    """
    if criterion not in ("angle", "distance"):
        raise ValueError(f"criterion must be 'angle' or 'distance', got {criterion!r}")
    pts = _as_points(points)
    sup = supported_points(pts, tolerance)
    live = np.ones(len(pts), dtype=bool) if floor is None else ~collapsed_mask(pts, floor, tolerance)
    if floor is not None and np.count_nonzero(live[sup]) >= 3:
        sup = sup[live[sup]]  # the hull's vertices up to the collapse, normalised by themselves below
    else:
        live[:] = True
    if len(sup) == 0:
        return None
    if len(sup) <= 2:
        return int(sup[0])
    front = pts[live][nondominated_mask(pts[live])]
    norm = normalise(pts, front.min(axis=0), front.max(axis=0))[sup]
    if criterion == "angle":
        weights = [normal_weight(norm[i], norm[i + 1]) for i in range(len(sup) - 1)]
        widths = np.diff(weights)  # cone width of interior point i + 1
        return int(sup[1 + int(np.argmax(widths))])
    depth = _depth_below(norm, 0, len(sup) - 1, np.arange(1, len(sup) - 1))
    return int(sup[1 + int(np.argmax(depth))])


def _hypervolume_2d(front: np.ndarray, reference: np.ndarray) -> float:
    """Plain 2-D sweep: sort by f1, add each point's rectangle below the last f2."""
    front = front[np.lexsort((front[:, 1], front[:, 0]))]
    hv, last_f2 = 0.0, float(reference[1])
    for f1, f2 in front:
        if f2 < last_f2:
            hv += (reference[0] - f1) * (last_f2 - f2)
            last_f2 = f2
    return float(hv)


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Area dominated by ``points`` and bounded by ``reference`` (both minimised).

    Points that do not dominate the reference in both objectives (or are not
    finite) add nothing and are dropped first. Returns 0.0 when nothing is left.
    """
    pts = _as_points(points)
    ref = np.asarray(reference, dtype=float).reshape(-1)
    if ref.shape != (2,) or not np.all(np.isfinite(ref)):
        raise ValueError(f"reference must be a finite 2-vector, got {reference!r}")
    pts = pts[np.all(np.isfinite(pts), axis=1) & np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    # Optuna's exact computation (optuna._hypervolume.compute_hypervolume(loss_vals,
    # reference_point, assume_pareto=False) in Optuna 4.x/5.0) fits: it is the same
    # minimisation convention and uses an O(N log N) 2-D sweep. It is private API and
    # raises on points outside the reference box, hence the filtering above and the
    # fallback to our own sweep should the import ever move.
    try:
        from optuna._hypervolume import compute_hypervolume
    except ImportError:  # pragma: no cover - depends on Optuna internals
        return _hypervolume_2d(pts, ref)
    return float(compute_hypervolume(pts, ref))
