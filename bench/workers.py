"""Trials per hour and start-up with 1 and 2 local worker processes on one study, side by side.

Each measurement is one real ``motune run CONFIG --workers N`` (a fresh process, storage
a journal file, the study's own data loading and worker start-up included: what a user
waits for) on the digits study with a small budget. Three arms, interleaved (1, 2 spawn,
2 fork, 1, ...) so machine noise hits all alike:

* ``1``: one worker, trained in the ``motune run`` process itself;
* ``2 spawn``: ``$MOTUNE_WORKER_START=spawn``, the start-up before this change: the
  parent checks the config and data, then starts two fresh ``python -m motune.cli
  worker`` processes that each import torch and load the data again;
* ``2 fork``: the default: the parent, which has imported torch and loaded the data,
  forks the two workers (``motune.workers.start_method`` says when that is safe; here it
  is: CPU, one torch thread per worker, no user code).

Every trial trains the same number of epochs (the knee retrain too), so trials/hour
compares like with like even when a run converges before its budget. Speed-ups are
medians over repeats of (trials/hour of the arm) / (trials/hour with 1 worker, same
repeat), from wall time and, to separate the fixed start-up cost from throughput, also
from the first trial's start to the last trial's end. Start-up columns: ``first trial s``
runs from launching ``motune run`` to the first trial's start; ``all workers s`` to the
moment the last worker started its first trial (the worker is read from each trial's
``motune:worker`` pid). Every worker runs with one torch thread (``--threads 1``,
changeable with ``--threads``; with more than one the fork arm falls back to spawning,
and the table says so): these small nets gain nothing from torch's thread pool and lose
much on a busy machine. The table records the core count and the load at start and end.

    python bench/workers.py            # 10 trials of 40 epochs, 3 repeats
    python bench/workers.py --quick    # 6 trials of 20 epochs, 3 repeats
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
from _common import load_average, machine_info, table, write_json

from motune.faults import WORKER_ATTR
from motune.storage import open_storage
from motune.study import completed
from motune.workers import START_ENV, start_method

CONFIG = """
[study]
name = "bench"
n_trials = {n_trials}
baselines = []
full_fidelity = true  # the knee retrain comes after >= 5 front trials, at the same length (epochs = front_epochs)

[data]
dataset = "digits"

[train]
epochs = {epochs}
front_epochs = {front_epochs}
"""


ARMS = (("1", 1, "auto"), ("2 spawn", 2, "spawn"), ("2 fork", 2, "auto"))  # (arm, workers, $MOTUNE_WORKER_START)


def one_run(workers: int, start: str, n_trials: int, front_epochs: int, threads: int) -> dict[str, Any]:
    """Run the study once with ``workers`` processes started the ``start`` way; wall time and trials from the storage."""
    with tempfile.TemporaryDirectory(prefix="motune-bench-workers-") as tmp:
        config = Path(tmp, "bench.toml")
        config.write_text(CONFIG.format(n_trials=n_trials, epochs=front_epochs, front_epochs=front_epochs))
        journal = Path(tmp, "bench.journal")
        command = [sys.executable, "-m", "motune.cli", "run", str(config), "--workers", str(workers), "--quiet",
                   "--storage", f"journal:{journal}", "--threads", str(threads)]
        env = {**os.environ, "PYTHONWARNINGS": "ignore", START_ENV: start}
        launched = datetime.datetime.now()  # the clock Optuna stamps trials with
        begin = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - begin
        if done.returncode != 0:
            raise SystemExit(f"motune run --workers {workers} failed ({done.returncode}):\n{done.stderr}")
        study = optuna.load_study(study_name="bench", storage=open_storage(f"journal:{journal}"))
        trials = completed(study)
        train_seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
        # From the first trial's start to the last one's end: throughput without process start-up.
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        # Start-up: from launching `motune run` to the first trial's start, and to the last worker's first trial.
        first: dict[int, datetime.datetime] = {}
        for t in study.get_trials(deepcopy=False):
            pid = t.system_attrs.get(WORKER_ATTR, {}).get("pid")
            if pid is not None and t.datetime_start is not None:
                first[pid] = min(first.get(pid, t.datetime_start), t.datetime_start)
        startup = (min(t.datetime_start for t in trials) - launched).total_seconds()
        all_started = (max(first.values()) - launched).total_seconds()
    return {
        "workers": workers,
        "start": start,
        "completed_trials": len(trials),
        "workers_that_trained": len(first),
        "wall_seconds": round(wall, 3),
        "trials_per_hour": 3600.0 * len(trials) / wall,
        "trial_span_seconds": round(span, 3),
        "startup_seconds": round(startup, 3),
        "all_workers_started_seconds": round(all_started, 3),
        "trials_per_hour_excluding_startup": 3600.0 * len(trials) / span,
        "training_seconds": round(train_seconds, 3),
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 trials of 20 epochs")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker process (default 1)")
    parser.add_argument("--json", default="bench/results/workers.json", help="where to write the JSON results")
    args = parser.parse_args()
    n_trials, front_epochs = (6, 20) if args.quick else (10, 40)
    info = machine_info()
    # How `motune run` starts the workers of each arm (the same decision, made here for the table).
    methods = {}
    for arm, workers, start in ARMS:
        os.environ[START_ENV] = start
        methods[arm] = "in-process" if workers == 1 else start_method(["cpu"] * workers, args.threads, False)
    del os.environ[START_ENV]

    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for arm, workers, start in ARMS:
            run = one_run(workers, start, n_trials, front_epochs, args.threads)
            run.update(arm=arm, method=methods[arm], repeat=repeat)
            runs.append(run)
            print(f"repeat {repeat}: {arm:8s}: {run['completed_trials']} trials in {run['wall_seconds']:.1f} s, "
                  f"first trial at {run['startup_seconds']:.1f} s, all workers at {run['all_workers_started_seconds']:.1f} s",
                  flush=True)
    load_end = load_average()

    def median(arm: str, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["arm"] == arm)

    def ratios(arm: str, key: str) -> list[float]:
        one = {r["repeat"]: r[key] for r in runs if r["arm"] == "1"}
        return [r[key] / one[r["repeat"]] for r in runs if r["arm"] == arm]

    rows = [
        [arm, methods[arm], round(median(arm, "completed_trials")), median(arm, "wall_seconds"),
         median(arm, "startup_seconds"), median(arm, "all_workers_started_seconds"), median(arm, "trials_per_hour"),
         statistics.median(ratios(arm, "trials_per_hour")), median(arm, "trials_per_hour_excluding_startup"),
         statistics.median(ratios(arm, "trials_per_hour_excluding_startup"))]
        for arm, _, _ in ARMS
    ]
    fork_vs_spawn = {
        key: statistics.median(f[key] / s[key] for f, s in zip(
            [r for r in runs if r["arm"] == "2 fork"], [r for r in runs if r["arm"] == "2 spawn"]))
        for key in ("startup_seconds", "all_workers_started_seconds", "wall_seconds", "trials_per_hour")
    }
    print()
    print(f"digits, {n_trials} trials of {front_epochs} epochs, journal file storage, {args.threads} torch thread(s) "
          f"per worker; {args.repeats} interleaved repeat(s), medians; {info['cpus']} CPUs, load at start "
          f"{info['load_average_at_start']}, at end {load_end}")
    print(table(rows, ["workers", "start", "trials", "wall s", "first trial s", "all workers s", "trials/hour",
                       "speed-up", "trials/hour w/o start-up", "speed-up"]))
    print("2 fork / 2 spawn (median of per-repeat ratios): "
          + ", ".join(f"{key} {value:.2f}" for key, value in fork_vs_spawn.items()))
    payload = {
        "benchmark": "workers",
        "machine": {**info, "load_average_at_end": load_end},
        "settings": {"dataset": "digits", "n_trials": n_trials, "front_epochs": front_epochs, "repeats": args.repeats,
                     "storage": "journal file", "threads_per_worker": args.threads, "quick": args.quick},
        "arms": {arm: {"method": methods[arm],
                       "startup_seconds": median(arm, "startup_seconds"),
                       "all_workers_started_seconds": median(arm, "all_workers_started_seconds"),
                       "wall_seconds": median(arm, "wall_seconds"),
                       "trials_per_hour": median(arm, "trials_per_hour"),
                       "speedup_vs_1": statistics.median(ratios(arm, "trials_per_hour")),
                       "trials_per_hour_excluding_startup": median(arm, "trials_per_hour_excluding_startup"),
                       "speedup_vs_1_excluding_startup": statistics.median(ratios(arm, "trials_per_hour_excluding_startup"))}
                 for arm, _, _ in ARMS},
        "fork_vs_spawn": fork_vs_spawn,
        "runs": runs,
    }
    print(f"wrote {write_json(args.json, payload)}")


if __name__ == "__main__":
    main()
