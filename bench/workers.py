"""Trials per hour with 1 and 2 local worker processes on one study, side by side.

Each measurement is one real ``motune run CONFIG --workers N`` (a fresh process, storage
a journal file, the study's own data loading and worker start-up included: what a user
waits for) on the digits study with a small budget. Every trial trains the same number
of epochs (the knee retrain too), so trials/hour compares like with like even when a
run converges before its budget. The runs are interleaved (1, 2, 1,
2, ...) so machine noise hits both alike; the speed-up is the median over repeats of
(trials/hour with 2 workers) / (trials/hour with 1 worker, same repeat), from wall time
and, to separate the fixed start-up cost (Python, torch, data in every process) from
throughput, also from the first trial's start to the last trial's end. The ``start-up s``
column is that cost: from launching ``motune run`` to its first trial's start (the parent
checks the config and data, then each worker process imports torch and loads the data
once, cached for all its trials by ``motune.study.cached_dataset``). Every worker
runs with one torch thread (``--threads 1``, changeable with ``--threads``): these small
nets gain nothing from torch's thread pool and lose much on a busy machine, so equal
threads per worker make the comparison about processes, not thread pools. The table
records the core count and the load.

    python bench/workers.py            # 10 trials of 40 epochs, 3 repeats
    python bench/workers.py --quick    # 6 trials of 20 epochs, 1 repeat
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

from motune.storage import open_storage
from motune.study import completed

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


def one_run(workers: int, n_trials: int, front_epochs: int, threads: int) -> dict[str, Any]:
    """Run the study once with ``workers`` processes; wall time and trials from the storage."""
    with tempfile.TemporaryDirectory(prefix="motune-bench-workers-") as tmp:
        config = Path(tmp, "bench.toml")
        config.write_text(CONFIG.format(n_trials=n_trials, epochs=front_epochs, front_epochs=front_epochs))
        journal = Path(tmp, "bench.journal")
        command = [sys.executable, "-m", "motune.cli", "run", str(config), "--workers", str(workers), "--quiet",
                   "--storage", f"journal:{journal}", "--threads", str(threads)]
        launched = datetime.datetime.now()  # the clock Optuna stamps trials with
        start = time.perf_counter()
        done = subprocess.run(command, cwd=tmp, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"motune run --workers {workers} failed ({done.returncode}):\n{done.stderr}")
        study = optuna.load_study(study_name="bench", storage=open_storage(f"journal:{journal}"))
        trials = completed(study)
        train_seconds = sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials)
        # From the first trial's start to the last one's end: throughput without process start-up.
        span = (max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)).total_seconds()
        # Start-up: from launching `motune run` to its first trial's start (Python, torch, data, storage).
        startup = (min(t.datetime_start for t in trials) - launched).total_seconds()
    return {
        "workers": workers,
        "completed_trials": len(trials),
        "wall_seconds": round(wall, 3),
        "trials_per_hour": 3600.0 * len(trials) / wall,
        "trial_span_seconds": round(span, 3),
        "startup_seconds": round(startup, 3),
        "trials_per_hour_excluding_startup": 3600.0 * len(trials) / span,
        "training_seconds": round(train_seconds, 3),
        "load_average": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="6 trials of 20 epochs, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 3, --quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker process (default 1)")
    parser.add_argument("--json", default="bench/results/workers.json", help="where to write the JSON results")
    args = parser.parse_args()
    n_trials, front_epochs = (6, 20) if args.quick else (10, 40)
    repeats = args.repeats or (1 if args.quick else 3)

    runs: list[dict[str, Any]] = []
    for repeat in range(repeats):
        for workers in (1, 2):
            run = one_run(workers, n_trials, front_epochs, args.threads)
            run["repeat"] = repeat
            runs.append(run)
            print(f"repeat {repeat}: {workers} worker(s): {run['completed_trials']} trials in {run['wall_seconds']:.1f} s",
                  flush=True)

    def median(workers: int, key: str) -> float:
        return statistics.median(r[key] for r in runs if r["workers"] == workers)

    speedups = [
        two["trials_per_hour"] / one["trials_per_hour"]
        for one, two in zip(runs[0::2], runs[1::2])
    ]
    speedup = statistics.median(speedups)
    steady = statistics.median(
        two["trials_per_hour_excluding_startup"] / one["trials_per_hour_excluding_startup"]
        for one, two in zip(runs[0::2], runs[1::2])
    )
    rows = [
        [w, round(median(w, "completed_trials")), median(w, "wall_seconds"), median(w, "startup_seconds"),
         median(w, "trials_per_hour"),
         1.0 if w == 1 else speedup, median(w, "trials_per_hour_excluding_startup"), 1.0 if w == 1 else steady]
        for w in (1, 2)
    ]
    info = machine_info()
    print()
    print(f"digits, {n_trials} trials of {front_epochs} epochs, journal file storage, {args.threads} torch thread(s) "
          f"per worker; {repeats} interleaved "
          f"repeat(s), medians; {info['cpus']} CPUs, load at start {info['load_average_at_start']}")
    print(table(rows, ["workers", "trials", "wall s", "start-up s", "trials/hour", "speed-up", "trials/hour w/o start-up",
                       "speed-up"]))
    payload = {
        "benchmark": "workers",
        "machine": info,
        "settings": {"dataset": "digits", "n_trials": n_trials, "front_epochs": front_epochs, "repeats": repeats,
                     "storage": "journal file", "threads_per_worker": args.threads, "quick": args.quick},
        "trials_per_hour": {"1": median(1, "trials_per_hour"), "2": median(2, "trials_per_hour")},
        "speedup_2_vs_1": speedup,
        "trials_per_hour_excluding_startup": {
            "1": median(1, "trials_per_hour_excluding_startup"), "2": median(2, "trials_per_hour_excluding_startup"),
        },
        "speedup_2_vs_1_excluding_startup": steady,
        "startup_seconds": {"1": median(1, "startup_seconds"), "2": median(2, "startup_seconds")},
        "speedups": speedups,
        "runs": runs,
    }
    print(f"wrote {write_json(args.json, payload)}")


if __name__ == "__main__":
    main()
