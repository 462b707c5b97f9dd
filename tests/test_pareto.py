"""Tests for motune.pareto: checked against brute force on random and gridded points."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from motune.pareto import (
    _hypervolume_2d,
    collapsed_mask,
    front_scale,
    hull_segments,
    hypervolume,
    knee_index,
    nondominated_mask,
    normal_weight,
    normalise,
    supported_points,
    weights_tie,
)

# A convex polyline with a sharp knee at (0.15, 200) (index 2), scaled like
# (cross-entropy, l1 norm).
POLY = np.array([(0.05, 3000.0), (0.1, 800.0), (0.15, 200.0), (0.4, 60.0), (2.3, 0.0)])

point_sets = st.lists(
    st.tuples(st.integers(0, 12), st.integers(0, 12)), min_size=0, max_size=30
).map(lambda rows: np.array(rows, dtype=float).reshape(-1, 2))


def brute_nondominated(p: np.ndarray) -> np.ndarray:
    """Point i is kept iff nothing dominates it and no earlier row is identical."""
    keep = np.zeros(len(p), dtype=bool)
    for i in range(len(p)):
        dominated = any(
            np.all(p[j] <= p[i]) and np.any(p[j] < p[i])
            for j in range(len(p))
            if j != i
        )
        duplicate = any(np.all(p[j] == p[i]) for j in range(i))
        keep[i] = not dominated and not duplicate
    return keep


def brute_hull_vertices(p: np.ndarray) -> set[int]:
    """Nondominated points strictly below every chord of two others around them."""
    nd = np.flatnonzero(brute_nondominated(p))
    vertices = set()
    for i in nd:
        on_or_above = False
        for j in nd:
            for k in nd:
                if p[j, 0] < p[i, 0] < p[k, 0]:
                    # cross >= 0: i is on or above the chord j-k (exact for integers)
                    cross = (p[k, 0] - p[j, 0]) * (p[i, 1] - p[j, 1]) - (
                        p[k, 1] - p[j, 1]
                    ) * (p[i, 0] - p[j, 0])
                    on_or_above |= cross >= 0
        if not on_or_above:
            vertices.add(int(i))
    return vertices


@settings(max_examples=150, deadline=None)
@given(point_sets)
def test_nondominated_mask_matches_brute_force(p: np.ndarray) -> None:
    assert np.array_equal(nondominated_mask(p), brute_nondominated(p))


@settings(max_examples=150, deadline=None)
@given(point_sets)
def test_supported_points_match_brute_force_hull(p: np.ndarray) -> None:
    sup = supported_points(p)
    assert set(sup.tolist()) == brute_hull_vertices(p)
    assert np.all(np.diff(p[sup, 0]) > 0)  # sorted by f1, f2 then strictly decreasing
    assert np.all(np.diff(p[sup, 1]) < 0)


def test_supported_points_random_floats_convex() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = rng.random((40, 2))
        sup = supported_points(p)
        assert set(sup.tolist()) == brute_hull_vertices(p)
        slopes = np.diff(p[sup, 1]) / np.diff(p[sup, 0])
        assert np.all(np.diff(slopes) > 0)  # strictly convex chain


def test_supported_points_with_tolerance_stay_within_tolerance() -> None:
    rng = np.random.default_rng(1)
    x = np.sort(rng.random(60))
    p = np.column_stack([x, (1 - x) ** 3]) + rng.normal(0, 0.01, (60, 2))
    exact = set(supported_points(p).tolist())
    for tol in (0.005, 0.02, 0.1):
        sup = supported_points(p, tolerance=tol)
        assert set(sup.tolist()) <= exact
        nd = np.flatnonzero(nondominated_mask(p))
        assert sup[0] == nd[np.argmin(p[nd, 0])] and sup[-1] == nd[np.argmin(p[nd, 1])]
        # every nondominated point is at most `tol` below the chain (normalised units)
        q = normalise(p)
        for i in nd:
            k = np.searchsorted(q[sup, 0], q[i, 0])
            if 0 < k < len(sup):
                a, b = q[sup[k - 1]], q[sup[k]]
                n = np.array([a[1] - b[1], b[0] - a[0]])
                assert (n @ a - n @ q[i]) / np.linalg.norm(n) <= tol + 1e-12
    assert len(supported_points(p, tolerance=0.1)) < len(exact)


def test_supported_points_small_inputs() -> None:
    assert supported_points(np.empty((0, 2))).tolist() == []
    assert supported_points([[1.0, 1.0]]).tolist() == [0]
    assert supported_points([[2.0, 0.0], [0.0, 2.0], [3.0, 3.0]]).tolist() == [1, 0]
    # collinear middle point is weakly supported, not a vertex
    assert supported_points([[0.0, 2.0], [1.0, 1.0], [2.0, 0.0]]).tolist() == [0, 2]
    with pytest.raises(ValueError):
        supported_points(np.zeros((3, 3)))


def test_nondominated_mask_ignores_non_finite_and_keeps_first_duplicate() -> None:
    p = np.array([[1.0, 1.0], [np.nan, 0.0], [1.0, 1.0], [0.0, np.inf], [0.5, 2.0]])
    assert nondominated_mask(p).tolist() == [True, False, False, False, True]


def test_normal_weight_is_normal_to_segment() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        a = np.array([rng.random(), 1 + rng.random() * 1000])
        b = np.array([a[0] + rng.random() * 3 + 1e-3, rng.random()])
        lam = normal_weight(a, b)
        assert 0 < lam < 1
        fa, fb = (1 - lam) * a[0] + lam * a[1], (1 - lam) * b[0] + lam * b[1]
        assert fa == pytest.approx(fb, rel=1e-9, abs=1e-12)
        assert normal_weight(b, a) == lam
    assert normal_weight((0.05, 3000.0), (2.3, 0.0)) == pytest.approx(2.25 / 3002.25)
    with pytest.raises(ValueError):
        normal_weight((0.0, 0.0), (1.0, 1.0))  # b dominated by a
    with pytest.raises(ValueError):
        normal_weight((0.0, 1.0), (0.0, 0.0))


def test_normalise() -> None:
    q = normalise(POLY)
    assert q.min(axis=0) == pytest.approx([0, 0]) and q.max(axis=0) == pytest.approx(
        [1, 1]
    )
    assert normalise([[1.0, 2.0]], ideal=[0.0, 0.0], nadir=[2.0, 4.0]).tolist() == [
        [0.5, 0.5]
    ]
    assert np.all(np.isfinite(normalise([[1.0, 1.0], [1.0, 1.0]])))


def test_knee_of_polyline() -> None:
    assert knee_index(POLY) == 2
    assert knee_index(POLY, "distance") == 2
    shuffled = POLY[[3, 0, 4, 2, 1]]
    assert knee_index(shuffled) == 3  # index into the input, whatever the order
    dominated = np.vstack([POLY, [[1.0, 1000.0], [0.15, 200.0]]])
    assert knee_index(dominated) == 2


def test_knee_small_and_invalid() -> None:
    assert knee_index(np.empty((0, 2))) is None
    assert knee_index([[1.0, 1.0]]) == 0
    assert knee_index([[2.0, 0.0], [0.0, 2.0]]) == 1  # the smaller f1
    with pytest.raises(ValueError):
        knee_index(POLY, "curvature")  # type: ignore[arg-type]


def test_knee_criteria_can_differ() -> None:
    # angle: the widest cone belongs to the sharp corner at index 1; distance: the
    # point farthest from the extremes' line is index 2.
    p = np.array([(0.0, 1.0), (0.01, 0.6), (0.3, 0.25), (1.0, 0.0)])
    assert knee_index(p, "angle") == 1
    assert knee_index(p, "distance") == 2


@settings(max_examples=60, deadline=None)
@given(
    st.integers(0, 10_000),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 1e3),
    st.sampled_from(["angle", "distance"]),
)
def test_knee_invariant_to_objective_scaling(
    seed: int, s1: float, s2: float, crit: str
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.random(25)
    p = np.column_stack([x, (1 - x) ** 2 + 0.05 * rng.random(25)])
    scaled = p * [s1, s2] + [3.0, -7.0]
    assert knee_index(p, crit) == knee_index(scaled, crit)


@settings(max_examples=100, deadline=None)
@given(point_sets)
def test_hypervolume_matches_cell_count(p: np.ndarray) -> None:
    ref = np.array([12.0, 12.0])
    # unit cell [x, x+1] x [y, y+1] is dominated iff some point has p <= (x, y)
    xs, ys = np.meshgrid(np.arange(12), np.arange(12), indexing="ij")
    cells = np.zeros_like(xs, dtype=bool)
    for q in p:
        cells |= (q[0] <= xs) & (q[1] <= ys)
    assert hypervolume(p, ref) == pytest.approx(cells.sum())
    assert _hypervolume_2d(p[np.all(p < ref, axis=1)], ref) == pytest.approx(
        cells.sum()
    )


def test_hypervolume_monte_carlo() -> None:
    rng = np.random.default_rng(3)
    x = rng.random(30)
    p = np.column_stack([x, 1 / (x + 0.1)])
    ref = np.array([1.2, 12.0])
    u = rng.random((400_000, 2)) * [
        ref[0] - p[:, 0].min(),
        ref[1] - p[:, 1].min(),
    ] + p.min(axis=0)
    box = np.prod(ref - p.min(axis=0))
    dominated = np.zeros(len(u), dtype=bool)
    for q in p:
        dominated |= np.all(u >= q, axis=1)
    estimate = box * dominated.mean()
    assert hypervolume(p, ref) == pytest.approx(estimate, rel=0.01)


def test_hypervolume_edge_cases() -> None:
    assert hypervolume(np.empty((0, 2)), [1.0, 1.0]) == 0.0
    assert (
        hypervolume([[2.0, 0.0], [np.nan, 0.0]], [1.0, 1.0]) == 0.0
    )  # outside: dropped
    assert hypervolume([[0.0, 0.0], [0.5, 2.0]], [1.0, 1.0]) == pytest.approx(1.0)
    assert hypervolume(POLY, [3.0, 4000.0]) == pytest.approx(
        _hypervolume_2d(POLY, np.array([3.0, 4000.0]))
    )
    with pytest.raises(ValueError):
        hypervolume(POLY, [1.0, np.inf])


# --------------------------------------------------------- geometry the sampler reads


def test_front_scale_is_the_nondominated_extent() -> None:
    assert front_scale(POLY).tolist() == [2.25, 3000.0]
    dominated = np.vstack([POLY, [[5.0, 9000.0]]])  # a dominated point does not widen it
    assert front_scale(dominated).tolist() == [2.25, 3000.0]
    assert front_scale(np.zeros((0, 2))).tolist() == [1.0, 1.0]
    assert front_scale(np.array([[1.0, 2.0], [1.0, 2.0]])).tolist() == [1.0, 1.0]


def test_hull_segments_weights_and_lengths() -> None:
    scale = front_scale(POLY)
    weights, lengths = hull_segments(POLY, scale)
    assert weights.tolist() == [normal_weight(a, b) for a, b in itertools.pairwise(POLY)]
    assert np.all(np.diff(weights) > 0)  # convex: the normal weight grows along the front
    step = (POLY[1] - POLY[0]) / scale
    assert lengths[0] == pytest.approx(np.hypot(*step))
    assert [len(x) for x in hull_segments(POLY[:1], scale)] == [0, 0]


@settings(max_examples=100, deadline=None)
@given(
    st.floats(0.01, 0.99),
    st.floats(0.0, 1.0),
    st.floats(1e-3, 1e3),
    st.floats(1e-3, 1e3),
)
def test_weights_tie_matches_the_weighted_sum(lam: float, tol: float, s1: float, s2: float) -> None:
    """λ' ties A and B iff their weighted sums differ by at most tol along λ''s unit normal."""
    scale = np.array([s1, s2])
    a, b = np.array([0.0, s2]), np.array([s1, 0.0])
    normal = normal_weight(a, b)
    assert weights_tie(a, b, np.array([normal]), scale, 1e-9).tolist() == [True]  # up to rounding
    f = (1 - lam) * (a - b)[0] + lam * (a - b)[1]
    length = np.hypot((1 - lam) * s1, lam * s2)
    expected = abs(f) <= tol * length
    assert weights_tie(a, b, np.array([lam]), scale, tol).tolist() == [expected]


def test_collapsed_points_do_not_set_the_knee_nadir() -> None:
    """The digits sweep's shape: a live front, then a cliff to networks with nothing left (f1 = ln 10, f2 = 0).

    With the collapsed end in the normalisation the live front is squeezed near f1 = 0 and
    the widest cone sits at the last network before the cliff; with ``floor`` it does not.
    """
    live = np.array([[0.14, 820.0], [0.18, 307.0], [0.26, 195.0], [0.45, 94.0], [1.04, 24.0]])
    dead = np.array([[2.3028, 0.01], [2.3027, 0.0], [2.3027, 0.0]])
    points = np.vstack([live, dead])
    assert collapsed_mask(points, 0.0, 0.02).tolist() == [False] * 5 + [True] * 3
    assert knee_index(points, "angle", 0.02) == 3  # the last network before the collapse but one
    assert knee_index(points, "angle", 0.02, floor=0.0) == 1
    assert knee_index(points, "angle", 0.02, floor=0.0) == knee_index(live, "angle", 0.02)
    # Fewer than three live supported points: nothing interior to be a knee, the collapsed end counts.
    assert knee_index(points[[0, 3, 6]], "angle", floor=0.0) == knee_index(points[[0, 3, 6]], "angle") == 1
    assert collapsed_mask(live, 0.0).tolist() == [False] * 5  # no point at the floor: nothing collapsed


def test_motune_studies_keep_collapsed_networks_out_of_the_knee() -> None:
    """KneeSampler(collapsed_nadir=False), as motune.study.make_sampler builds it, measures the knee without them."""
    from optuna.trial import TrialState

    from motune.config import StudyConfig
    from motune.sampler import SearchRules, TrialRecord, search_front
    from motune.study import make_sampler

    points = [(0.14, 820.0), (0.18, 307.0), (0.26, 195.0), (0.45, 94.0), (1.04, 24.0), (2.3027, 0.0)]
    records = [TrialRecord(i, 1e-3 * (i + 1), TrialState.COMPLETE, values=v) for i, v in enumerate(points)]
    assert search_front(records, SearchRules()).knee == 3
    assert search_front(records, SearchRules(collapsed_nadir=False)).knee == 1
    assert make_sampler(StudyConfig())._rules.collapsed_nadir is False
