"""Search efficiency: KneeSampler against Optuna's samplers and a fixed λ grid.

One λ search, driven by each method in turn: digits (scikit-learn's 8x8), the
``digits_cnn`` network, Adam lr 3e-3, batch 64, 10 epochs per trial (the front
fidelity of ``studies/digits.toml``), soft intra-training pruning; each trial returns
(validation cross-entropy, l1 norm of the dense weights). Methods:

- ``knee``: :class:`motune.KneeSampler` (defaults: start weights 0 and 0.1, angle knee,
  tolerance 0.02) with ``full_fidelity=False``: every trial is a front trial, so the
  trial counts compare like with like (no full-length retrain is hidden or counted);
  λ = ``suggest_float("l1_weight", 0.0, 0.1)``.
- ``tpe`` (``TPESampler``, Optuna's multi-objective default), ``nsga2``
  (``NSGAIISampler(population_size=8)`` with SBX crossover and polynomial mutation:
  with one parameter its default operators reduce to random search), ``gp`` (``GPSampler``: logEHVI, needs scipy and
  torch) and ``random`` (``RandomSampler``), each with Optuna's default settings and λ on a
  log scale, ``suggest_float("l1_weight", 1e-6, 1e-1, log=True)``. To give them the same
  start as KneeSampler the two ends of their range (1e-6, 0.1) are enqueued as trials 1
  and 2 (they count against the budget, as KneeSampler's start weights do). λ = 0 is not
  in a log range; 1e-6 trains the same network up to noise (see docs/benchmarks.md).
- ``grid26``: the paper's fixed grid of 26 weights, here 0 plus 25 log-spaced weights
  from 1e-6 to 1e-1, run coarse to fine (0, 1e-1, 1e-6, then bisection of the index
  range) so that its curve is as good as a 26-point grid can be at every trial count;
  after 26 trials it is done and its curve stays flat.

Training is deterministic given (λ, seed), so results are memoised per run by (λ to
12 significant digits, seed): a weight two methods both try is trained once. Torch runs
with one thread (``torch.set_num_threads(1)``): on 2 shared cores, 2 threads make
these tiny networks many times slower.

Measures, per seed and against the number of trials n: the hypervolume of the first n
points in normalised objectives (ideal and nadir of the nondominated union of every
method's points and a dense reference sweep of 0 plus 60 log-spaced λ in [1e-6, 1e-1],
the same seed; reference point (1.1, 1.1)), as a fraction of the sweep's hypervolume;
and the distance, in the same normalised objectives, from the knee of the first n
points (``motune.pareto.knee_index(points, "angle", 0.02)``, KneeSampler's own
criterion and tolerance) to the sweep's knee. ``trials_to_95pct_hv``: first n with
hypervolume >= 95% of the sweep's; ``trials_to_knee``: first n whose knee is within
0.05 of the reference knee (``trials_to_knee_stable``: from which it stays within
0.05 until the budget ends). Reported as medians over seeds, a seed that never gets
there counting as infinite (``null`` when the median is). Target: KneeSampler needs at
most a third of the trials of the best other method for both. Also counted:
``collapsed`` trials, whose network lost every dense weight (λ past the collapse
threshold: they all land on the same point of the front).

    python bench/samplers.py            # full: 5 seeds, 40 trials per method, 61-point sweep
    python bench/samplers.py --quick    # 2 seeds, 20 trials per method, 31-point sweep
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.samplers.nsgaii import PolynomialMutation, SBXCrossover

import motune
from motune import pareto
from motune.study import PARAM, completed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import (
    RESULTS,
    load_average,
    median_or_none,
    setup,
    table,
    write_figure,
    write_json,
)

LOW, HIGH = 1e-6, 1e-1
DIGITS = motune.StudyConfig()  # studies/digits.toml
KNEE_CRITERION = "angle"
KNEE_TOLERANCE = 0.02  # KneeSampler's default: depth below a segment that makes a vertex
KNEE_REACHED = 0.05  # "reached the knee": within this distance in normalised objectives
HV_FRACTION = 0.95
REFERENCE = np.array([1.1, 1.1])
METHODS = ("knee", "tpe", "nsga2", "gp", "random", "grid26")
TARGET_RATIO = 1 / 3


class CachedObjective:
    """Train digits_cnn at (λ, seed), memoised: the result is deterministic given both."""

    def __init__(self, data: motune.Dataset, epochs: int) -> None:
        self.data = data
        self.epochs = epochs
        self.cache: dict[tuple[str, int], dict[str, float]] = {}
        self.trainings = 0
        self.train_seconds = 0.0

    def __call__(self, lam: float, seed: int) -> dict[str, float]:
        key = (f"{lam:.11e}", seed)
        if key not in self.cache:
            # The digits study's training settings (motune's defaults), at this run's length, on the CPU.
            cfg = DIGITS.train_config(l1_weight=float(lam), seed=seed).replace(epochs=self.epochs, device="cpu")
            t0 = time.perf_counter()
            r = motune.train(cfg, data=self.data)
            self.train_seconds += time.perf_counter() - t0
            self.trainings += 1
            self.cache[key] = {"lam": float(lam), "f1": r.cross_entropy, "f2": r.l1,
                               "val_accuracy": r.val_accuracy, "fraction_kept": r.fraction_kept}
        return self.cache[key]


def grid_order(n_log: int) -> list[float]:
    """0, then the n_log log-spaced weights coarse to fine: both ends, then bisection."""
    grid = np.logspace(math.log10(LOW), math.log10(HIGH), n_log)
    order, seen = [n_log - 1, 0], {0, n_log - 1}
    intervals = [(0, n_log - 1)]
    while intervals:
        nxt = []
        for a, b in intervals:
            if b - a < 2:
                continue
            m = (a + b) // 2
            if m not in seen:
                order.append(m)
                seen.add(m)
            nxt += [(a, m), (m, b)]
        intervals = nxt
    return [0.0, *(float(grid[i]) for i in order)]


def make_sampler(method: str, seed: int) -> optuna.samplers.BaseSampler:
    if method == "knee":
        return motune.KneeSampler(full_fidelity=False, seed=seed)
    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if method == "nsga2":
        # Deb's textbook operators: with one parameter the defaults (uniform crossover,
        # mutation = resampling with probability 1/n_params = 1) are random search.
        return optuna.samplers.NSGAIISampler(population_size=8, crossover=SBXCrossover(),
                                             mutation=PolynomialMutation(), seed=seed)
    if method == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(method)


def run_method(method: str, seed: int, budget: int, objective: CachedObjective) -> dict[str, Any]:
    """The λ sequence and objective values of one method on one seed, in trial order."""
    t0, train0 = time.perf_counter(), objective.train_seconds
    rows: list[dict[str, float]] = []
    if method == "grid26":
        for lam in grid_order(25)[:budget]:
            rows.append(objective(lam, seed))
    else:
        sampler = make_sampler(method, seed)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        low = 0.0 if method == "knee" else LOW
        if method != "knee":
            for lam in (LOW, HIGH):  # the same two ends KneeSampler starts from
                study.enqueue_trial({PARAM: lam})

        def fn(trial: optuna.Trial) -> tuple[float, float]:
            if method == "knee":
                lam = trial.suggest_float(PARAM, low, HIGH)
            else:
                lam = trial.suggest_float(PARAM, LOW, HIGH, log=True)
            r = objective(lam, seed)
            return r["f1"], r["f2"]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning and the like
            study.optimize(fn, n_trials=budget, gc_after_trial=False)
        rows = [objective(t.params[PARAM], seed) for t in completed(study)]
    wall = time.perf_counter() - t0
    return {"rows": rows, "wall_seconds": wall, "sampler_seconds": wall - (objective.train_seconds - train0)}


def curves(points: np.ndarray, ideal: np.ndarray, nadir: np.ndarray, hv_ref: float,
           knee_ref: np.ndarray, budget: int) -> dict[str, list[float | None]]:
    """Hypervolume fraction and knee distance after each of the first ``budget`` trials."""
    norm = pareto.normalise(points, ideal, nadir)
    hv, dist = [], []
    for n in range(1, budget + 1):
        k = min(n, len(points))
        hv.append(pareto.hypervolume(norm[:k], REFERENCE) / hv_ref)
        i = pareto.knee_index(points[:k], KNEE_CRITERION, KNEE_TOLERANCE)
        dist.append(None if i is None else float(np.linalg.norm(norm[i] - knee_ref)))
    return {"hv_fraction": hv, "knee_distance": dist}


def first_reached(flags: list[bool]) -> int | None:
    return next((n + 1 for n, ok in enumerate(flags) if ok), None)


def stable_from(flags: list[bool]) -> int | None:
    """First n from which every later flag is true (None if the last one is false)."""
    if not flags or not flags[-1]:
        return None
    n = len(flags)
    while n > 0 and flags[n - 1]:
        n -= 1
    return n + 1


def run_seed(seed: int, methods: tuple[str, ...], budget: int, sweep: list[float],
             objective: CachedObjective, log: Callable[[str], None]) -> dict[str, Any]:
    t0 = time.perf_counter()
    sweep_rows = [objective(lam, seed) for lam in sweep]
    log(f"seed {seed}: reference sweep of {len(sweep)} weights in {time.perf_counter() - t0:.0f} s")
    runs: dict[str, dict[str, Any]] = {}
    for method in methods:
        try:
            runs[method] = run_method(method, seed, budget, objective)
        except (ImportError, RuntimeError, ValueError, TypeError) as exc:
            # e.g. GPSampler without scipy: report it in the JSON, don't abort the benchmark
            runs[method] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"seed {seed}: {method:<7} {runs[method].get('wall_seconds', 0):6.1f} s"
            + (f"  ERROR {runs[method]['error']}" if "error" in runs[method] else ""))

    sweep_pts = np.array([[r["f1"], r["f2"]] for r in sweep_rows])
    union = np.vstack([sweep_pts, *(np.array([[r["f1"], r["f2"]] for r in run["rows"]])
                                    for run in runs.values() if run.get("rows"))])
    front = union[pareto.nondominated_mask(union)]
    ideal, nadir = front.min(axis=0), front.max(axis=0)
    sweep_norm = pareto.normalise(sweep_pts, ideal, nadir)
    hv_ref = pareto.hypervolume(sweep_norm, REFERENCE)
    k = pareto.knee_index(sweep_pts, KNEE_CRITERION, KNEE_TOLERANCE)
    knee_ref = sweep_norm[k]
    out: dict[str, Any] = {
        "seed": seed,
        "ideal": ideal.tolist(),
        "nadir": nadir.tolist(),
        "reference_hypervolume": hv_ref,
        "union_hypervolume_fraction": pareto.hypervolume(pareto.normalise(union, ideal, nadir), REFERENCE) / hv_ref,
        "reference_knee": {"lambda": sweep_rows[k]["lam"], "f1": sweep_rows[k]["f1"], "f2": sweep_rows[k]["f2"],
                           "normalised": knee_ref.tolist(), "val_accuracy": sweep_rows[k]["val_accuracy"],
                           "fraction_kept": sweep_rows[k]["fraction_kept"]},
        "sweep": sweep_rows,
        "methods": {},
    }
    for method, run in runs.items():
        if "error" in run:
            out["methods"][method] = {"error": run["error"]}
            continue
        rows = run["rows"]
        pts = np.array([[r["f1"], r["f2"]] for r in rows])
        n_max = min(budget, len(rows))
        c = curves(pts, ideal, nadir, hv_ref, knee_ref, n_max)
        hv_ok = [h >= HV_FRACTION for h in c["hv_fraction"]]
        knee_ok = [d is not None and d <= KNEE_REACHED for d in c["knee_distance"]]
        out["methods"][method] = {
            "trials": len(rows),
            "lambdas": [r["lam"] for r in rows],
            "values": pts.tolist(),
            **c,
            "collapsed_trials": sum(r["fraction_kept"] == 0 for r in rows),  # every dense weight pruned
            "trials_to_95pct_hv": first_reached(hv_ok),
            "trials_to_knee": first_reached(knee_ok),
            "trials_to_knee_stable": stable_from(knee_ok),
            "final_hv_fraction": c["hv_fraction"][-1],
            "final_knee_distance": c["knee_distance"][-1],
            "wall_seconds": run["wall_seconds"],
            "sampler_seconds": run["sampler_seconds"],
        }
    return out


def summarise(per_seed: list[dict[str, Any]], methods: tuple[str, ...], budget: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for m in methods:
        runs = [s["methods"][m] for s in per_seed if m in s["methods"]]
        errors = [r["error"] for r in runs if "error" in r]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            summary[m] = {"error": errors[0] if errors else "not run"}
            continue
        n = max(len(r["hv_fraction"]) for r in ok)

        def med_curve(key: str, ok: list[dict[str, Any]] = ok, n: int = n) -> list[float | None]:
            out = []
            for i in range(n):
                vals = [r[key][min(i, len(r[key]) - 1)] for r in ok]
                vals = [v for v in vals if v is not None]
                out.append(float(np.median(vals)) if vals else None)
            return out

        summary[m] = {
            "trials_to_95pct_hv": median_or_none([r["trials_to_95pct_hv"] for r in ok]),
            "trials_to_knee": median_or_none([r["trials_to_knee"] for r in ok]),
            "trials_to_knee_stable": median_or_none([r["trials_to_knee_stable"] for r in ok]),
            "per_seed_trials_to_95pct_hv": [r["trials_to_95pct_hv"] for r in ok],
            "per_seed_trials_to_knee": [r["trials_to_knee"] for r in ok],
            "per_seed_trials_to_knee_stable": [r["trials_to_knee_stable"] for r in ok],
            "final_hv_fraction": float(np.median([r["final_hv_fraction"] for r in ok])),
            "collapsed_trials": float(np.median([r["collapsed_trials"] for r in ok])),
            "final_knee_distance": median_or_none([r["final_knee_distance"] for r in ok]),
            "trials_per_seed": max(r["trials"] for r in ok),
            "sampler_seconds_per_trial": float(np.median([r["sampler_seconds"] / max(r["trials"], 1) for r in ok])),
            "median_hv_fraction_curve": med_curve("hv_fraction"),
            "median_knee_distance_curve": med_curve("knee_distance"),
            **({"errors": errors} if errors else {}),
        }
    return summary


def verdict(summary: dict[str, Any], budget: int) -> dict[str, Any]:
    """KneeSampler's trials against the best other method's, for both measures."""
    out: dict[str, Any] = {}
    for key in ("trials_to_95pct_hv", "trials_to_knee"):
        knee = summary.get("knee", {}).get(key)
        others = {m: s.get(key) for m, s in summary.items() if m != "knee" and "error" not in s}
        reached = {m: v for m, v in others.items() if v is not None}
        best_m = min(reached, key=reached.get) if reached else None
        best = reached.get(best_m) if best_m else None
        ratio = None if knee is None or best is None else knee / best
        # An undefeated knee is 'met' when no other method gets there within the budget.
        met = knee is not None and (best is None or knee <= TARGET_RATIO * best)
        out[key] = {"knee": knee, "best_other": best_m, "best_other_trials": best,
                    "ratio": ratio, "target_ratio": TARGET_RATIO, "met": met,
                    "note": None if best is not None else f"no other method got there within {budget} trials"}
    return out


def figure(summary: dict[str, Any], out: Path) -> Path:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "hypervolume / reference sweep's (median over seeds)",
        "distance of the knee to the reference knee (median)"))
    for m, s in summary.items():
        if "error" in s:
            continue
        x = list(range(1, len(s["median_hv_fraction_curve"]) + 1))
        fig.add_scatter(x=x, y=s["median_hv_fraction_curve"], name=m, legendgroup=m, row=1, col=1)
        fig.add_scatter(x=x, y=s["median_knee_distance_curve"], name=m, legendgroup=m, showlegend=False, row=1, col=2)
    fig.add_hline(y=HV_FRACTION, line_dash="dot", row=1, col=1)
    fig.add_hline(y=KNEE_REACHED, line_dash="dot", row=1, col=2)
    fig.update_xaxes(title_text="trials")
    fig.update_yaxes(type="log", row=1, col=2)
    fig.update_layout(title="Search efficiency on digits / digits_cnn (bench/samplers.py)")
    return write_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 20 trials, 31-point reference sweep")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0, 1, ...)")
    parser.add_argument("--budget", type=int, default=None, help="trials per method and seed")
    parser.add_argument("--sweep", type=int, default=None, help="log-spaced weights of the reference sweep (plus 0)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (front fidelity)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--json", default=str(RESULTS / "samplers.json"), help="where to write the JSON results")
    parser.add_argument("--html", default=None, help="figure path (default: the JSON path with .html)")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 5)
    budget = args.budget or (20 if args.quick else 40)
    n_sweep = args.sweep or (30 if args.quick else 60)
    methods = tuple(m for m in args.methods.split(",") if m)
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; allowed: {', '.join(METHODS)}")

    info = setup(1)
    t_start = time.perf_counter()
    data = motune.load_dataset("digits")
    objective = CachedObjective(data, args.epochs)
    sweep = [0.0, *np.logspace(math.log10(LOW), math.log10(HIGH), n_sweep).tolist()]
    per_seed = [run_seed(s, methods, budget, sweep, objective, lambda msg: print(msg, flush=True)) for s in range(seeds)]
    summary = summarise(per_seed, methods, budget)
    verdicts = verdict(summary, budget)
    wall = time.perf_counter() - t_start

    out = {
        "benchmark": "samplers",
        "quick": args.quick,
        "setup": {
            "dataset": "digits", "model": "digits_cnn", "optimizer": "adam", "lr": 0.003, "batch_size": 64,
            "epochs_per_trial": args.epochs, "prune": "soft, threshold 1e-3", "seeds": list(range(seeds)),
            "budget": budget, "lambda_range": [LOW, HIGH],
            "reference_sweep": f"0 plus {n_sweep} log-spaced weights in [{LOW}, {HIGH}]",
            "grid": "0 plus 25 log-spaced weights in [1e-6, 1e-1], coarse-to-fine order",
            "peer_start": "the range ends 1e-6 and 0.1 enqueued as trials 1 and 2",
            "knee_sampler": "KneeSampler(full_fidelity=False, seed=seed), defaults otherwise, λ in [0, 0.1]",
            "samplers": {"tpe": "TPESampler(seed)", "nsga2": "NSGAIISampler(population_size=8, crossover=SBXCrossover(), "
                                                             "mutation=PolynomialMutation(), seed)",
                         "gp": "GPSampler(seed)", "random": "RandomSampler(seed)"},
            "knee": {"criterion": KNEE_CRITERION, "tolerance": KNEE_TOLERANCE, "reached_within": KNEE_REACHED},
            "hypervolume": "normalised by ideal/nadir of the nondominated union (all methods + sweep), "
                           "reference (1.1, 1.1), as a fraction of the sweep's",
            "torch_threads": 1,
        },
        "machine": info,
        "load_average_at_end": load_average(),
        "wall_seconds": wall,
        "trainings": objective.trainings,
        "train_seconds": objective.train_seconds,
        "targets": {"ratio_vs_best_other": TARGET_RATIO},
        "verdict": verdicts,
        "methods": summary,
        "per_seed": per_seed,
    }

    print(f"\ndigits / digits_cnn, {args.epochs} epochs per trial, {seeds} seeds, {budget} trials per method; medians over seeds")
    rows = []
    for m in methods:
        s = summary[m]
        if "error" in s:
            rows.append([m, "error", "", "", "", "", "", ""])
            continue
        rows.append([m, s["trials_to_95pct_hv"], s["trials_to_knee"], s["trials_to_knee_stable"],
                     s["final_hv_fraction"], s["final_knee_distance"], s["collapsed_trials"],
                     s["sampler_seconds_per_trial"]])
    print(table(rows, ["method", "trials→95% HV", "trials→knee", "knee stable from", "final HV frac",
                       "final knee dist", "collapsed", "sampler s/trial"]))
    for key, v in verdicts.items():
        flag = "met" if v["met"] else "MISSED"
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}"
        print(f"{key}: knee {v['knee']} vs best other {v['best_other']} {v['best_other_trials']} "
              f"(ratio {ratio}, target <= {TARGET_RATIO:.2f}) {flag}" + (f" [{v['note']}]" if v["note"] else ""))
    for m in methods:
        if "error" in summary[m]:
            print(f"{m}: {summary[m]['error']}")
    print(f"{objective.trainings} trainings ({objective.train_seconds:.0f} s), wall {wall:.0f} s")
    path = write_json(args.json, out)
    html = figure(summary, Path(args.html) if args.html else path.with_suffix(".html"))
    print(f"wrote {path} and {html}")


if __name__ == "__main__":
    main()
