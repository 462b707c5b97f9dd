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
fresh method's points and a dense reference sweep of 0 plus 60 log-spaced λ in [1e-6, 1e-1],
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

Epochs as well as trials. With trial pruning (``motune.trial_pruning``, the rule a
study runs with ``[study] prune = true``) a trial may stop early, so each method also runs
as ``METHOD+prune``: every trial is judged after each epoch against the completed trials
of the same run (same ``FrontPruner`` defaults as a study); a pruned trial costs the
epochs it trained; a collapsed one contributes the end of the front it was heading to
(``trial_pruning.front_end``, also marked for KneeSampler as a study would), a dominated
one contributes nothing. Training is deterministic, so a trial pruned at epoch e has
exactly the first e epochs of the full run: one memoised training (with validation every
epoch) serves both variants. ``epochs_to_95pct_hv`` / ``epochs_to_knee``: the epochs
spent up to and including the trial that gets there. Target (issue 11): KneeSampler with
continuation and pruning (``knee+cont+prune``; ``knee+prune`` is reported too) needs at
most half the epochs of the best Optuna sampler (TPE, NSGA-II, GP, random; with or
without pruning, whichever is better) for both.

Continuation (issue 11): each method also runs as ``METHOD+cont`` and
``METHOD+cont+prune`` (``--cont`` picks which; default all): a trial starts from the
trained network of its parent, the completed trial of the same run with the nearest
smaller λ (:func:`motune.continuation.choose_parent`, the rule a study with ``[study]
continuation = true`` uses; a pruned trial is never a parent), and trains
``continuation_epochs`` (the study's default: half of the front epochs, 5); a trial with no
parent (the smallest λ so far) trains fresh for the full 10. Its cost is the epochs it
trains itself (its parent's are counted where the parent ran). Memoisation keys a warm
training on its lineage: (λ, seed, parent's key, epochs). With pruning, a warm-started
trial is judged only against warm-started completed trials, as in a study. Optuna's
samplers with continuation are not Optuna (it has no continuation: ``run_study(sampler=...)``
would give them motune's); they are listed to separate the sampler's share of the gain
from the lever's, and are not the target's "best Optuna sampler".

Three references, because a continuation front is another front (its networks have
trained along a lineage, 15-40 epochs each; they dominate fresh ones in the middle and do
not collapse at large λ, so the fresh front's cliff and knee are not where its are):

- ``fresh`` (the columns without prefix): the dense sweep of fresh trials, as for every
  method before: hypervolume as a fraction of the sweep's, knee distance to the sweep's
  knee. A continuation run can exceed 1.0 and may never "reach" a knee its front does not
  have.
- ``all``: the nondominated union of the sweep and every point any method found on that
  seed (continuation runs included), its hypervolume and its knee: the best front known.
  Fresh methods can rarely reach it where continuation points define it.
- ``own``: the method's own points after its whole budget (hypervolume and knee): how fast
  the search settles on what it finally finds, each method on its own front. Not a
  quality measure (a search that settles early on a poor knee scores well); read it with
  ``final_knee`` (validation accuracy, fraction kept and lineage epochs of that knee).

Calibration of the pruning rule: on every seed's reference sweep, each sweep trial is
judged against all the other sweep trials (the most references a study could have) for
patience 1-3 and margins 0-0.2; a prune is *false* when a collapsed-judged network ends
alive (above chance, weights left) or a dominance-pruned trial's final point is on the
sweep's front (the JSON lists, per patience, the smallest margin without a false prune).

    python bench/samplers.py            # full: 5 seeds, 40 trials per method, 61-point sweep, all variants
    python bench/samplers.py --quick    # 2 seeds, 20 trials per method, 31-point sweep
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.distributions import FloatDistribution
from optuna.samplers.nsgaii import PolynomialMutation, SBXCrossover
from optuna.trial import FrozenTrial, create_trial

import motune
from motune import pareto
from motune.continuation import choose_parent, continuation_epochs
from motune.sampler import FRONT, FRONT_END_ATTR
from motune.trial_pruning import DEFAULT_MARGIN, DEFAULT_PATIENCE, FrontPruner, Intermediate, collapse_reason, front_end
from motune.trials import CHECKPOINT, FIDELITY, PARAM

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
# The knee measured with collapsed points in the nadir (None, KneeSampler's default), or, with
# --live-knee, without them (0.0: l1's floor), as motune's studies choose it (make_sampler).
KNEE_FLOOR: float | None = None
SAMPLER_TOLERANCE = KNEE_TOLERANCE  # --knee-tolerance: KneeSampler's only (an experiment; a study uses 0.02)
KNEE_REACHED = 0.05  # "reached the knee": within this distance in normalised objectives
HV_FRACTION = 0.95
REFERENCE = np.array([1.1, 1.1])
METHODS = ("knee", "tpe", "nsga2", "gp", "random", "grid26")
OPTUNA_SAMPLERS = ("tpe", "nsga2", "gp", "random")
PRUNE = "+prune"  # suffix of a method run with trial pruning
CONT = "+cont"  # suffix of a method run with warm-start continuation along λ (before +prune: knee+cont+prune)
LAMBDA_DISTRIBUTION = FloatDistribution(0.0, 1.0)  # the study's: suggest_float(PARAM, 0.0, 1.0)
TARGET_RATIO = 1 / 3
TARGET_EPOCH_RATIO = 1 / 2
NUM_CLASSES = 10
CALIBRATION = {"patience": (1, 2, 3), "margin": (0.0, 0.01, 0.02, 0.05, 0.1, 0.2)}


class CachedObjective:
    """Train digits_cnn at (λ, seed), or continue a parent's network at λ, memoised: the result is deterministic.

    A fresh training is keyed by (λ to 12 significant digits, seed); a warm-started one
    (continuation) by (λ, seed, its parent's key, its epochs), so the key is the whole
    lineage back to a fresh network: the same λ continued from another parent is another
    training. Every result keeps its trained weights (``state``), which a child starts from.
    """

    def __init__(self, data: motune.Dataset, epochs: int, continuation_epochs: int) -> None:
        self.data = data
        self.epochs = epochs
        self.continuation_epochs = continuation_epochs
        self.cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.trainings = 0
        self.train_seconds = 0.0
        self.epochs_trained = 0  # by distinct trainings (memoised ones count once)

    def __call__(self, lam: float, seed: int, parent: dict[str, Any] | None = None) -> dict[str, Any]:
        """The result at ``lam``: fresh (``front`` epochs), or from ``parent``'s weights (continuation epochs)."""
        key: tuple[Any, ...] = (f"{lam:.11e}", seed)
        if parent is not None:
            key = (*key, parent["key"], self.continuation_epochs)
        if key not in self.cache:
            epochs = self.epochs if parent is None else self.continuation_epochs
            # The digits study's training settings (motune's defaults), at this run's length, on the CPU.
            # Validation every epoch (what a pruned study does): the intermediates the pruner reads.
            cfg = DIGITS.train_config(l1_weight=float(lam), seed=seed).replace(
                epochs=epochs, device="cpu", eval_every_epoch=True)
            t0 = time.perf_counter()
            # A warm start loads the parent's trained weights, as motune.continuation does from its checkpoint.
            r = motune.train(cfg, data=self.data, init_state=None if parent is None else parent["state"])
            self.train_seconds += time.perf_counter() - t0
            self.trainings += 1
            self.epochs_trained += epochs
            self.cache[key] = {"lam": float(lam), "f1": r.cross_entropy, "f2": r.l1,
                               "val_accuracy": r.val_accuracy, "fraction_kept": r.fraction_kept,
                               "history": [Intermediate(h.epoch, h.val_cross_entropy, h.l1, h.val_accuracy)
                                           for h in r.history],
                               "key": key, "state": r.state_dict, "planned_epochs": epochs,
                               # epochs along the lineage, this training included: what this network cost
                               "lineage_epochs": epochs + (0 if parent is None else parent["lineage_epochs"])}
        return self.cache[key]


def public(row: dict[str, Any]) -> dict[str, Any]:
    """A training's result for the JSON (no weights, history or key)."""
    return {k: v for k, v in row.items() if k not in ("history", "state", "key")}


def judge(row: dict[str, Any], pruner: FrontPruner | None, reference: dict[int, list[Intermediate]]) -> dict[str, Any]:
    """One trial as a study with (or without) trial pruning would record it.

    Returns ``state`` (complete / collapsed / dominated), the ``epochs`` it trained, and
    the point it contributes (``f1``, ``f2``; None for a dominated trial). ``reference``:
    the completed trials the pruner compares with (a study's: same fidelity and warm-start
    status); the trial's planned length is its training's.
    """
    out = {"lam": row["lam"], "val_accuracy": row["val_accuracy"], "fraction_kept": row["fraction_kept"]}
    history, before = row["history"], row["lineage_epochs"] - row["planned_epochs"]
    if pruner is not None:
        for e in range(1, len(history) + 1):
            decision = pruner.prune(history[:e], reference, NUM_CLASSES, row["planned_epochs"])
            if decision is not None:
                point = front_end(history[e - 1]) if decision.collapsed else (None, None)
                state = "collapsed" if decision.collapsed else "dominated"
                return {**out, "state": state, "epochs": e, "lineage_epochs": before + e, "f1": point[0], "f2": point[1],
                        "reason": decision.reason}
    return {**out, "state": "complete", "epochs": len(history), "lineage_epochs": row["lineage_epochs"], "f1": row["f1"],
            "f2": row["f2"]}


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
        # --live-knee: as motune.study.make_sampler builds it (collapsed networks do not set the knee's nadir)
        return motune.KneeSampler(full_fidelity=False, seed=seed, collapsed_nadir=KNEE_FLOOR is None,
                                  tolerance=SAMPLER_TOLERANCE)
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


def split_method(method: str) -> tuple[str, bool, bool]:
    """``METHOD[+cont][+prune]`` -> (base method, continuation, pruning)."""
    base, prune = method.removesuffix(PRUNE), method.endswith(PRUNE)
    base, cont = base.removesuffix(CONT), base.endswith(CONT)
    return base, cont, prune


def run_lambdas(lambdas: Callable[[Callable[[float], dict[str, Any]]], None], seed: int, objective: CachedObjective,
                *, cont: bool, prune: bool) -> list[dict[str, Any]]:
    """Run the trials that ``lambdas`` asks for (it calls ``run_trial(λ)`` once per trial) as a study would.

    Continuation (``cont``): a trial starts from the network of its parent, the trial
    :func:`motune.continuation.choose_parent` picks among the COMPLETE trials so far (the
    nearest smaller λ; a pruned trial is never a parent), and trains ``continuation_epochs``;
    with no parent it trains fresh. Pruning (``prune``): each trial is judged (:func:`judge`)
    against the completed trials of the same warm-start status, as
    :func:`motune.trial_pruning.reference_intermediates` selects them in a study.
    """
    pruner = FrontPruner(DEFAULT_PATIENCE, DEFAULT_MARGIN) if prune else None
    references: dict[bool, dict[int, list[Intermediate]]] = {False: {}, True: {}}  # by warm-started
    done: list[FrozenTrial] = []  # the completed trials, as choose_parent reads them
    results: list[dict[str, Any]] = []  # each trial's training (its CHECKPOINT attribute indexes this list)
    rows: list[dict[str, Any]] = []

    def run_trial(lam: float) -> dict[str, Any]:
        parent = choose_parent(done, lam, FRONT) if cont else None
        result = objective(lam, seed, None if parent is None else results[parent.user_attrs[CHECKPOINT]])
        warm = parent is not None
        row = judge(result, pruner, references[warm])
        row["warm_start_from"] = None if parent is None else parent.number
        number = len(rows)
        if row["state"] == "complete":
            references[warm][number] = result["history"]
            trial = create_trial(params={PARAM: lam}, distributions={PARAM: LAMBDA_DISTRIBUTION},
                                 values=[row["f1"], row["f2"]], user_attrs={FIDELITY: FRONT, CHECKPOINT: number})
            trial.number = number
            done.append(trial)
        results.append(result)
        rows.append(row)
        return row

    lambdas(run_trial)
    return rows


def run_method(method: str, seed: int, budget: int, objective: CachedObjective) -> dict[str, Any]:
    """The trials of one method on one seed, in order: λ, state, epochs, the point each contributes.

    ``METHOD+prune`` judges every trial with the study's pruning rule (:func:`judge`)
    against the completed trials of this run so far; ``METHOD+cont`` warm-starts each
    trial from its parent (:func:`run_lambdas`).
    """
    base, cont, prune = split_method(method)
    t0, train0 = time.perf_counter(), objective.train_seconds

    def drive(run_trial: Callable[[float], dict[str, Any]]) -> None:
        if base == "grid26":
            for lam in grid_order(25)[:budget]:
                run_trial(lam)
            return
        sampler = make_sampler(base, seed)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        if base != "knee":
            for lam in (LOW, HIGH):  # the same two ends KneeSampler starts from
                study.enqueue_trial({PARAM: lam})

        def fn(trial: optuna.Trial) -> tuple[float, float]:
            if base == "knee":
                lam = trial.suggest_float(PARAM, 0.0, HIGH)
            else:
                lam = trial.suggest_float(PARAM, LOW, HIGH, log=True)
            row = run_trial(lam)
            if row["state"] == "collapsed":  # as TrialMonitor.record marks it in a study
                trial.storage.set_trial_system_attr(trial._trial_id, FRONT_END_ATTR, [row["f1"], row["f2"]])
            if row["state"] != "complete":
                raise optuna.TrialPruned(row["reason"])
            return row["f1"], row["f2"]

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning and the like
            study.optimize(fn, n_trials=budget, gc_after_trial=False)

    rows = run_lambdas(drive, seed, objective, cont=cont, prune=prune)
    wall = time.perf_counter() - t0
    return {"rows": rows, "wall_seconds": wall, "sampler_seconds": wall - (objective.train_seconds - train0)}


def points_of(rows: list[dict[str, Any]]) -> np.ndarray:
    """The points the trials contribute (a dominance-pruned trial contributes none), in trial order."""
    return np.array([[r["f1"], r["f2"]] for r in rows if r["f1"] is not None], dtype=float).reshape(-1, 2)


def curves(rows: list[dict[str, Any]], ideal: np.ndarray, nadir: np.ndarray, hv_ref: float,
           knee_ref: np.ndarray, budget: int) -> dict[str, list[Any]]:
    """Hypervolume fraction, knee distance and epochs spent after each of the first ``budget`` trials."""
    hv: list[float] = []
    dist: list[float | None] = []
    spent: list[int] = []
    total = 0
    for n in range(1, budget + 1):
        total += rows[n - 1]["epochs"] if n <= len(rows) else 0
        spent.append(total)
        points = points_of(rows[:n])
        if not len(points):
            hv.append(0.0)
            dist.append(None)
            continue
        norm = pareto.normalise(points, ideal, nadir)
        hv.append(pareto.hypervolume(norm, REFERENCE) / hv_ref)
        i = pareto.knee_index(points, KNEE_CRITERION, KNEE_TOLERANCE, floor=KNEE_FLOOR)
        dist.append(None if i is None else float(np.linalg.norm(norm[i] - knee_ref)))
    return {"hv_fraction": hv, "knee_distance": dist, "epochs": spent}


def epochs_at(n: int | None, spent: list[int]) -> int | None:
    """Epochs spent up to and including trial ``n`` (None: never reached)."""
    return None if n is None else spent[n - 1]


def calibrate(sweep_rows: list[dict[str, Any]], epochs: int) -> dict[str, dict[str, Any]]:
    """The pruning rule on one seed's sweep, each trial judged against all the others, per (patience, margin).

    False prunes: a collapse-pruned trial whose final network is alive (above chance,
    weights left), or a dominance-pruned trial whose final point is on the sweep's front.
    """
    finals = np.array([[r["f1"], r["f2"]] for r in sweep_rows])
    on_front = pareto.nondominated_mask(finals)
    out: dict[str, dict[str, Any]] = {}
    for patience in CALIBRATION["patience"]:
        for margin in CALIBRATION["margin"]:
            pruner = FrontPruner(patience, margin)
            counts = {"collapsed": 0, "dominated": 0, "false_collapsed": 0, "false_dominated": 0, "epochs": 0,
                      "epochs_without_pruning": 0}
            for i, row in enumerate(sweep_rows):
                reference = {j: r["history"] for j, r in enumerate(sweep_rows) if j != i}
                judged = judge(row, pruner, reference)
                counts["epochs"] += judged["epochs"]
                counts["epochs_without_pruning"] += len(row["history"])
                if judged["state"] == "collapsed":
                    counts["collapsed"] += 1
                    counts["false_collapsed"] += collapse_reason(row["history"][-1], NUM_CLASSES) is None
                elif judged["state"] == "dominated":
                    counts["dominated"] += 1
                    counts["false_dominated"] += bool(on_front[i])
            out[f"patience={patience},margin={margin:g}"] = {"patience": patience, "margin": margin, **counts}
    return out


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


def reach(c: dict[str, list[Any]]) -> dict[str, Any]:
    """Trials and epochs until a curve set reaches 95% hypervolume and the knee (None: never)."""
    hv_ok = [h >= HV_FRACTION for h in c["hv_fraction"]]
    knee_ok = [d is not None and d <= KNEE_REACHED for d in c["knee_distance"]]
    n_hv, n_knee, n_stable = first_reached(hv_ok), first_reached(knee_ok), stable_from(knee_ok)
    return {"trials_to_95pct_hv": n_hv, "trials_to_knee": n_knee, "trials_to_knee_stable": n_stable,
            "epochs_to_95pct_hv": epochs_at(n_hv, c["epochs"]), "epochs_to_knee": epochs_at(n_knee, c["epochs"]),
            "epochs_to_knee_stable": epochs_at(n_stable, c["epochs"]),
            "final_hv_fraction": c["hv_fraction"][-1], "final_knee_distance": c["knee_distance"][-1]}


def run_seed(seed: int, methods: tuple[str, ...], budget: int, sweep: list[float],
             objective: CachedObjective, log: Callable[[str], None]) -> dict[str, Any]:
    """Every method on one seed, measured against three references (module docstring, "Three references").

    ``fresh``: the dense sweep of fresh trials, its hypervolume and its knee (the yardstick
    of every method before continuation); ``all``: the nondominated union of that sweep
    and every point any method found on this seed; ``own``: the method's own points after
    its whole budget (how fast the search settles on what it finally finds).
    """
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
        log(f"seed {seed}: {method:<17} {runs[method].get('wall_seconds', 0):6.1f} s"
            + (f"  ERROR {runs[method]['error']}" if "error" in runs[method] else ""))

    sweep_pts = np.array([[r["f1"], r["f2"]] for r in sweep_rows])
    ok = {m: run for m, run in runs.items() if run.get("rows")}
    # Normalisation: for the fresh reference, as before continuation, by the sweep and the fresh
    # methods' points (so their numbers do not move with the continuation runs; a continuation
    # point may land outside [0, 1], which the hypervolume handles); for ``all`` and ``own``,
    # by every point.
    fresh_union = np.vstack([sweep_pts, *(points_of(run["rows"]) for m, run in ok.items() if not split_method(m)[1])])
    union = np.vstack([sweep_pts, *(points_of(run["rows"]) for run in ok.values())])
    bounds = {}
    for name, pts in (("fresh", fresh_union), ("all", union)):
        front = pts[pareto.nondominated_mask(pts)]
        bounds[name] = (front.min(axis=0), front.max(axis=0))

    def reference(points: np.ndarray, norm_by: str) -> tuple[float, np.ndarray, int]:
        """Hypervolume, normalised knee and knee index of a reference point set."""
        norm = pareto.normalise(points, *bounds[norm_by])
        k = pareto.knee_index(points, KNEE_CRITERION, KNEE_TOLERANCE, floor=KNEE_FLOOR)
        return pareto.hypervolume(norm, REFERENCE), norm[k], k

    hv_ref, knee_ref, k = reference(sweep_pts, "fresh")
    hv_all, knee_all, k_all = reference(union, "all")
    ideal, nadir = bounds["fresh"]
    out: dict[str, Any] = {
        "seed": seed,
        "ideal": ideal.tolist(),
        "nadir": nadir.tolist(),
        "ideal_all": bounds["all"][0].tolist(),
        "nadir_all": bounds["all"][1].tolist(),
        "reference_hypervolume": hv_ref,
        "union_hypervolume_fraction": hv_all / reference(sweep_pts, "all")[0],  # all / sweep, same normalisation
        "reference_knee": {"lambda": sweep_rows[k]["lam"], "f1": sweep_rows[k]["f1"], "f2": sweep_rows[k]["f2"],
                           "normalised": knee_ref.tolist(), "val_accuracy": sweep_rows[k]["val_accuracy"],
                           "fraction_kept": sweep_rows[k]["fraction_kept"]},
        "all_knee": {"f1": float(union[k_all, 0]), "f2": float(union[k_all, 1]), "normalised": knee_all.tolist(),
                     "from_sweep": bool(k_all < len(sweep_pts))},
        "sweep": [public(r) for r in sweep_rows],
        "methods": {},
    }
    for method, run in runs.items():
        if "error" in run:
            out["methods"][method] = {"error": run["error"]}
            continue
        rows = run["rows"]
        n_max = min(budget, len(rows))
        c = curves(rows, *bounds["fresh"], hv_ref, knee_ref, n_max)
        ca = curves(rows, *bounds["all"], hv_all, knee_all, n_max)
        hv_own, knee_own, k_own = reference(points_of(rows), "all")
        co = curves(rows, *bounds["all"], hv_own, knee_own, n_max)
        own_rows = [r for r in rows if r["f1"] is not None]
        knee_row = own_rows[k_own]
        out["methods"][method] = {
            "trials": len(rows),
            "lambdas": [r["lam"] for r in rows],
            "states": [r["state"] for r in rows],
            "trial_epochs": [r["epochs"] for r in rows],
            "lineage_epochs": [r["lineage_epochs"] for r in rows],
            "warm_start_from": [r["warm_start_from"] for r in rows],
            "values": [[r["f1"], r["f2"]] for r in rows],
            **c,
            "collapsed_trials": sum(r["fraction_kept"] == 0 for r in rows),  # every dense weight pruned (full run)
            "pruned_collapsed": sum(r["state"] == "collapsed" for r in rows),
            "pruned_dominated": sum(r["state"] == "dominated" for r in rows),
            "total_epochs": c["epochs"][-1],
            **reach(c),
            "all": {"hv_fraction": ca["hv_fraction"], "knee_distance": ca["knee_distance"], **reach(ca)},
            "own": {"hv_fraction": co["hv_fraction"], "knee_distance": co["knee_distance"], **reach(co)},
            # the network at the knee of the method's final front: what a study would hand over
            "final_knee": {key: knee_row[key] for key in ("lam", "f1", "f2", "val_accuracy", "fraction_kept",
                                                          "lineage_epochs")},
            "wall_seconds": run["wall_seconds"],
            "sampler_seconds": run["sampler_seconds"],
        }
    out["calibration"] = calibrate(sweep_rows, objective.epochs)
    return out


def on_epoch_grid(values: list[Any], spent: list[int], grid: list[int]) -> list[Any]:
    """A per-trial curve read at epoch budgets: the value after the last trial that fits in each."""
    out = []
    for x in grid:
        fit = [i for i, e in enumerate(spent) if e <= x]
        out.append(values[fit[-1]] if fit else None)
    return out


def summarise(per_seed: list[dict[str, Any]], methods: tuple[str, ...], budget: int, epochs: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    grid = list(range(epochs, budget * epochs + 1, epochs))
    for m in methods:
        runs = [s["methods"][m] for s in per_seed if m in s["methods"]]
        errors = [r["error"] for r in runs if "error" in r]
        ok = [r for r in runs if "error" not in r]
        if not ok:
            summary[m] = {"error": errors[0] if errors else "not run"}
            continue
        n = max(len(r["hv_fraction"]) for r in ok)

        def median_of(curves: list[list[Any]], n: int) -> list[float | None]:
            out = []
            for i in range(n):
                vals = [c[min(i, len(c) - 1)] for c in curves]
                vals = [v for v in vals if v is not None]
                out.append(float(np.median(vals)) if vals else None)
            return out

        def per_seed_of(key: str, ok: list[dict[str, Any]] = ok) -> list[Any]:
            return [r[key] for r in ok]

        def by_reference(name: str, ok: list[dict[str, Any]] = ok, n: int = n) -> dict[str, Any]:
            runs = [r[name] for r in ok]
            return {
                **{key: median_or_none([u[key] for u in runs]) for key in (
                    "trials_to_95pct_hv", "trials_to_knee", "trials_to_knee_stable",
                    "epochs_to_95pct_hv", "epochs_to_knee", "epochs_to_knee_stable")},
                **{f"per_seed_{key}": [u[key] for u in runs] for key in (
                    "trials_to_95pct_hv", "trials_to_knee", "epochs_to_95pct_hv", "epochs_to_knee")},
                "final_hv_fraction": float(np.median([u["final_hv_fraction"] for u in runs])),
                "final_knee_distance": median_or_none([u["final_knee_distance"] for u in runs]),
                "median_hv_fraction_curve": median_of([u["hv_fraction"] for u in runs], n),
                "median_knee_distance_curve": median_of([u["knee_distance"] for u in runs], n),
            }

        summary[m] = {
            **{key: median_or_none(per_seed_of(key)) for key in (
                "trials_to_95pct_hv", "trials_to_knee", "trials_to_knee_stable",
                "epochs_to_95pct_hv", "epochs_to_knee", "epochs_to_knee_stable")},
            **{f"per_seed_{key}": per_seed_of(key) for key in (
                "trials_to_95pct_hv", "trials_to_knee", "trials_to_knee_stable", "epochs_to_95pct_hv", "epochs_to_knee")},
            "all": by_reference("all"),
            "own": by_reference("own"),
            "final_knee": {key: float(np.median([r["final_knee"][key] for r in ok]))
                           for key in ("val_accuracy", "fraction_kept", "lineage_epochs")},
            "per_seed_final_knee": per_seed_of("final_knee"),
            "median_lineage_epochs": float(np.median([e for r in ok for e in r["lineage_epochs"]])),
            "final_hv_fraction": float(np.median(per_seed_of("final_hv_fraction"))),
            "collapsed_trials": float(np.median(per_seed_of("collapsed_trials"))),
            "pruned_collapsed": float(np.median(per_seed_of("pruned_collapsed"))),
            "pruned_dominated": float(np.median(per_seed_of("pruned_dominated"))),
            "total_epochs": float(np.median(per_seed_of("total_epochs"))),
            "final_knee_distance": median_or_none(per_seed_of("final_knee_distance")),
            "trials_per_seed": max(r["trials"] for r in ok),
            "sampler_seconds_per_trial": float(np.median([r["sampler_seconds"] / max(r["trials"], 1) for r in ok])),
            "median_hv_fraction_curve": median_of(per_seed_of("hv_fraction"), n),
            "median_knee_distance_curve": median_of(per_seed_of("knee_distance"), n),
            "epoch_grid": grid,
            "median_hv_fraction_by_epochs": median_of([on_epoch_grid(r["hv_fraction"], r["epochs"], grid) for r in ok],
                                                      len(grid)),
            "median_knee_distance_by_epochs": median_of(
                [on_epoch_grid(r["knee_distance"], r["epochs"], grid) for r in ok], len(grid)),
            **({"errors": errors} if errors else {}),
        }
    return summary


def _best(summary: dict[str, Any], key: str, candidates: list[str],
          reference: str = "fresh") -> tuple[str | None, float | None]:
    reached = {m: measures(summary[m], reference).get(key) for m in candidates if m in summary and "error" not in summary[m]}
    reached = {m: v for m, v in reached.items() if v is not None}
    best_m = min(reached, key=reached.get) if reached else None
    return best_m, reached.get(best_m) if best_m else None


def measures(s: dict[str, Any], reference: str) -> dict[str, Any]:
    """A method's summary measured against the ``fresh`` sweep, the ``all`` union or its ``own`` final front."""
    return s if reference == "fresh" else s[reference]


def verdict(summary: dict[str, Any], budget: int) -> dict[str, Any]:
    """KneeSampler against the others: trials (no pruning, as before) and epochs (with pruning, and with continuation).

    Epoch targets: ``knee+prune`` and ``knee+cont+prune`` against the best Optuna sampler
    (TPE, NSGA-II, GP, random, with or without pruning; Optuna has no continuation), each
    against each reference. Keys: ``KEY`` (fresh reference, as before), ``KEY:METHOD@REFERENCE``.
    """
    out: dict[str, Any] = {}
    plain = [m for m in summary if m != "knee" and split_method(m)[1:] == (False, False)]
    optuna_any = [m for m in summary if split_method(m)[0] in OPTUNA_SAMPLERS and not split_method(m)[1]]
    checks = [("trials_to_95pct_hv", "knee", plain, TARGET_RATIO, "fresh"),
              ("trials_to_knee", "knee", plain, TARGET_RATIO, "fresh")]
    # Not a target: Optuna's samplers driving motune's continuation (run_study(sampler=...) would do that).
    optuna_cont = [m for m in summary if split_method(m)[0] in OPTUNA_SAMPLERS and split_method(m)[1]]
    for ours, others in (("knee" + PRUNE, optuna_any), ("knee" + CONT + PRUNE, optuna_any),
                         ("knee" + CONT + PRUNE, optuna_cont)):
        for reference in ("fresh", "all", "own"):
            checks += [("epochs_to_95pct_hv", ours, others, TARGET_EPOCH_RATIO, reference),
                       ("epochs_to_knee", ours, others, TARGET_EPOCH_RATIO, reference)]
    for key, ours, others, target, reference in checks:
        if not others:
            continue
        if ours not in summary or "error" in summary[ours]:
            continue
        knee = measures(summary[ours], reference).get(key)
        best_m, best = _best(summary, key, others, reference)
        ratio = None if knee is None or best is None else knee / best
        # An undefeated knee is 'met' when no other method gets there within the budget.
        met = knee is not None and (best is None or knee <= target * best)
        name = key if ours in ("knee", "knee" + PRUNE) and reference == "fresh" else f"{key}:{ours}@{reference}"
        if others is optuna_cont:
            name += ":vs_optuna_with_continuation"
        out[name] = {"method": ours, "reference": reference, "knee": knee, "best_other": best_m,
                     "target": others is not optuna_cont,
                     "best_other_value": best, "ratio": ratio, "target_ratio": target, "met": met,
                     "note": None if best is not None else f"no other method got there within {budget} trials"}
    return out


def calibration_summary(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """The calibration counts summed over seeds, and the most aggressive setting without a false prune."""
    rows: dict[str, dict[str, Any]] = {}
    for seed in per_seed:
        for key, c in seed["calibration"].items():
            agg = rows.setdefault(key, {k: 0 for k in c} | {"patience": c["patience"], "margin": c["margin"]})
            for k, v in c.items():
                if k not in ("patience", "margin"):
                    agg[k] += v
    for r in rows.values():
        r["epochs_saved_fraction"] = 1 - r["epochs"] / r["epochs_without_pruning"]
        r["false_prunes"] = r["false_collapsed"] + r["false_dominated"]
    safe_margin = {}  # per patience: the smallest margin with no false prune
    for r in sorted(rows.values(), key=lambda r: (r["patience"], r["margin"])):
        if r["false_prunes"] == 0:
            safe_margin.setdefault(r["patience"], r["margin"])
    return {"settings": list(rows.values()), "smallest_safe_margin": safe_margin,
            "defaults": {"patience": DEFAULT_PATIENCE, "margin": DEFAULT_MARGIN}}


def figure(summary: dict[str, Any], out: Path) -> Path:
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=(
        "hypervolume / reference sweep's (median over seeds)", "distance of the knee to the reference knee (median)",
        "hypervolume against epochs spent", "knee distance against epochs spent"))
    for m, s in summary.items():
        if "error" in s:
            continue
        x = list(range(1, len(s["median_hv_fraction_curve"]) + 1))
        dash = {(False, False): None, (False, True): "dot", (True, False): "dash", (True, True): "dashdot"}[
            split_method(m)[1:]]
        line = {"dash": dash}
        fig.add_scatter(x=x, y=s["median_hv_fraction_curve"], name=m, legendgroup=m, line=line, row=1, col=1)
        fig.add_scatter(x=x, y=s["median_knee_distance_curve"], name=m, legendgroup=m, showlegend=False, line=line,
                        row=1, col=2)
        fig.add_scatter(x=s["epoch_grid"], y=s["median_hv_fraction_by_epochs"], name=m, legendgroup=m, showlegend=False,
                        line=line, row=2, col=1)
        fig.add_scatter(x=s["epoch_grid"], y=s["median_knee_distance_by_epochs"], name=m, legendgroup=m,
                        showlegend=False, line=line, row=2, col=2)
    for row in (1, 2):
        fig.add_hline(y=HV_FRACTION, line_dash="dot", row=row, col=1)
        fig.add_hline(y=KNEE_REACHED, line_dash="dot", row=row, col=2)
        fig.update_yaxes(type="log", row=row, col=2)
    fig.update_xaxes(title_text="trials", row=1)
    fig.update_xaxes(title_text="epochs", row=2)
    fig.update_layout(title="Search efficiency on digits / digits_cnn (bench/samplers.py)", height=900)
    return write_figure(fig, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, 20 trials, 31-point reference sweep")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (0, 1, ...)")
    parser.add_argument("--budget", type=int, default=None, help="trials per method and seed")
    parser.add_argument("--sweep", type=int, default=None, help="log-spaced weights of the reference sweep (plus 0)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per trial (front fidelity)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    parser.add_argument("--prune", choices=("both", "on", "off"), default="both",
                        help="run each method with trial pruning (METHOD+prune), without, or both (default)")
    parser.add_argument("--cont", default=",".join(METHODS),
                        help="comma-separated methods that also run with continuation (METHOD+cont[+prune]); '' for none")
    parser.add_argument("--continuation-epochs", type=int, default=None,
                        help="epochs of a warm-started trial (default: the study's, half of --epochs)")
    parser.add_argument("--live-knee", action="store_true",
                        help="measure the knee without collapsed points in the nadir (pareto.knee_index floor=0) and run "
                             "KneeSampler(collapsed_nadir=False), as motune.study.make_sampler does")
    parser.add_argument("--knee-tolerance", type=float, default=KNEE_TOLERANCE,
                        help="KneeSampler's tolerance (an experiment: studies use the default; the knee is always "
                             f"measured with {KNEE_TOLERANCE})")
    parser.add_argument("--json", default=str(RESULTS / "samplers.json"), help="where to write the JSON results")
    parser.add_argument("--html", default=None, help="figure path (default: the JSON path with .html)")
    args = parser.parse_args()
    global KNEE_FLOOR, SAMPLER_TOLERANCE
    KNEE_FLOOR = 0.0 if args.live_knee else None
    SAMPLER_TOLERANCE = args.knee_tolerance
    seeds = args.seeds or (2 if args.quick else 5)
    budget = args.budget or (20 if args.quick else 40)
    n_sweep = args.sweep or (30 if args.quick else 60)
    methods = tuple(m for m in args.methods.split(",") if m)
    with_cont = tuple(m for m in args.cont.split(",") if m)
    unknown = set(methods + with_cont) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}; allowed: {', '.join(METHODS)}")
    variants = {"both": ("", PRUNE), "on": (PRUNE,), "off": ("",)}[args.prune]
    methods = tuple(m + c + v for m in methods for c in ("", CONT)[:1 + (m in with_cont)] for v in variants)
    study = copy.deepcopy(DIGITS)
    study.train.front_epochs = args.epochs
    study.study.continuation_epochs = args.continuation_epochs
    cont_epochs = continuation_epochs(study)  # the study's rule: [study] continuation_epochs, else half of front_epochs

    info = setup(1)
    load_at_start = load_average()
    t_start = time.perf_counter()
    data = motune.load_dataset("digits")
    objective = CachedObjective(data, args.epochs, cont_epochs)
    sweep = [0.0, *np.logspace(math.log10(LOW), math.log10(HIGH), n_sweep).tolist()]
    per_seed = [run_seed(s, methods, budget, sweep, objective, lambda msg: print(msg, flush=True)) for s in range(seeds)]
    summary = summarise(per_seed, methods, budget, args.epochs)
    verdicts = verdict(summary, budget)
    calibration = calibration_summary(per_seed)
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
            "knee_sampler": f"KneeSampler(full_fidelity=False, seed=seed, collapsed_nadir={KNEE_FLOOR is None}, "
                            f"tolerance={SAMPLER_TOLERANCE}), "
                            "defaults otherwise, λ in [0, 0.1]",
            "samplers": {"tpe": "TPESampler(seed)", "nsga2": "NSGAIISampler(population_size=8, crossover=SBXCrossover(), "
                                                             "mutation=PolynomialMutation(), seed)",
                         "gp": "GPSampler(seed)", "random": "RandomSampler(seed)"},
            "knee": {"criterion": KNEE_CRITERION, "tolerance": KNEE_TOLERANCE, "floor": KNEE_FLOOR,
                     "reached_within": KNEE_REACHED},
            "hypervolume": "normalised by ideal/nadir of the nondominated union (all methods + sweep), "
                           "reference (1.1, 1.1), as a fraction of the sweep's",
            "torch_threads": 1,
            "continuation": f"METHOD{CONT}: each trial from the network of its parent (motune.continuation."
                            f"choose_parent among the run's completed trials), {cont_epochs} epochs",
            "continuation_epochs": cont_epochs,
            "references": "fresh: the sweep of fresh trials (its HV and knee); all: the nondominated union of the "
                          "sweep and every method's points on the seed; own: the method's own points after the budget",
            "trial_pruning": f"METHOD{PRUNE}: FrontPruner(patience={DEFAULT_PATIENCE}, margin={DEFAULT_MARGIN}) after "
                             "every epoch against the run's completed trials; validation every epoch in all trainings",
        },
        "machine": info,
        "load_average_at_start": load_at_start,
        "load_average_at_end": load_average(),
        "wall_seconds": wall,
        "trainings": objective.trainings,
        "epochs_trained": objective.epochs_trained,
        "train_seconds": objective.train_seconds,
        "targets": {"ratio_vs_best_other": TARGET_RATIO, "epoch_ratio_vs_best_optuna_sampler": TARGET_EPOCH_RATIO},
        "verdict": verdicts,
        "calibration": calibration,
        "methods": summary,
        "per_seed": per_seed,
    }

    print(f"\ndigits / digits_cnn, {args.epochs} epochs per trial, {seeds} seeds, {budget} trials per method; medians over seeds")
    rows = []
    for m in methods:
        s = summary[m]
        if "error" in s:
            rows.append([m, "error"] + [""] * 15)
            continue
        a, o, fk = s["all"], s["own"], s["final_knee"]
        rows.append([m, s["trials_to_95pct_hv"], s["epochs_to_95pct_hv"], s["trials_to_knee"], s["epochs_to_knee"],
                     s["trials_to_knee_stable"], a["epochs_to_95pct_hv"], a["epochs_to_knee"],
                     o["epochs_to_95pct_hv"], o["epochs_to_knee"],
                     s["final_hv_fraction"], s["final_knee_distance"], s["collapsed_trials"],
                     f"{s['pruned_collapsed']:g}/{s['pruned_dominated']:g}", s["total_epochs"],
                     f"{100 * fk['val_accuracy']:.1f}% / {100 * fk['fraction_kept']:.1f}% / {fk['lineage_epochs']:g}",
                     s["sampler_seconds_per_trial"]])
    print(table(rows, ["method", "trials→95% HV", "epochs→95% HV", "trials→knee", "epochs→knee", "knee stable from",
                       "all: e→95% HV", "all: e→knee", "own: e→95% HV", "own: e→knee",
                       "final HV frac", "final knee dist", "collapsed", "pruned c/d", "epochs",
                       "knee: val acc / kept / epochs", "sampler s/trial"]))
    for key, v in verdicts.items():
        flag = ("met" if v["met"] else "MISSED") if v["target"] else ("(info) within" if v["met"] else "(info) not within")
        ratio = "-" if v["ratio"] is None else f"{v['ratio']:.2f}"
        print(f"{key}: {v['method']} {v['knee']} vs best other {v['best_other']} {v['best_other_value']} "
              f"(ratio {ratio}, target <= {v['target_ratio']:.2f}) {flag}" + (f" [{v['note']}]" if v["note"] else ""))
    print(f"\npruning rule on the reference sweeps (each trial against all others; {seeds} seeds summed)")
    print(table([[r["patience"], r["margin"], r["collapsed"], r["false_collapsed"], r["dominated"], r["false_dominated"],
                  f"{100 * r['epochs_saved_fraction']:.1f}%"] for r in calibration["settings"]],
                ["patience", "margin", "collapsed", "false", "dominated", "false", "epochs saved"]))
    safe = calibration["smallest_safe_margin"]
    print("smallest margin without a false prune: "
          + (", ".join(f"patience {p}: {m:g}" for p, m in safe.items()) or "none")
          + f"; defaults: patience {DEFAULT_PATIENCE}, margin {DEFAULT_MARGIN:g}")
    for m in methods:
        if "error" in summary[m]:
            print(f"{m}: {summary[m]['error']}")
    print(f"{objective.trainings} trainings, {objective.epochs_trained} epochs ({objective.train_seconds:.0f} s), "
          f"wall {wall:.0f} s, load average {load_at_start} -> {out['load_average_at_end']}")
    path = write_json(args.json, out)
    html = figure(summary, Path(args.html) if args.html else path.with_suffix(".html"))
    print(f"wrote {path} and {html}")


if __name__ == "__main__":
    main()
