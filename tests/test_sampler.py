"""Tests for KneeSampler on synthetic fronts with known weighted-sum optima.

Each synthetic "training run" returns the exact minimiser of (1 - λ) f1 + λ f2 over a
front scaled like the real problem (f1 ~ cross-entropy in [0.05, 2.3], f2 ~ an l1
norm in [0, 3000]), so the useful weights are small (1e-5 .. 1e-2) and the knee is
known in closed form (or by a dense grid).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.study import StudyDirection
from optuna.trial import TrialState

from motune.sampler import (
    EXTRA,
    FRONT,
    FULL,
    PATH,
    KneeSampler,
    SearchRules,
    TrialRecord,
    arc_point,
    bracket,
    choose_weight,
    guesses,
    is_confirmed,
    plan_weight,
    read_trials,
    replay,
    search_front,
    segments,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)

F1_LO, F1_SPAN, F2_SPAN = 0.05, 2.25, 3000.0
Front = Callable[[float], np.ndarray]


def polyline(vertices: list[tuple[float, float]]) -> Front:
    """Weighted-sum optimum over a convex polyline: always one of its vertices."""
    v = np.asarray(vertices, dtype=float)
    return lambda lam: v[np.argmin((1 - lam) * v[:, 0] + lam * v[:, 1])]


def dense(f1: np.ndarray, f2: np.ndarray) -> Front:
    """Weighted-sum optimum over a densely sampled front (ties: any of them)."""
    return lambda lam: np.array(
        [f1[i := int(np.argmin((1 - lam) * f1 + lam * f2))], f2[i]]
    )


def to_raw(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return F1_LO + F1_SPAN * x, F2_SPAN * y


def to_norm(point: np.ndarray) -> np.ndarray:
    return np.array([(point[0] - F1_LO) / F1_SPAN, point[1] / F2_SPAN])


# (1) sharp: convex polyline with a kink at (0.15, 200); the widest normal cone and
# the largest distance to the extremes' line both pick it (see test_pareto).
SHARP_VERTICES = [(0.05, 3000.0), (0.1, 800.0), (0.15, 200.0), (0.4, 60.0), (2.3, 0.0)]
SHARP = polyline(SHARP_VERTICES)
SHARP_KNEE = np.array([0.15, 200.0])

# (2) smooth, asymmetric: normalised y = (1 - x^2) / (1 + 30 x); finite slope at
# y = 0, so λ = 0.1 reaches that end. Knee by curvature / distance from a dense grid.
_X = np.linspace(0.0, 1.0, 200_001)
_Y = (1 - _X**2) / (1 + 30 * _X)
SMOOTH = dense(*to_raw(_X, _Y))
_DY = np.gradient(_Y, _X)
SMOOTH_KNEE_CURVATURE = np.array(
    [_X[i := np.argmax(np.abs(np.gradient(_DY, _X)) / (1 + _DY**2) ** 1.5)], _Y[i]]
)
SMOOTH_KNEE_DISTANCE = np.array([_X[i := np.argmin(_X + _Y)], _Y[i]])

# (3) flat: a steep piece, then one straight stretch (0.08, 600) -> (0.8, 100) sampled
# by 400 collinear points, then a gentle piece. Knee at (0.08, 600) by both criteria.
_FLAT_V = [(0.05, 3000.0), (0.08, 600.0), (0.8, 100.0), (2.3, 0.0)]
_FLAT_PTS = np.concatenate(
    [
        np.asarray(a)
        + np.linspace(0, 1, 400)[:, None] * (np.asarray(b) - np.asarray(a))
        for a, b in itertools.pairwise(_FLAT_V)
    ]
)
FLAT = dense(_FLAT_PTS[:, 0], _FLAT_PTS[:, 1])
FLAT_KNEE = np.array([0.08, 600.0])


def noisy(front: Front, sigma: float, seed: int):
    """Objective on ``front`` plus Gaussian noise of ``sigma`` times each range."""

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        rng = np.random.default_rng([seed, trial.number])
        v = front(lam) + rng.normal(0.0, sigma, 2) * [F1_SPAN, F2_SPAN]
        return float(v[0]), float(v[1])

    return objective


def make_objective(
    front: Front, *, sign: tuple[float, float] = (1.0, 1.0), extra=False
):
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        if extra:
            trial.suggest_float("x", -1.0, 1.0)
        v = front(lam)
        return float(sign[0] * v[0]), float(sign[1] * v[1])

    return objective


def new_study(sampler: KneeSampler, **kwargs) -> optuna.Study:
    kwargs.setdefault("directions", ["minimize", "minimize"])
    return optuna.create_study(sampler=sampler, **kwargs)


def run_until_converged(study: optuna.Study, objective, max_trials: int) -> int:
    sampler = study.sampler
    assert isinstance(sampler, KneeSampler)
    for n in range(1, max_trials + 1):
        study.optimize(objective, n_trials=1)
        if sampler.is_converged(study):
            return n
    pytest.fail(f"not converged after {max_trials} trials")


def front_lambdas(study: optuna.Study) -> list[float]:
    return [
        t.params["l1_weight"]
        for t in study.get_trials(deepcopy=False)
        if "l1_weight" in t.params and KneeSampler.fidelity(t) == "front"
    ]


def assert_distinct(lams: list[float], rtol: float = 1e-3) -> None:
    s = sorted(lams)
    for a, b in itertools.pairwise(s):
        assert b - a > rtol * max(abs(a), abs(b)), f"repeated weight {a} ~ {b}"


def assert_keeps_going(study: optuna.Study, objective, n: int = 12) -> None:
    """After convergence, more trials get finite, new weights in [0, 1]."""
    before = len(study.trials)
    study.optimize(objective, n_trials=n)
    new = study.trials[before:]
    assert len(new) == n and all(t.state == TrialState.COMPLETE for t in new)
    for t in new:
        lam = t.params["l1_weight"]
        assert math.isfinite(lam) and 0.0 <= lam <= 1.0
    assert_distinct(front_lambdas(study))


# --------------------------------------------------------------------- knee finding

# Trials to convergence include the one full-fidelity retrain of the knee.
CASES = {
    "sharp": (SHARP, 8),
    "smooth": (SMOOTH, 11),
    "flat": (FLAT, 8),
}


@pytest.mark.parametrize("criterion", ["angle", "distance"])
@pytest.mark.parametrize("case", list(CASES))
def test_finds_knee(case: str, criterion: str) -> None:
    front, max_trials = CASES[case]
    sampler = KneeSampler(knee=criterion, seed=0)
    study = new_study(sampler)
    objective = make_objective(front)
    n = run_until_converged(study, objective, max_trials)

    knee = sampler.knee_trial(study)
    assert knee is not None and KneeSampler.fidelity(knee) == "full"
    point = np.asarray(knee.values)
    if case == "sharp":
        assert point == pytest.approx(SHARP_KNEE)
    elif case == "flat":
        assert point == pytest.approx(FLAT_KNEE)
    else:
        # The first dichotomic point from the extremes is exactly the point farthest
        # from their line; the confirmed knee stays there for both criteria, within
        # 0.01 (normalised) of the curvature maximum and the grid step of the
        # distance knee.
        q = to_norm(point)
        assert np.hypot(*(q - SMOOTH_KNEE_DISTANCE)) < 1e-3
        assert np.hypot(*(q - SMOOTH_KNEE_CURVATURE)) < 0.01
    fulls = [t for t in study.trials if KneeSampler.fidelity(t) == "full"]
    assert len(fulls) == 1 and fulls[0].number == n - 1
    assert_distinct(front_lambdas(study))
    assert_keeps_going(study, objective)
    assert len([t for t in study.trials if KneeSampler.fidelity(t) == "full"]) == 1


def test_sharp_knee_trial_sequence() -> None:
    """The dichotomic search on the sharp front, step by step."""
    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    n = run_until_converged(study, make_objective(SHARP), 8)
    lams = [t.params["l1_weight"] for t in study.trials]
    assert lams[:2] == [0.0, 0.1]
    assert lams[2] == pytest.approx(2.25 / (2.25 + 3000.0))  # normal of the extremes
    assert [tuple(t.values) for t in study.trials][2] == (0.15, 200.0)
    assert n == 7  # 2 start + 4 dichotomic + 1 full
    sup = [tuple(t.values) for t in sampler.supported_trials(study)]
    assert (0.15, 200.0) in sup and sup[0] == (0.05, 3000.0) and sup[-1] == (2.3, 0.0)


def test_noisy_front() -> None:
    """σ = 2 % of each range; tolerance raised to the noise level (2.5 σ).

    Over 10 noise seeds every run converges within 15 trials and in at least 8 the
    knee's weight trains the true knee (0.15, 200) when run without noise.
    """
    good = 0
    for seed in range(10):
        objective = noisy(SHARP, 0.02, seed)
        sampler = KneeSampler(seed=0, tolerance=0.05)
        study = new_study(sampler)
        run_until_converged(study, objective, 15)
        lam = sampler.knee_trial(study).params["l1_weight"]
        good += bool(np.allclose(SHARP(lam), SHARP_KNEE))
        if seed < 3:
            assert_keeps_going(study, objective, n=8)
        assert_distinct(front_lambdas(study))
    assert good >= 8


def test_without_full_fidelity() -> None:
    sampler = KneeSampler(full_fidelity=False, seed=0)
    study = new_study(sampler)
    n = run_until_converged(study, make_objective(SHARP), 8)
    assert n == 6
    assert all(KneeSampler.fidelity(t) == "front" for t in study.trials)
    assert sampler.knee_trial(study).values == [0.15, 200.0]


def test_maximize_direction_gives_same_search() -> None:
    ref = new_study(KneeSampler(seed=0))
    ref.optimize(make_objective(SHARP), n_trials=10)
    sampler = KneeSampler(seed=0)
    study = new_study(sampler, directions=["maximize", "minimize"])
    study.optimize(make_objective(SHARP, sign=(-1.0, 1.0)), n_trials=10)
    assert [t.params for t in study.trials] == [t.params for t in ref.trials]
    assert sampler.knee_trial(study).values == [-0.15, 200.0]


# ----------------------------------------------------------------- optuna protocol


@pytest.mark.parametrize("directions", [["minimize"], ["minimize"] * 3])
def test_wrong_number_of_objectives_raises(directions: list[str]) -> None:
    study = optuna.create_study(directions=directions, sampler=KneeSampler())

    def objective(trial: optuna.Trial):
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        return lam if len(directions) == 1 else [lam] * len(directions)

    with pytest.raises(ValueError, match="exactly two objectives"):
        study.optimize(objective, n_trials=1)
    assert study.trials[0].state == TrialState.FAIL  # failed cleanly, not left running
    with pytest.raises(ValueError, match="exactly two objectives"):
        KneeSampler().is_converged(study)


def test_other_parameters_delegated_and_seed_reproducible() -> None:
    def run(seed: int) -> list[dict]:
        study = new_study(KneeSampler(seed=seed))
        study.optimize(make_objective(SHARP, extra=True), n_trials=8)
        return [t.params for t in study.trials]

    a, b, c = run(3), run(3), run(4)
    assert a == b
    xs = [p["x"] for p in a]
    assert len(set(xs)) == len(xs) and all(-1 <= x <= 1 for x in xs)
    assert [p["l1_weight"] for p in a] == [p["l1_weight"] for p in c]  # data-driven
    assert [p["x"] for p in c] != xs


def test_custom_independent_sampler() -> None:
    inner = optuna.samplers.TPESampler(seed=0)
    sampler = KneeSampler(independent_sampler=inner)
    study = new_study(sampler)
    study.optimize(make_objective(SHARP, extra=True), n_trials=4)
    assert all(-1 <= t.params["x"] <= 1 for t in study.trials)


def test_pickle_round_trip() -> None:
    sampler = KneeSampler(seed=1, knee="distance", start_weights=(0.0, 0.05))
    clone = pickle.loads(pickle.dumps(sampler))
    lams = []
    for s in (sampler, clone):
        study = new_study(s)
        study.optimize(make_objective(SHARP, extra=True), n_trials=6)
        lams.append([t.params for t in study.trials])
    assert lams[0] == lams[1]
    pickle.dumps(sampler)  # still picklable after use


def test_running_trials_get_different_weights() -> None:
    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    t0, t1 = study.ask(), study.ask()
    lam0 = t0.suggest_float("l1_weight", 0.0, 1.0)
    lam1 = t1.suggest_float("l1_weight", 0.0, 1.0)
    assert (lam0, lam1) == (0.0, 0.1)
    t2 = study.ask()  # both start weights running, no result yet: the bracket's next step
    lam2 = t2.suggest_float("l1_weight", 0.0, 1.0)
    assert lam2 == 1.0
    for t in (t0, t1, t2):
        study.tell(t, tuple(SHARP(t.params["l1_weight"])))
    # the next two are the normal of the extremes' segment and, while that one
    # runs, something else (never the same weight twice)
    t3, t4 = study.ask(), study.ask()
    lam3 = t3.suggest_float("l1_weight", 0.0, 1.0)
    lam4 = t4.suggest_float("l1_weight", 0.0, 1.0)
    assert lam3 != pytest.approx(lam4, rel=1e-3)
    assert_distinct([lam0, lam1, lam2, lam3, lam4])


def test_planned_weight_visible_before_suggest() -> None:
    """Other workers must see a weight as taken from the moment the trial starts."""
    study = new_study(KneeSampler())
    trial = study.ask()
    attrs = study._storage.get_trial_system_attrs(trial._trial_id)
    assert attrs["knee:l1_weight"] == 0.0 and attrs["knee:fidelity"] == "front"
    assert KneeSampler.fidelity(trial) == "front"
    assert KneeSampler.fidelity(optuna.trial.FixedTrial({"l1_weight": 0.1})) == "front"


def test_failed_and_foreign_trials() -> None:
    """Failed weights are not retried; trials without the weight are ignored."""
    calls: list[float] = []

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if trial.number % 4 == 3:  # a baseline sharing the study: no l1_weight
            return 1.0, 5000.0
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        if KneeSampler.fidelity(trial) == "front":
            calls.append(lam)
        if trial.number == 2:
            raise RuntimeError("diverged")
        return tuple(float(v) for v in SHARP(lam))

    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    study.optimize(objective, n_trials=16, catch=(RuntimeError,))
    assert_distinct(calls)
    assert study.trials[2].state == TrialState.FAIL
    assert sampler.is_converged(study)
    assert sampler.knee_trial(study).values == [0.15, 200.0]


def test_enqueued_weight_is_used_and_counted() -> None:
    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    study.enqueue_trial({"l1_weight": 0.0})
    study.enqueue_trial({"l1_weight": 1e-3})
    study.optimize(make_objective(SHARP), n_trials=4)
    lams = [t.params["l1_weight"] for t in study.trials]
    assert lams[:3] == [0.0, 1e-3, 0.1]
    assert_distinct(lams)


def test_enqueued_baseline_is_not_planned() -> None:
    """Enqueued trials that fix other parameters get their weight at suggest time."""
    study = new_study(KneeSampler(seed=0))
    study.enqueue_trial({"method": "smgd"})
    study.enqueue_trial({"x": 0.5})

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        if trial.number == 0:
            trial.suggest_categorical("method", ["smgd", "ws"])
            return 1.0, 5000.0
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        trial.suggest_float("x", -1.0, 1.0)
        return tuple(float(v) for v in SHARP(lam))

    study.optimize(objective, n_trials=6)
    assert "knee:l1_weight" not in study.trials[0].system_attrs
    assert study.trials[1].params == {"l1_weight": 0.0, "x": 0.5}
    assert study.trials[1].system_attrs["knee:fidelity"] == "front"
    assert_distinct(front_lambdas(study))


def test_trials_added_by_hand() -> None:
    """Completed trials from elsewhere seed the front; user attr fidelity="full" counts."""
    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    dist = {"l1_weight": optuna.distributions.FloatDistribution(0.0, 1.0)}
    for lam in (0.0, 0.1, 2.25 / 3002.25):
        study.add_trial(
            optuna.trial.create_trial(
                params={"l1_weight": lam}, distributions=dist, values=list(SHARP(lam))
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            params={"l1_weight": 2.25 / 3002.25},
            distributions=dist,
            values=[0.12, 150.0],  # better than the front: longer training
            user_attrs={"fidelity": "full"},
        )
    )
    assert KneeSampler.fidelity(study.trials[3]) == "full"
    assert [t.number for t in sampler.supported_trials(study)] == [0, 2, 1]
    assert sampler.knee_trial(study).number == 3  # the retrain of the knee's weight
    study.optimize(make_objective(SHARP), n_trials=4)
    assert_distinct(front_lambdas(study))
    assert not any(KneeSampler.fidelity(t) == "full" for t in study.trials[4:])


def test_narrow_weight_range() -> None:
    """With suggest_float(.., 0, 0.01) the start weight 0.1 clips to 0.01 once."""
    study = new_study(KneeSampler(seed=0))

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 0.01)
        return tuple(float(v) for v in SHARP(lam))

    study.optimize(objective, n_trials=15)
    lams = front_lambdas(study)
    assert all(0.0 <= x <= 0.01 for x in lams)
    assert_distinct(lams)


def test_empty_study_and_constructor_validation() -> None:
    sampler = KneeSampler()
    study = new_study(sampler)
    assert sampler.knee_trial(study) is None
    assert sampler.supported_trials(study) == []
    assert not sampler.is_converged(study)
    for kwargs in (
        {"start_weights": (0.0,)},
        {"start_weights": (0.0, 2.0)},
        {"knee": "curvature"},
        {"tolerance": -0.1},
        {"min_lambda_gap": 0.0},
        {"idle_wait": -1.0},
    ):
        with pytest.raises(ValueError):
            KneeSampler(**kwargs)


# --------------------------------------------------------------- several processes

WORKER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    import optuna
    from motune.sampler import KneeSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, n = sys.argv[1], int(sys.argv[2])
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        storage = JournalStorage(JournalFileBackend(url[len("journal:"):]))
    else:
        storage = url
    V = np.array(__VERTICES__)

    def objective(trial):
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        time.sleep(0.1)  # "training": keeps both workers' trials overlapping
        v = V[np.argmin((1 - lam) * V[:, 0] + lam * V[:, 1])]
        return float(v[0]), float(v[1])

    study = optuna.load_study(study_name="knee", storage=storage, sampler=KneeSampler())
    study.optimize(objective, n_trials=n)
    """
).replace("__VERTICES__", repr(SHARP_VERTICES))


@pytest.mark.parametrize("backend", ["journal", "sqlite"])
def test_two_processes_share_one_storage(tmp_path: Path, backend: str) -> None:
    if backend == "journal":
        path = str(tmp_path / "study.journal")
        storage = JournalStorage(JournalFileBackend(path))
        url = "journal:" + path
    else:
        url = storage = f"sqlite:///{tmp_path / 'study.db'}"
    optuna.create_study(
        study_name="knee", storage=storage, directions=["minimize", "minimize"]
    )
    n = 6
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    workers = [
        subprocess.Popen([sys.executable, "-c", WORKER, url, str(n)], env=env)
        for _ in range(2)
    ]
    assert [w.wait(timeout=60) for w in workers] == [0, 0]

    study = optuna.load_study(study_name="knee", storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 2 * n
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert_distinct(front_lambdas(study))
    assert sum(KneeSampler.fidelity(t) == "full" for t in trials) <= 1
    assert KneeSampler().knee_trial(study).values == [0.15, 200.0]


def test_threads_share_one_sampler() -> None:
    """``study.optimize(n_jobs=4)``: concurrent trials in one process never collide."""
    sampler = KneeSampler(seed=0)
    study = new_study(sampler)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        time.sleep(0.01)
        return tuple(float(v) for v in SHARP(lam))

    study.optimize(objective, n_trials=24, n_jobs=4)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert_distinct(front_lambdas(study))
    assert sampler.is_converged(study)
    assert sampler.knee_trial(study).values == [0.15, 200.0]


def test_gap_filling_does_not_spend_trials_where_training_collapses() -> None:
    """Past a cliff every weight gives the same (collapsed) network: refine where results differ."""
    x = np.linspace(0.0, 1.0, 4001)
    f1, f2 = 0.1 + 0.5 * x**2, 800.0 * (1.0 - x) ** 2

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        if lam > 0.01:  # training collapses: empty network, chance-level loss
            return 2.3026, 0.0
        i = int(np.argmin((1.0 - lam) * f1 + lam * f2))
        return float(f1[i]), float(f2[i])

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=KneeSampler(seed=0, full_fidelity=False))
    study.optimize(objective, n_trials=30)
    collapsed = [t for t in study.trials if t.params["l1_weight"] > 0.01]
    assert len(collapsed) <= 6, sorted(t.params["l1_weight"] for t in collapsed)


# ------------------------------------------------------------------------- bracket

# (4) short: the smooth front with f2 in [0, 35] instead of [0, 3000]. The same curve in
# normalised objectives (same knees), but the weights that reach its end are ~100 times
# larger: λ = 0.1 stops at (0.53, 4.5), inside the front; f2 = 0 needs λ ≈ 0.5.
F2_SHORT = 35.0
SHORT = dense(F1_LO + F1_SPAN * _X, F2_SHORT * _Y)


def short_norm(values: list[float]) -> np.ndarray:
    return np.array([(values[0] - F1_LO) / F1_SPAN, values[1] / F2_SHORT])


def test_short_front_ends_beyond_the_start_bracket() -> None:
    """The fixture itself: λ = 0.1 is truncated, the end (f2 = 0) comes near λ = 0.5."""
    assert SHORT(0.1)[1] > 0.1 * F2_SHORT
    assert SHORT(0.45)[1] > 0.0
    assert SHORT(0.5)[1] == 0.0


@pytest.mark.parametrize("criterion", ["angle", "distance"])
def test_bracket_extends_to_the_end_of_the_front(criterion: str) -> None:
    """λ = 0.1 still leaves weights: the sampler tries 10 × 0.1 (capped at 1) before refining."""
    sampler = KneeSampler(knee=criterion, seed=0)
    study = new_study(sampler)
    run_until_converged(study, make_objective(SHORT), 15)
    lams = front_lambdas(study)
    assert lams[:3] == [0.0, 0.1, 1.0]
    assert max(lams) >= 0.5
    knee = short_norm(sampler.knee_trial(study).values)
    assert np.hypot(*(knee - SMOOTH_KNEE_DISTANCE)) < 0.02
    assert np.hypot(*(knee - SMOOTH_KNEE_CURVATURE)) < 0.02
    assert_distinct(lams)

    # Control: where the weight cannot go past 0.1, the knee of the truncated front is
    # far from the true one, so the assertions above do depend on the bracket.
    truncated = KneeSampler(knee=criterion, seed=0)
    capped = new_study(truncated)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        v = SHORT(trial.suggest_float("l1_weight", 0.0, 0.1))
        return float(v[0]), float(v[1])

    run_until_converged(capped, objective, 15)
    assert max(front_lambdas(capped)) == 0.1
    wrong = short_norm(truncated.knee_trial(capped).values)
    assert np.hypot(*(wrong - SMOOTH_KNEE_DISTANCE)) > 0.1


@pytest.mark.parametrize("start", [(0.0, 0.004), (0.0, 0.04), (0.0, 0.1)])
def test_bracket_stops_at_the_end_of_the_front(start: tuple[float, float]) -> None:
    """The sharp front ends (f2 = 0) from λ ≈ 0.031 on: no trial is spent past the end.

    With the default ``f2_floor=0`` a result with f2 = 0 is the end; without a floor
    the end is recognised by a plateau, which costs exactly one trial past it, never
    more, and the search is otherwise the same.
    """
    runs = {}
    for floor in (0.0, None):
        sampler = KneeSampler(seed=0, start_weights=start, f2_floor=floor)
        study = new_study(sampler)
        n = run_until_converged(study, make_objective(SHARP), 10)
        assert sampler.knee_trial(study).values == [0.15, 200.0]
        runs[floor] = (n, front_lambdas(study))
    # From 0.004 one ×10 reaches the end (0.04); from 0.04 or 0.1 it is already there.
    end = 0.04 if start[1] < 0.03 else start[1]
    n, lams = runs[0.0]
    assert lams[:2] == list(start) and max(lams) == pytest.approx(end)
    n_plain, lams_plain = runs[None]
    beyond = min(10 * end, 1.0)
    assert max(lams_plain) == pytest.approx(beyond)  # one trial past the end, no more
    assert n_plain == n + 1
    assert [x for x in lams_plain if not math.isclose(x, beyond)] == lams


def test_no_knee_while_the_bracket_trial_runs() -> None:
    """Other workers refine meanwhile, but the knee of the truncated front is not confirmed."""
    sampler = KneeSampler(seed=0, full_fidelity=True)
    study = new_study(sampler)
    for _ in range(2):
        t = study.ask()
        study.tell(t, tuple(SHORT(t.suggest_float("l1_weight", 0.0, 1.0))))
    extension = study.ask()
    assert extension.suggest_float("l1_weight", 0.0, 1.0) == 1.0
    for _ in range(10):  # the capped study above confirms its knee within 8 trials
        t = study.ask()
        lam = t.suggest_float("l1_weight", 0.0, 1.0)
        assert KneeSampler.fidelity(t) == "front" and lam < 1.0
        study.tell(t, tuple(SHORT(lam)))
    assert not sampler.is_converged(study)
    study.tell(extension, tuple(SHORT(1.0)))
    run_until_converged(study, make_objective(SHORT), 10)
    knee = short_norm(sampler.knee_trial(study).values)
    assert np.hypot(*(knee - SMOOTH_KNEE_DISTANCE)) < 0.02
    assert_distinct(front_lambdas(study))


def test_failed_bracket_trial_is_not_pushed_further() -> None:
    """A weight that crashes ends the bracket: no retry past it, and the search still converges."""

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        if lam > 0.5:
            raise RuntimeError("diverged")
        return tuple(float(v) for v in SHORT(lam))

    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    for _ in range(15):
        study.optimize(objective, n_trials=1, catch=(RuntimeError,))
        if sampler.is_converged(study):
            break
    assert sampler.is_converged(study)
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.params["l1_weight"] for t in failed] == [1.0]
    assert max(x for x in front_lambdas(study) if x < 1.0) <= 0.1


def test_f2_floor_validation() -> None:
    with pytest.raises(ValueError, match="f2_floor"):
        KneeSampler(f2_floor=math.nan)


# ------------------------------------------------------- the search without a Study
# The choice of a weight is a function of the trials' records alone (motune.sampler's
# module-level functions); these tests build records by hand.

DONE, RUNNING, FAILED = TrialState.COMPLETE, TrialState.RUNNING, TrialState.FAIL
SHARP_ENDS = [(0.0, (0.05, 3000.0)), (0.1, (2.3, 0.0))]
EXTREMES_NORMAL = 2.25 / (2.25 + 3000.0)


def records(*rows: tuple[float, tuple[float, float]]) -> list[TrialRecord]:
    """One COMPLETE front record per (λ, values) row, numbered from 0."""
    return [TrialRecord(i, lam, DONE, FRONT, values) for i, (lam, values) in enumerate(rows)]


def sharp_records(*lams: float) -> list[TrialRecord]:
    return records(*((lam, tuple(float(v) for v in SHARP(lam))) for lam in lams))


def test_read_trials_one_record_per_weighted_trial() -> None:
    study = new_study(KneeSampler(seed=0))
    study.optimize(make_objective(SHARP), n_trials=3)
    study.add_trial(optuna.trial.create_trial(values=[1.0, 5000.0]))  # a baseline: no weight
    running = study.ask()
    running.suggest_float("l1_weight", 0.0, 1.0)
    recs = read_trials(study.get_trials(), directions=study.directions)
    assert [r.number for r in recs] == [0, 1, 2, 4]
    assert [r.lam for r in recs[:2]] == [0.0, 0.1] and recs[3].pending and recs[3].values is None
    assert recs[0].values == (0.05, 3000.0) and all(r.fidelity == FRONT for r in recs)
    assert [r.number for r in read_trials(study.get_trials(), exclude=4)] == [0, 1, 2]
    maximised = read_trials(study.get_trials(), directions=[StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE])
    assert maximised[0].values == (-0.05, 3000.0)


def test_choose_weight_dichotomic_sequence_on_records() -> None:
    """The sharp front's search, step by step, on records: the same weights the study gets."""
    rules = SearchRules()
    assert choose_weight([], rules) == (0.0, FRONT)
    assert choose_weight(sharp_records(0.0), rules) == (0.1, FRONT)
    lam, fidelity = choose_weight(sharp_records(0.0, 0.1), rules)
    assert fidelity == FRONT and lam == pytest.approx(EXTREMES_NORMAL)
    study = new_study(KneeSampler(seed=0))
    run_until_converged(study, make_objective(SHARP), 8)
    lams = [t.params["l1_weight"] for t in study.trials]
    for n in range(1, len(lams)):
        expected = (lams[n], KneeSampler.fidelity(study.trials[n]))
        assert choose_weight(sharp_records(*lams[:n]), rules) == expected


def test_search_front_and_segments() -> None:
    recs = sharp_records(0.0, 0.1, EXTREMES_NORMAL)
    front = search_front(recs, SearchRules())
    assert front.knee == 2 and front.knee_pos == 1
    assert front.supported.tolist() == [0, 2, 1]
    assert front.scale.tolist() == [2.25, 3000.0]
    segs = segments(front, recs, SearchRules())
    assert [s.pos for s in segs] == [0, 1] and not any(s.closed or s.busy for s in segs)
    # A running trial at a segment's normal weight makes it busy; a finished one closes it.
    running = TrialRecord(9, segs[0].lam, RUNNING)
    assert [s.busy for s in segments(front, [*recs, running], SearchRules())] == [True, False]
    failed = TrialRecord(9, segs[1].lam, FAILED)
    assert [s.closed for s in segments(front, [*recs, failed], SearchRules())] == [False, True]


def test_bracket_on_records() -> None:
    rules, bounds = SearchRules(), (0.0, 1.0)
    short = records(*((lam, tuple(float(v) for v in SHORT(lam))) for lam in (0.0, 0.1)))
    assert bracket(short, search_front(short, rules), rules, bounds) == (True, 1.0)
    pending = [*short, TrialRecord(2, 1.0, RUNNING)]
    assert bracket(pending, search_front(pending, rules), rules, bounds) == (True, None)
    sharp = sharp_records(0.0, 0.1)  # f2 = 0 at 0.1: the end of the front
    assert bracket(sharp, search_front(sharp, rules), rules, bounds) == (False, None)
    no_floor = SearchRules(f2_floor=None)
    assert bracket(sharp, search_front(sharp, no_floor), no_floor, bounds) == (True, 1.0)
    crashed = [*short, TrialRecord(2, 1.0, FAILED)]
    assert bracket(crashed, search_front(crashed, rules), rules, bounds) == (False, None)


def test_knee_confirmed_and_full_retrain_on_records() -> None:
    rules = SearchRules()
    lams = [0.0, 0.1, EXTREMES_NORMAL]
    recs = sharp_records(*lams)
    assert not is_confirmed(recs, rules, (0.0, 1.0))
    while (choice := choose_weight(recs, rules))[1] == FRONT:
        lams.append(choice[0])
        recs = sharp_records(*lams)
    assert is_confirmed(recs, rules, (0.0, 1.0))
    knee = search_front(recs, rules).knee
    assert choice == (lams[knee], FULL) and recs[knee].values == (0.15, 200.0)
    # Once a full retrain runs, completes or failed there, the next weight is a front one.
    for state in (RUNNING, DONE, FAILED):
        full = TrialRecord(len(recs), lams[knee], state, FULL)
        assert choose_weight([*recs, full], rules)[1] == FRONT
    assert choose_weight(recs, dataclasses.replace(rules, full_fidelity=False))[1] == FRONT


def test_gap_filling_on_records_never_repeats() -> None:
    """After convergence the weights keep coming, each new, within bounds."""
    rules, rng = SearchRules(full_fidelity=False), np.random.RandomState(0)
    recs = sharp_records(0.0, 0.1)
    for _ in range(25):
        lam, fidelity = choose_weight(recs, rules, (0.0, 0.1), rng)
        assert fidelity == FRONT and 0.0 <= lam <= 0.1
        assert not rules.near_any(lam, [r.lam for r in recs])
        recs = sharp_records(*(r.lam for r in recs), lam)


def test_search_rules_validation() -> None:
    with pytest.raises(ValueError, match="start_weights"):
        SearchRules(start_weights=(0.5,))
    with pytest.raises(ValueError, match="f2_floor"):
        SearchRules(f2_floor=math.inf)
    assert SearchRules(min_lambda_gap=0.01).same(1.0, 1.009)


# ------------------------------------------------------ several workers, on records


def sharp_path() -> list[TrialRecord]:
    """The one-worker search of the sharp front up to its knee's retrain, as PATH records."""
    rules, recs = SearchRules(), []
    while (choice := choose_weight(recs, rules))[1] == FRONT:
        recs.append(TrialRecord(len(recs), choice[0], DONE, FRONT, tuple(float(v) for v in SHARP(choice[0])), PATH))
    return recs


def test_replay_reads_only_what_the_one_worker_search_asks_for() -> None:
    path = sharp_path()
    rules = SearchRules()
    n = len(path)
    # An idle worker's guess nobody asked for: not read, the knee and next step unchanged.
    stray = TrialRecord(n, 0.05, DONE, FRONT, tuple(float(v) for v in SHARP(0.05)), EXTRA)
    state = replay([*path, stray], rules)
    assert [r.number for r in state.records] == list(range(n))
    assert state.next == choose_weight(path, rules) and state.next[1] == FULL and state.running is None
    # A guess at the weight the search asks for next is read as if it had asked for it.
    hit = TrialRecord(n, path[-1].lam, DONE, FRONT, path[-1].values, EXTRA)
    assert [r.number for r in replay([*path[:-1], hit], rules).records] == [*range(n - 1), n]
    # A PATH trial the search would not ask for (a lost race) is not read either.
    lost = TrialRecord(n, 0.05, DONE, FRONT, stray.values, PATH)
    assert [r.number for r in replay([*path, lost], rules).records] == list(range(n))
    # The user's trials (enqueued, added: no role) are read from the start.
    user = TrialRecord(n, 0.05, DONE, FRONT, stray.values)
    assert n in [r.number for r in replay([*path, user], rules).records]


def test_idle_workers_split_the_other_knee_segment_then_wait() -> None:
    rules = SearchRules()
    recs = [dataclasses.replace(r, role=PATH) for r in sharp_records(0.0, 0.1, EXTREMES_NORMAL)]
    segs = segments(search_front(recs, rules), recs, rules)
    first = choose_weight(recs, rules)
    assert first == (max(segs, key=lambda s: s.length).lam, FRONT)
    assert plan_weight(recs, rules)[:3] == (*first, PATH)
    running = [*recs, TrialRecord(3, first[0], RUNNING, role=PATH)]
    # Whatever the running trial returns, the search would split the other knee segment next.
    other = next(s.lam for s in segs if s.lam != first[0])
    assert plan_weight(running, rules)[:3] == (other, FRONT, EXTRA)
    # Each plan names the network a continuation starts from: the nearest smaller weight the
    # search had read when it asked (a running trial's too, on the guess that it has finished).
    assert plan_weight(recs, rules).parent == max(r.lam for r in recs if r.lam < first[0])
    assert plan_weight(running, rules).parent == max(r.lam for r in running if r.lam < other)
    # ... and the finished trials it had read (trial pruning's references), never a running one.
    assert plan_weight(recs, rules).read == tuple(r.number for r in recs)
    assert plan_weight(running, rules).read == tuple(r.number for r in recs)
    # Both knee segments running: the likeliest branch (the longer one finds a point, as the
    # arc through its ends predicts) splits a segment next to that point, a weight on the grid.
    both = [*running, TrialRecord(4, other, RUNNING, role=EXTRA)]
    lam, fidelity, role, *_ = plan_weight(both, rules)
    assert (fidelity, role) == (FRONT, EXTRA) and lam == rules.snap(lam)
    assert not rules.near_any(lam, [r.lam for r in both])
    # Two guesses run (the cap): only the knee's retrain, confirmed on every branch, comes on top,
    # marked extra (it confirms nothing); then the worker waits for real results.
    three = [*both, TrialRecord(5, lam, RUNNING, role=EXTRA)]
    knee = search_front(recs, rules).knee
    assert plan_weight(three, rules)[:4] == (recs[knee].lam, FULL, EXTRA, recs[knee].lam)  # the retrain continues its own
    assert plan_weight([*three, TrialRecord(6, recs[knee].lam, RUNNING, FULL, role=EXTRA)], rules) is None
    assert not is_confirmed(three, rules, (0.0, 1.0))


def test_idle_workers_guess_the_bracket_while_the_start_weights_run() -> None:
    rules = SearchRules()
    # The second start weight does not depend on the first's result: an idle worker takes it.
    # It continues the first one's network (its trial waits for it, motune.continuation).
    assert plan_weight([TrialRecord(0, 0.0, RUNNING, role=PATH)], rules)[:4] == (0.1, FRONT, EXTRA, 0.0)
    start = [TrialRecord(0, 0.0, RUNNING, role=PATH), TrialRecord(1, 0.1, RUNNING, role=PATH)]
    assert plan_weight(start, rules)[:4] == (1.0, FRONT, EXTRA, 0.1)
    assert plan_weight([], rules) == (0.0, FRONT, PATH, None, ())  # the first trial starts fresh
    assert plan_weight([*start, TrialRecord(2, 1.0, RUNNING, role=EXTRA)], rules) is None


def test_confirmed_knee_stays_put_as_more_points_arrive() -> None:
    """Trials after convergence refine the front but do not move the confirmed knee (issue 12's sqrt front)."""
    t = np.linspace(0.0, 1.0, 200_001)
    front = dense(0.3 + 2 * t, 3000.0 * (1 - np.sqrt(t)) ** 2)
    sampler = KneeSampler(seed=0)
    study = new_study(sampler)
    run_until_converged(study, make_objective(front), 20)
    knee = sampler.knee_trial(study).values
    study.optimize(make_objective(front), n_trials=15)
    assert sampler.is_converged(study) and sampler.knee_trial(study).values == knee
    assert len(front_lambdas(study)) >= 24  # 15 more weights on the front


# ------------------------------------------------------------- the grid and the guesses


def test_search_weights_lie_on_a_log_grid() -> None:
    """Past the extremes' normal every segment's weight is on the grid (10 per decade), so a guess can hit it exactly."""
    rules = SearchRules()
    assert rules.grid == 10
    assert rules.snap(0.0) == 0.0 and rules.snap(0.1) == pytest.approx(0.1)
    assert rules.snap(0.0104) == pytest.approx(0.01) and rules.snap(0.0115) == pytest.approx(10**-1.9)
    assert SearchRules(grid=0).snap(0.0104) == 0.0104
    with pytest.raises(ValueError, match="grid"):
        SearchRules(grid=-1)
    # Two points: the extremes' normal, exact (it depends on no running trial's result).
    recs = sharp_records(0.0, 0.1)
    (seg,) = segments(search_front(recs, rules), recs, rules)
    assert seg.lam == pytest.approx(EXTREMES_NORMAL) and seg.lam != rules.snap(seg.lam)
    # Then every segment's weight is a grid weight.
    recs = sharp_records(0.0, 0.1, EXTREMES_NORMAL)
    for s in segments(search_front(recs, rules), recs, rules):
        assert s.lam == rules.snap(s.lam) and math.log10(s.lam) * 10 == pytest.approx(round(math.log10(s.lam) * 10))
    # A whole search: start weights, the extremes' normal, then grid weights only.
    study = new_study(KneeSampler(seed=0))
    run_until_converged(study, make_objective(SMOOTH), 20)
    lams = front_lambdas(study)
    assert lams[:3] == [0.0, 0.1, pytest.approx(rules.snap(lams[2]), rel=0.2)]
    assert all(lam == rules.snap(lam) for lam in lams[3:])


def test_a_segment_whose_weight_snaps_onto_an_end_is_closed() -> None:
    """Between two adjacent grid weights the grid has nothing left to try: that segment counts as an edge."""
    lo, hi = 10**-3.0, 10**-2.9
    # B - A has normal weight 1.1e-3, between the weights that found A and B; it snaps onto lo.
    a, b = (0.3, 2500.0), (0.3 + 1000 * 1.1e-3 / (1 - 1.1e-3), 1500.0)
    recs = records((0.0, (0.05, 3000.0)), (lo, a), (hi, b), (1.0, (9.0, 1400.0)))
    for grid, closed in ((10, True), (0, False)):
        rules = SearchRules(grid=grid, tolerance=0.0)  # no closing by ties: only by the weight itself
        front = search_front(recs, rules)
        (seg,) = [s for s in segments(front, recs, rules) if front.points[front.supported][s.pos].tolist() == list(a)]
        assert seg.lam == pytest.approx(lo if grid else 1.1e-3) and seg.closed == closed


def test_arc_point_lies_in_the_triangle_of_the_tangent_lines() -> None:
    a, b = np.array([0.05, 3000.0]), np.array([2.3, 0.0])
    lam = 2.25 / 3002.25  # the extremes' normal
    point, corner = arc_point(a, 0.0, b, 0.1, lam)
    assert corner[0] == pytest.approx(0.05) and 0.0 <= corner[1] < 30.0  # near the ideal point
    # Below the chord AB, above both tangent lines.
    chord = (b[1] - a[1]) / (b[0] - a[0])
    assert point[1] < a[1] + chord * (point[0] - a[0])
    assert point[0] >= a[0] and 0.9 * (point[0] - b[0]) + 0.1 * (point[1] - b[1]) >= -1e-9
    # Its weighted sum is no worse than A's or B's: the optimum of the arc, not of the chord.
    score = lambda v: (1 - lam) * v[0] + lam * v[1]  # noqa: E731
    assert score(point) < min(score(a), score(b))
    assert arc_point(a, 0.0, b, 0.1, 0.2) is None  # the weights do not bracket lam
    assert arc_point(a, lam, b, 0.1, lam) is None


def test_guesses_are_new_weights_with_priors() -> None:
    rules = SearchRules()
    recs = [dataclasses.replace(r, role=PATH) for r in sharp_records(0.0, 0.1, EXTREMES_NORMAL)]
    first = choose_weight(recs, rules)
    running = [*recs, TrialRecord(3, first[0], RUNNING, role=PATH)]
    found = guesses(running, rules, (0.0, 1.0), replay(running, rules))
    assert found and all(0.0 < p <= 1.0 + 1e-12 for *_, p in found)
    assert [p for *_, p in found] == sorted((p for *_, p in found), reverse=True)
    taken = [r.lam for r in running]
    assert not any(rules.near_any(lam, taken) for lam, fidelity, _ in found if fidelity == FRONT)


def test_a_guessed_retrain_confirms_nothing_and_a_wasted_one_is_not_the_knee() -> None:
    """A full retrain an idle worker guessed at the wrong weight: the knee and its retrain are the search's."""
    rules = SearchRules()
    path = sharp_path()
    knee = search_front(path, rules).knee
    wrong = next(r.lam for i, r in enumerate(path) if i != knee and r.lam > 0)
    stray = TrialRecord(len(path), wrong, DONE, FULL, (0.4, 60.0), EXTRA)
    state = replay([*path, stray], rules)
    assert state.next == (path[knee].lam, FULL) and state.running is None
    assert plan_weight([*path, stray], rules)[:3] == (path[knee].lam, FULL, PATH)
    right = TrialRecord(len(path) + 1, path[knee].lam, DONE, FULL, (0.15, 200.0), EXTRA)
    assert replay([*path, stray, right], rules).next is None


def test_a_baseline_enqueued_without_the_weight_blocks_no_weight() -> None:
    """An enqueued SMGD trial never suggests λ: planning one for it would hold up the search's path."""
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=KneeSampler())
    study.enqueue_trial({}, user_attrs={"kind": "smgd"})
    baseline = study.ask()
    assert "knee:l1_weight" not in study._storage.get_trial_system_attrs(baseline._trial_id)
    other = study.ask()  # another worker meanwhile: the search's first weight is still free
    assert other.suggest_float("l1_weight", 0.0, 1.0) == 0.0


def test_wait_for_work_is_false_while_the_search_waits_on_running_trials() -> None:
    """motune's worker loop asks it before ``study.ask()``: an idle worker waits instead of filling a gap."""
    sampler = KneeSampler()
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    first = study.ask()
    assert first.suggest_float("l1_weight", 0.0, 1.0) == 0.0
    trials = [first]
    for expected in (0.1, 1.0):  # the second start weight, then the bracket's step: guesses
        assert sampler.wait_for_work(study, timeout=0.0)
        trials.append(study.ask())
        assert trials[-1].suggest_float("l1_weight", 0.0, 1.0) == expected
    assert not sampler.wait_for_work(study, timeout=0.0)  # nothing likely enough left to guess
    for trial, values in zip(trials, ([0.1, 3000.0], [0.5, 100.0], [2.3, 0.0]), strict=True):
        study.tell(trial, values)
    assert sampler.wait_for_work(study, timeout=0.0)  # the search's next weight


def test_workers_that_ask_inside_a_planning_turn_never_get_a_gap_filling_weight() -> None:
    """Eight threads pass the check at once: the weights ready go to three of them, the others get none.

    Checked and then asked without the turn, all eight got a trial, five of them a weight
    the search had no use for (the sampler's gap-filling, off the search's path).
    """
    sampler = KneeSampler()
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    start, asked = threading.Barrier(8), []

    def worker() -> None:
        start.wait()
        with sampler.planning_turn(study, timeout=0.0) as ready:
            if ready:
                trial = study.ask()
                asked.append(trial.suggest_float("l1_weight", 0.0, 1.0))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(asked) == [0.0, 0.1, 1.0]  # the first start weight, then the guesses while it runs
    assert len(study.trials) == 3  # nobody else created a trial
