"""The default digits study with 1, 2, 4, 8 and 16 local workers: is the knee the same?

Issue 12 asks that the knee a user gets not depend on how many workers they start (for
digits: the same λ, or a network within 1 pp accuracy and 10% nonzeros). Each row is one
real ``motune run --workers N`` in a fresh directory, with the built-in digits study and
its defaults (continuation, trial pruning, the knee's fine-tuned retrain, the SMGD
baseline): what a user runs. Every run uses a journal file (so 1 worker trains in the
``run`` process itself, and N > 1 are forked or spawned workers, ``motune.workers``).

Columns: trials by state, the knee's λ, fidelity, test accuracy and nonzeros, their
differences from the 1-worker run, how many of the 1-worker run's front trials have a
twin (same λ and fidelity) with the same values in this run (rel. 1e-5), and the wall time
of the whole run (machine load recorded: on a 2-core machine more workers do not make a
study faster; ``bench/parallel.py`` measures wall time to the knee).

``--storage URL`` runs the workers on a database server instead (PostgreSQL, MySQL /
MariaDB, Redis), each run in a study of its own name, deleted afterwards: workers that
share no file, as on several machines.

    python bench/same_knee.py                      # workers 1 2 4 8 16
    python bench/same_knee.py --workers 1 2 4
    python bench/same_knee.py --workers 1 8 --storage postgresql://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
from _common import load_average, machine_info, table, write_json

from motune.sampler import KneeSampler
from motune.storage import open_storage
from motune.study import knee_trial

HEADER = ["workers", "complete", "pruned", "fail", "knee λ", "fidelity", "test acc", "nonzeros",
          "Δ acc pp", "Δ nonzeros %", "twins equal", "wall s"]


def run_once(workers: int, threads: int, storage: str | None = None) -> dict[str, Any]:
    """One ``motune run --workers N`` in a fresh directory (and study); what its study holds."""
    with tempfile.TemporaryDirectory(prefix="motune-same-knee-") as tmp:
        url = storage or f"journal:{Path(tmp) / 'digits.journal'}"
        name = f"same-knee-{uuid.uuid4().hex[:8]}" if storage else "digits"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "motune.cli", "run", "--workers", str(workers),
                               "--threads", str(threads), "--quiet", "--storage", url, "--study", name],
                              cwd=tmp, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"motune run --workers {workers} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        try:
            return _summary(study, workers, wall)
        finally:
            if storage:
                optuna.delete_study(study_name=name, storage=study._storage)


def _summary(study: optuna.Study, workers: int, wall: float) -> dict[str, Any]:
    """What a finished run's study holds: trials by state, the knee, the front trials' values."""
    knee = knee_trial(study)
    states = [t.state.name for t in study.trials]
    front = {(t.params["l1_weight"], KneeSampler.fidelity(t)): t.values for t in study.trials
             if t.state == optuna.trial.TrialState.COMPLETE and "l1_weight" in t.params}
    return {
        "workers": workers, "complete": states.count("COMPLETE"), "pruned": states.count("PRUNED"),
        "fail": states.count("FAIL"), "wall_s": wall, "front": front,
        "fail_reasons": [t.user_attrs.get("fail_reason") for t in study.trials if t.state.name == "FAIL"],
        "knee_lambda": None if knee is None else knee.params["l1_weight"],
        "knee_fidelity": None if knee is None else KneeSampler.fidelity(knee),
        "knee_test_accuracy": None if knee is None else knee.user_attrs.get("test_accuracy"),
        "knee_nonzeros": None if knee is None else knee.user_attrs.get("nonzeros"),
    }


def twins_equal(one: dict[Any, Any], other: dict[Any, Any]) -> str:
    """``k/n``: of the n front trials of ``one`` that ``other`` also trained, k came out with the same values."""
    shared = [key for key in one if key in other]
    same = sum(all(math.isclose(a, b, rel_tol=1e-5) for a, b in zip(one[k], other[k], strict=True)) for k in shared)
    return f"{same}/{len(shared)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1, all runs alike)")
    parser.add_argument("--storage", default=None,
                        help="a database URL for every run (default: a journal file per run)")
    parser.add_argument("--json", default="bench/results/same_knee.json")
    args = parser.parse_args()
    load_start = load_average()
    runs = [run_once(n, args.threads, args.storage) for n in args.workers]
    base = runs[0]
    rows, verdicts = [], []
    for r in runs:
        d_acc = d_nz = None
        if r["knee_test_accuracy"] is not None and base["knee_test_accuracy"] is not None:
            d_acc = 100 * (r["knee_test_accuracy"] - base["knee_test_accuracy"])
            d_nz = 100 * (r["knee_nonzeros"] - base["knee_nonzeros"]) / base["knee_nonzeros"]
        same = r["knee_lambda"] == base["knee_lambda"] or (d_acc is not None and abs(d_acc) <= 1 and abs(d_nz) <= 10)
        verdicts.append(same)
        r["twins_equal"] = twins_equal(base["front"], r["front"])
        rows.append([r["workers"], r["complete"], r["pruned"], r["fail"], r["knee_lambda"], r["knee_fidelity"],
                     r["knee_test_accuracy"], r["knee_nonzeros"], d_acc, d_nz, r["twins_equal"], r["wall_s"]])
    print(table(rows, HEADER))
    print(f"same knee as {base['workers']} worker(s) at every worker count: {'yes' if all(verdicts) else 'NO'} "
          "(same λ, or within 1 pp test accuracy and 10% nonzeros)")
    for r in runs:
        r["front"] = [[lam, fid, *vals] for (lam, fid), vals in r["front"].items()]
    path = write_json(args.json, {
        "benchmark": "same_knee", "machine": machine_info(), "load_start": load_start, "load_end": load_average(),
        "command": " ".join(sys.argv), "same_knee": all(verdicts), "runs": runs,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
