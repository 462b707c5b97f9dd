"""Parallel search: does KneeSampler confirm the same knee, and sooner, with more workers?

Simulation, no training: each trial "trains" by sleeping ``--unit`` seconds and returns a
known front's point for its λ. KneeSampler (defaults: start weights 0 and 0.1, angle
knee, tolerance 0.02, full-fidelity retrain of the knee) drives a plain Optuna study,
stopped once the sampler says it has converged (the knee confirmed by completed trials
and its full-fidelity retrain completed) or after ``--budget`` trials; the retrain sleeps
``--full-units`` units (default 1; motune's retrain trains 3x the front epochs). Modes:
``threads`` (one process, ``study.optimize(n_jobs=N)``, in-memory storage), ``journal``
(N processes, each ``study.optimize`` on one journal file opened as ``motune run
--workers N`` opens it, :func:`motune.storage.open_storage`, planning in turn on the lock
motune uses for it, :func:`motune.storage.planning_lock_for`: its ``.plan`` file; the
processes start their searches together once all have loaded the study, so that the
wall time is the search's, not the processes' start-up, which bench/workers.py
measures), ``server`` (the same on the database server of ``--server``, default the
local PostgreSQL, planning in turn on a :class:`motune.DatabaseLock`: workers as on
several machines; each run's study is deleted afterwards) and ``sim`` (N simulated
workers asking ``motune.sampler.plan_weight`` in turn on discrete events: no Optuna, no
sleeping, the sampler's decisions alone, deterministic).

Fronts: the synthetic fronts of tests/test_sampler.py (``sharp`` polyline, ``smooth``
(1 - x²)/(1 + 30x), ``flat`` with a long straight stretch, ``short``: the smooth one with
f2 in [0, 35] so that λ = 0.1 stops inside the front), issue 12's ``sqrt`` front
(f1 = 0.3 + 2t, f2 = 3000 (1 - √t)²) and ``digits``: a real front replayed, the results
(validation cross-entropy, l1) of the digits study's network trained at 0 and 48
log-spaced λ in [1e-6, 1] (front epochs, one seed), cached in bench/digits_sweep.json
(``python bench/parallel.py --sweep`` trains it again, a few minutes). A trial at λ
returns the swept result at the nearest swept λ (in log λ): noise, plateaus and the
collapsed tail as they are.

Per front, mode and worker count (medians over ``--repeats``): ``trials`` to the knee
(trials that began training before the knee's retrain completed, that one included);
``wall`` to the knee in units of one trial (first trial's start to the retrain's end);
``dist``: worst distance of the confirmed knee (normalised by the front's own ideal and
nadir) from the 1-worker knee; ``extra``: trials idle workers guessed (``knee:role`` = extra),
``hits``: those of them the one-worker search then asked for (the rest were wasted);
``fulls``: full-fidelity retrains begun (more than 1: an idle worker's early retrain of a
knee that then moved, wasted); with ``sim-cont``, ``lineage_units``: the training time
along the knee's lineage (its retrain, its front trial, that one's parent, ...): each
starts from the one before, so it is the floor of the wall time for any number of workers;
``tail``: trials whose result lies within 0.02 (normalised) of the front's far end, where
it is flat or training has collapsed. Targets (issue 12): the same knee at every worker
count (dist <= 0.02); at 8 workers, wall <= 1/2 of one worker's on fronts that need >= 6
sequential trials, and trials <= 2x the sequential count.

    python bench/parallel.py --quick     # threads + journal, 1..16 workers, 50 ms trials, 1 repeat
    python bench/parallel.py --modes sim # the same, simulated (seconds, deterministic)
    python bench/parallel.py --unit 0.25 --repeats 1 --fronts sqrt,digits,smooth
    python bench/parallel.py             # 100 ms trials, 3 repeats
    python bench/parallel.py --sweep     # retrain the digits sweep (bench/digits_sweep.json)
    python bench/parallel.py --modes server --workers 1,8 --unit 0.25   # processes on the local PostgreSQL
"""

from __future__ import annotations

import argparse
import dataclasses
import heapq
import itertools
import json
import multiprocessing
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, machine_info, table, write_json

from motune.sampler import (
    EXTRA,
    FULL,
    KneeSampler,
    SearchRules,
    TrialRecord,
    plan_weight,
    read_trials,
    replay,
    search_front,
)
from motune.storage import open_storage, planning_lock_for

Front = Callable[[float], np.ndarray]
SWEEP = Path(__file__).resolve().parent / "digits_sweep.json"
SWEEP_LAMBDAS = [0.0, *np.logspace(-6, 0, 48).tolist()]


def _dense(f1: np.ndarray, f2: np.ndarray) -> Front:
    return lambda lam: np.array([f1[i := int(np.argmin((1 - lam) * f1 + lam * f2))], f2[i]])


def _polyline(vertices: list[tuple[float, float]]) -> Front:
    v = np.asarray(vertices, dtype=float)
    return lambda lam: v[np.argmin((1 - lam) * v[:, 0] + lam * v[:, 1])]


def sweep_digits(path: Path = SWEEP) -> dict[str, Any]:
    """Train the digits study's network (front epochs, seed 0) at every swept λ; write the results."""
    from motune.config import StudyConfig
    from motune.study import cached_dataset
    from motune.train import train

    config = StudyConfig()
    rows = []
    for lam in SWEEP_LAMBDAS:
        result = train(config.train_config(l1_weight=lam, seed=0), data=cached_dataset(config))
        rows.append({"lambda": lam, "cross_entropy": round(result.cross_entropy, 6), "l1": round(result.l1, 4),
                     "val_accuracy": round(result.val_accuracy, 4), "fraction_kept": round(result.fraction_kept, 4)})
        print(f"λ = {lam:.3g}: {rows[-1]}", flush=True)
    payload = {"command": "python bench/parallel.py --sweep", "study": "digits (motune defaults), front epochs, seed 0",
               "points": rows}
    path.write_text(json.dumps(payload, indent=1) + "\n")
    return payload


def _replayed(points: list[dict[str, Any]]) -> Front:
    lams = np.array([p["lambda"] for p in points])
    values = np.array([[p["cross_entropy"], p["l1"]] for p in points])
    logs = np.log(np.where(lams > 0, lams, np.nan))

    def front(lam: float) -> np.ndarray:
        if lam <= 0.0:
            return values[int(np.argmin(lams))]
        return values[int(np.nanargmin(np.abs(logs - np.log(lam))))]

    return front


def fronts() -> dict[str, Front]:
    """The synthetic fronts of tests/test_sampler.py, issue 12's, and the replayed digits front."""
    x = np.linspace(0.0, 1.0, 200_001)
    y = (1 - x**2) / (1 + 30 * x)
    flat_v = [(0.05, 3000.0), (0.08, 600.0), (0.8, 100.0), (2.3, 0.0)]
    flat = np.concatenate(
        [np.asarray(a) + np.linspace(0, 1, 400)[:, None] * (np.asarray(b) - np.asarray(a)) for a, b in itertools.pairwise(flat_v)]
    )
    sweep = json.loads(SWEEP.read_text()) if SWEEP.exists() else sweep_digits()
    return {
        "sharp": _polyline([(0.05, 3000.0), (0.1, 800.0), (0.15, 200.0), (0.4, 60.0), (2.3, 0.0)]),
        "smooth": _dense(0.05 + 2.25 * x, 3000.0 * y),
        "flat": _dense(flat[:, 0], flat[:, 1]),
        "short": _dense(0.05 + 2.25 * x, 35.0 * y),
        "sqrt": _dense(0.3 + 2 * x, 3000.0 * (1 - np.sqrt(x)) ** 2),
        "digits": _replayed(sweep["points"]),
    }


FRONTS: dict[str, Front] = {}  # filled in main(); forked worker processes inherit it
SERVER = "postgresql://postgres@127.0.0.1:5432/test"  # --server: the database of the "server" mode


def _objective(front: Front, unit: float, full_units: float) -> Callable[[optuna.Trial], tuple[float, float]]:
    def objective(trial: optuna.Trial) -> tuple[float, float]:
        lam = trial.suggest_float("l1_weight", 0.0, 1.0)
        trial.set_user_attr("began", time.time())
        time.sleep(unit * (full_units if KneeSampler.fidelity(trial) == FULL else 1.0))
        v = front(lam)
        trial.set_user_attr("ended", time.time())
        return float(v[0]), float(v[1])

    return objective


def _optimize(study: optuna.Study, front: Front, unit: float, full_units: float, budget: int, n_jobs: int) -> None:
    sampler = study.sampler
    assert isinstance(sampler, KneeSampler)

    def stop(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if sampler.is_converged(study) or len(study.get_trials(deepcopy=False)) >= budget:
            study.stop()

    study.optimize(_objective(front, unit, full_units), n_trials=budget, n_jobs=n_jobs, callbacks=[stop])


def _process_worker(url: str, study_name: str, name: str, unit: float, full_units: float, budget: int,
                    ready: Any) -> None:
    """One worker process: the study on ``url``, planning in turn on the lock motune uses for that storage."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=study_name, storage=open_storage(url),
                              sampler=KneeSampler(seed=0, planning_lock=planning_lock_for(url, study_name)))
    ready.wait()  # all workers loaded: start-up is bench/workers.py's measure, not this one's
    _optimize(study, FRONTS[name], unit, full_units, budget, 1)


def run(name: str, mode: str, workers: int, unit: float, budget: int, full_units: float = 1.0,
        server: str = SERVER) -> dict[str, Any]:
    """One search with ``workers`` threads, journal processes or simulated workers; the figures of one table cell."""
    front = FRONTS[name]
    if mode in ("sim", "sim-cont"):
        return simulate(front, workers, budget, full_units, continuation=mode == "sim-cont")
    if mode == "threads":
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=KneeSampler(seed=0))
        _optimize(study, front, unit, full_units, budget, workers)
    else:  # worker processes on a journal file, or on the database server of --server
        url = f"journal:{Path(tempfile.mkdtemp(prefix='motune-parallel-'), 'study.journal')}" if mode == "journal" else server
        study_name = f"parallel-{uuid.uuid4().hex[:8]}"
        storage = open_storage(url)
        study = optuna.create_study(study_name=study_name, storage=storage, directions=["minimize", "minimize"])
        ctx = multiprocessing.get_context("fork")
        ready = ctx.Barrier(workers)
        procs = [ctx.Process(target=_process_worker, args=(url, study_name, name, unit, full_units, budget, ready))
                 for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        trials = study.get_trials(deepcopy=False)
        if mode == "server":
            optuna.delete_study(study_name=study_name, storage=storage)
        return _measure_trials(trials, unit, front)
    return _measure_trials(study.get_trials(deepcopy=False), unit, front)


def _measure_trials(trials: list[optuna.trial.FrozenTrial], unit: float, front: Front) -> dict[str, Any]:
    trials = [t for t in trials if "began" in t.user_attrs]
    spans = [(t.user_attrs["began"] / unit, t.user_attrs.get("ended", np.inf) / unit) for t in trials]
    return measure(read_trials(trials), spans, front)


def simulate(front: Front, workers: int, budget: int, full_units: float = 1.0, continuation: bool = False) -> dict[str, Any]:
    """The search with ``workers`` simulated workers: no Optuna, no sleeping, the sampler's own planning.

    Discrete events: a trial takes one unit (a full-fidelity one ``full_units``); whenever
    workers are free they ask :func:`motune.sampler.plan_weight` in turn, as
    ``KneeSampler`` does, and one that gets ``None`` waits for the next result. The
    figures are those of the sampler's decisions alone, without the machine's noise or
    the sampler's own time. ``continuation``: as motune's default study, a front trial
    with a parent (the plan's ``parent`` weight) trains half a unit
    (``continuation_epochs``), and one whose parent still runs waits for it on its
    worker (``motune.continuation.wait_for_parent``).
    """
    rules, records, spans = SearchRules(), [], []
    parents: list[float | None] = []  # each trial's planned parent weight
    running: list[tuple[float, int]] = []
    now, free = 0.0, workers
    while len(records) < budget:
        while free and len(records) < budget and (plan := plan_weight(records, rules)) is not None:
            lam, fidelity, role, parent = plan.lam, plan.fidelity, plan.role, plan.parent
            start, length = now, full_units if fidelity == FULL else 1.0
            if continuation and parent is not None:
                length = length if fidelity == FULL else 0.5
                start = max([now] + [spans[r.number][1] for r in records if r.pending and r.lam == parent])
            records.append(TrialRecord(len(records), lam, TrialState.RUNNING, fidelity, None, role))
            parents.append(parent)
            spans.append((now, start + length))
            heapq.heappush(running, (spans[-1][1], len(records) - 1))
            free -= 1
        if not running:
            break
        now, number = heapq.heappop(running)
        r = records[number]
        v = front(r.lam)
        records[number] = dataclasses.replace(r, state=TrialState.COMPLETE, values=(float(v[0]), float(v[1])))
        free += 1
        if replay(records, rules).next is None:
            break
    out = measure(records, spans, front)
    if continuation:
        out["lineage_units"] = lineage_units(records, parents, out["knee_lambda"], full_units)
    return out


def lineage_units(records: list[TrialRecord], parents: list[float | None], knee_lam: float | None,
                  full_units: float) -> float | None:
    """Training time along the knee's lineage: its retrain, its front trial, that one's parent, ... (trial units).

    With continuation each of these starts from the one before, so no number of workers
    finishes the knee sooner than this (the same knee network means the same lineage).
    """
    if knee_lam is None:
        return None
    done = [r for r in records if not r.pending]
    node = next((r for r in done if r.fidelity == FULL and r.lam == knee_lam), None)
    total = 0.0 if node is None else full_units
    node = next((r for r in done if r.fidelity != FULL and r.lam == knee_lam), None)
    while node is not None:
        parent = parents[node.number]
        total += 1.0 if parent is None else 0.5
        node = None if parent is None else next((r for r in done if r.fidelity != FULL and r.lam == parent), None)
    return total


def measure(records: list[TrialRecord], spans: list[tuple[float, float]], front: Front) -> dict[str, Any]:
    """Trials and wall time to the knee, the knee (normalised), guesses, retrains and tail trials.

    ``records`` are the study's trials (:func:`motune.sampler.read_trials`) and ``spans``
    their (start, end) in trial units, in the same order. The knee counts as found at the
    first result after which the study has converged (:func:`motune.sampler.replay`: the
    one-worker search has read its knee's completed retrain); a retrain guessed early
    counts from then, not from its own end, and a wasted one counts as a trial.
    """
    rules = SearchRules()
    ends = sorted(end for _, end in spans if np.isfinite(end))
    done_at = next((e for e in ends if replay([r for r, (_, end) in zip(records, spans) if end <= e and not r.pending],
                                                rules).next is None), ends[-1])
    t0 = min(start for start, _ in spans)
    before = [r for r, (start, _) in zip(records, spans) if start < done_at]
    state = replay([r for r, (_, end) in zip(records, spans) if end <= done_at and not r.pending], rules)
    knee_front = search_front(state.records, rules)
    ideal, nadir = front(0.0), front(1.0)
    lo, span = np.array([ideal[0], nadir[1]]), np.abs(nadir - ideal)
    end = (nadir - lo) / span
    knee = None if knee_front.knee is None else knee_front.records[knee_front.knee]
    tail = sum(r.values is not None and np.hypot(*((np.asarray(r.values) - lo) / span - end)) <= 0.02 for r in before)
    return {
        "converged": state.next is None,
        "trials": len(before),
        "trials_total": len(records),
        "wall_units": done_at - t0,
        "knee": None if knee is None else ((np.asarray(knee.values) - lo) / span).tolist(),
        "knee_lambda": None if knee is None else knee.lam,
        "extra": sum(r.role == EXTRA for r in before),
        "hits": sum(r.role == EXTRA for r in state.records),
        "fulls": sum(r.fidelity == FULL for r in before),
        "tail": int(tail),
        "lambdas": [r.lam for r in before],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 ms trials, 1 repeat")
    parser.add_argument("--sweep", action="store_true", help="retrain the digits sweep into bench/digits_sweep.json and exit")
    parser.add_argument("--workers", default="1,2,4,8,16", help="comma-separated worker counts (default 1,2,4,8,16)")
    parser.add_argument("--modes", default="threads,journal",
                        help="comma-separated: threads, journal (default both), server (processes on --server), "
                             "sim (simulated workers, no sleeping), "
                             "sim-cont (the same with continuation: children half a unit, waiting for a running parent)")
    parser.add_argument("--server", default=SERVER, help=f"the database of the server mode (default {SERVER})")
    parser.add_argument("--fronts", default=None, help="comma-separated front names (default all)")
    parser.add_argument("--unit", type=float, default=None, help="seconds one trial sleeps (default 0.1, --quick 0.05)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per cell (default 3, --quick 1)")
    parser.add_argument("--budget", type=int, default=60, help="most trials per run")
    parser.add_argument("--full-units", type=float, default=1.0,
                        help="length of the knee's full-fidelity retrain in trial units (default 1; motune's is 3)")
    parser.add_argument("--json", default=str(RESULTS / "parallel.json"), help="where to write the JSON results")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.sweep:
        sweep_digits()
        print(f"wrote {SWEEP}")
        return
    FRONTS.update(fronts())
    names = args.fronts.split(",") if args.fronts else list(FRONTS)
    counts = [int(w) for w in args.workers.split(",")]
    modes = args.modes.split(",")
    unit = args.unit or (0.05 if args.quick else 0.1)
    repeats = args.repeats or (1 if args.quick else 3)

    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    rows, verdicts = [], []
    for name, mode in itertools.product(names, modes):
        cells = []
        for w in counts:
            runs = [run(name, mode, w, unit, args.budget, args.full_units, args.server)
                    for _ in range(1 if mode.startswith("sim") else repeats)]
            cells.append({"workers": w, "runs": runs})
            print(f"{name} {mode} {w}: {[(r['trials'], round(r['wall_units'], 1)) for r in runs]}", file=sys.stderr, flush=True)
        reference = np.asarray(cells[0]["runs"][0]["knee"])
        for cell in cells:
            dists = [float(np.hypot(*(np.asarray(r["knee"]) - reference))) for r in cell["runs"]]
            cell["worst_dist"] = max(dists)
            keys = ("trials", "wall_units", "extra", "hits", "fulls", "tail")
            cell.update({k: float(np.median([r[k] for r in cell["runs"]])) for k in keys})
            cell["converged"] = all(r["converged"] for r in cell["runs"])
            knee = cell["runs"][0]["knee"]
            rows.append([name, mode, cell["workers"], cell["trials"], cell["wall_units"], f"({knee[0]:.3f}, {knee[1]:.3f})",
                         cell["worst_dist"], cell["extra"], cell["hits"], cell["fulls"], cell["tail"],
                         "yes" if cell["converged"] else "NO"])
        results.setdefault(name, {})[mode] = cells
        one = cells[0]
        same = all(c["worst_dist"] <= 0.02 for c in cells)
        line = f"{name} / {mode}: same knee at every worker count: {'yes' if same else 'NO'}"
        eight = next((c for c in cells if c["workers"] == 8), None)
        if eight is not None and one["trials"] >= 6:
            wall, trials = eight["wall_units"] / one["wall_units"], eight["trials"] / one["trials"]
            line += (f"; 8 workers: wall {wall:.2f}x one worker's (target <= 0.5: {'met' if wall <= 0.5 else 'MISSED'}),"
                     f" trials {trials:.2f}x (target <= 2: {'met' if trials <= 2 else 'MISSED'})")
            if one["runs"][0].get("lineage_units") is not None:
                floor = one["runs"][0]["lineage_units"] / one["wall_units"]
                line += f"; the knee's lineage: {floor:.2f}x one worker's wall, the floor for any number of workers"
        verdicts.append(line)
    head = ["front", "mode", "workers", "trials", "wall", "knee (1st run)", "dist", "extra", "hits", "fulls", "tail",
            "converged"]
    print(table(rows, head))
    print()
    print("\n".join(verdicts))
    info = machine_info()
    out = write_json(args.json, {"benchmark": "parallel", "machine": info, "unit_s": unit, "repeats": repeats,
                                 "full_units": args.full_units, "command": " ".join(sys.argv),
                                 "verdicts": verdicts, "fronts": results})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
