"""Several workers (threads) confirm the same knee as one (issue 12), on fronts where they do today.

The objective waits on a barrier of all workers instead of sleeping a fixed time, so the
trials overlap however fast the machine is; a broken barrier (at the end of the run,
when fewer trials than workers are left) lets the rest through. Only the polyline-like
fronts are here: on smooth fronts the angle knee still moves with the points sampled
(see docs/benchmarks.md, "Parallel search").
"""

from __future__ import annotations

import threading

import numpy as np
import optuna
import pytest

from motune.sampler import KneeSampler
from tests.test_sampler import FLAT, FLAT_KNEE, SHARP, SHARP_KNEE, Front

optuna.logging.set_verbosity(optuna.logging.WARNING)


def confirmed_knee(front: Front, workers: int) -> np.ndarray:
    sampler = KneeSampler(seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    barrier = threading.Barrier(workers)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        try:
            barrier.wait(timeout=30)
        except threading.BrokenBarrierError:
            pass  # the last trials of the run, or a stopped study: no partner comes
        v = front(lam)
        return float(v[0]), float(v[1])

    def stop(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if sampler.is_converged(study):
            study.stop()
            barrier.abort()

    study.optimize(objective, n_trials=60, n_jobs=workers, callbacks=[stop])
    assert sampler.is_converged(study)
    return np.asarray(sampler.knee_trial(study).values)


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
@pytest.mark.parametrize(("front", "knee"), [(SHARP, SHARP_KNEE), (FLAT, FLAT_KNEE)], ids=["sharp", "flat"])
def test_same_knee_with_more_workers(front: Front, knee: np.ndarray, workers: int) -> None:
    assert confirmed_knee(front, workers) == pytest.approx(knee)
