"""Parallel search: does KneeSampler confirm the same knee, and sooner, with more workers?

Simulation, no training: each trial "trains" by sleeping ``--unit`` seconds and returns
the weighted-sum optimum of a known front for its λ. KneeSampler (defaults: start weights
0 and 0.1, angle knee, tolerance 0.02, full-fidelity retrain of the knee) drives a plain
Optuna study with ``study.optimize(n_jobs=workers)`` threads, stopped once the sampler
says it has converged (the knee's retrain completed) or after ``--budget`` trials.

Fronts: the synthetic fronts of tests/test_sampler.py (``sharp`` polyline, ``smooth``
(1 - x²)/(1 + 30x), ``flat`` with a long straight stretch, ``short``: the smooth one with
f2 in [0, 35] so that λ = 0.1 stops inside the front) and issue 12's ``sqrt`` front
(f1 = 0.3 + 2t, f2 = 3000 (1 - √t)²). Not yet here: a replayed digits front and journal
processes (see docs/benchmarks.md).

Per front and worker count: ``trials`` to convergence (the retrain included); ``wall``
to convergence in units of one trial; ``knee`` (normalised by the front's own ideal and
nadir); ``dist``: distance of that knee from the 1-worker knee; ``tail``: trials whose
result lies within 0.02 (normalised) of the front's far end, where the front is flat or
training has collapsed. Targets (issue 12): the same knee at every worker count (dist <=
0.02); at 8 workers, wall <= 1/2 of one worker's on fronts that need >= 6 sequential
trials, and trials <= 2x the sequential count. Thread timing varies from run to run:
``--repeats`` runs each cell several times and reports the worst distance.

    python bench/parallel.py --quick     # 1, 2, 4, 8 workers, 20 ms trials, 1 repeat
    python bench/parallel.py             # 1, 2, 4, 8, 16 workers, 100 ms trials, 3 repeats
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, machine_info, table, write_json

from motune.sampler import KneeSampler

Front = Callable[[float], np.ndarray]


def _dense(f1: np.ndarray, f2: np.ndarray) -> Front:
    return lambda lam: np.array([f1[i := int(np.argmin((1 - lam) * f1 + lam * f2))], f2[i]])


def _polyline(vertices: list[tuple[float, float]]) -> Front:
    v = np.asarray(vertices, dtype=float)
    return lambda lam: v[np.argmin((1 - lam) * v[:, 0] + lam * v[:, 1])]


def fronts() -> dict[str, Front]:
    """The synthetic fronts of tests/test_sampler.py, and issue 12's."""
    x = np.linspace(0.0, 1.0, 200_001)
    y = (1 - x**2) / (1 + 30 * x)
    flat_v = [(0.05, 3000.0), (0.08, 600.0), (0.8, 100.0), (2.3, 0.0)]
    flat = np.concatenate(
        [np.asarray(a) + np.linspace(0, 1, 400)[:, None] * (np.asarray(b) - np.asarray(a)) for a, b in itertools.pairwise(flat_v)]
    )
    t = np.linspace(0.0, 1.0, 200_001)
    return {
        "sharp": _polyline([(0.05, 3000.0), (0.1, 800.0), (0.15, 200.0), (0.4, 60.0), (2.3, 0.0)]),
        "smooth": _dense(0.05 + 2.25 * x, 3000.0 * y),
        "flat": _dense(flat[:, 0], flat[:, 1]),
        "short": _dense(0.05 + 2.25 * x, 35.0 * y),
        "sqrt": _dense(0.3 + 2 * t, 3000.0 * (1 - np.sqrt(t)) ** 2),
    }


def run(front: Front, workers: int, unit: float, budget: int) -> dict[str, Any]:
    """One search with ``workers`` threads; the figures of one table cell."""
    sampler = KneeSampler(seed=0)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        time.sleep(unit)
        v = front(lam)
        return float(v[0]), float(v[1])

    def stop_when_converged(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if sampler.is_converged(study):
            study.stop()

    t0 = time.perf_counter()
    study.optimize(objective, n_trials=budget, n_jobs=workers, callbacks=[stop_when_converged])
    wall = time.perf_counter() - t0
    ideal, nadir = front(0.0), front(1.0)
    lo, span = np.array([ideal[0], nadir[1]]), np.abs(nadir - ideal)
    knee = sampler.knee_trial(study)
    done = [t for t in study.trials if t.values is not None]
    end = (nadir - lo) / span
    tail = sum(np.hypot(*((np.asarray(t.values) - lo) / span - end)) <= 0.02 for t in done)
    return {
        "workers": workers,
        "converged": sampler.is_converged(study),
        "trials": len(study.trials),
        "wall_units": wall / unit,
        "knee": None if knee is None else ((np.asarray(knee.values) - lo) / span).tolist(),
        "tail": int(tail),
        "lambdas": [t.params.get("l1_weight") for t in study.trials],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1, 2, 4, 8 workers, 20 ms trials, 1 repeat")
    parser.add_argument("--workers", default=None, help="comma-separated worker counts (default 1,2,4,8,16)")
    parser.add_argument("--unit", type=float, default=None, help="seconds one trial sleeps (default 0.1)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3)")
    parser.add_argument("--budget", type=int, default=60, help="most trials per run")
    parser.add_argument("--json", default=str(RESULTS / "parallel.json"), help="where to write the JSON results")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counts = [int(w) for w in (args.workers or ("1,2,4,8" if args.quick else "1,2,4,8,16")).split(",")]
    unit = args.unit or (0.02 if args.quick else 0.1)
    repeats = args.repeats or (1 if args.quick else 3)

    results: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for name, front in fronts().items():
        cells = []
        for w in counts:
            runs = [run(front, w, unit, args.budget) for _ in range(repeats)]
            cells.append({"workers": w, "runs": runs})
        reference = np.asarray(cells[0]["runs"][0]["knee"])
        for cell in cells:
            dists = [float(np.hypot(*(np.asarray(r["knee"]) - reference))) for r in cell["runs"]]
            cell["worst_dist"] = max(dists)
            med = {k: float(np.median([r[k] for r in cell["runs"]])) for k in ("trials", "wall_units", "tail")}
            cell.update(med)
            knee = cell["runs"][0]["knee"]
            shown = f"({knee[0]:.3f}, {knee[1]:.3f})"
            rows.append([name, cell["workers"], med["trials"], med["wall_units"], shown, cell["worst_dist"], med["tail"]])
        results[name] = cells
    print(table(rows, ["front", "workers", "trials", "wall", "knee (1st run)", "dist", "tail"]))
    print()
    for name, cells in results.items():
        one = cells[0]
        same = all(c["worst_dist"] <= 0.02 for c in cells)
        line = f"{name}: same knee at every worker count: {'yes' if same else 'NO'}"
        eight = next((c for c in cells if c["workers"] == 8), None)
        if eight is not None and one["trials"] >= 6:
            line += (
                f"; 8 workers: wall {eight['wall_units'] / one['wall_units']:.2f}x one worker's (target <= 0.5),"
                f" trials {eight['trials'] / one['trials']:.2f}x (target <= 2)"
            )
        print(line)
    out = write_json(args.json, {"machine": machine_info(), "unit_s": unit, "repeats": repeats, "fronts": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
