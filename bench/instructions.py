"""Instructions per training step of ``bench/throughput.py``'s variants, counted by callgrind.

Wall-clock ratios at 2 threads on a shared 2-vCPU machine move by +-0.1 between repeats
of the same code (docs/benchmarks.md section 4); an instruction count does not depend on
the machine's load. Each variant runs twice under ``valgrind --tool=callgrind`` on one
intra-op thread, one epoch of ``--steps`` LOW and HIGH steps of batch 128 (Fashion-MNIST,
or digits upscaled when it is absent); the difference of the two totals over HIGH - LOW
steps is the cost of one step with start-up, model building and evaluation cancelled out
(16 validation and test samples, so evaluation is cheap anyway). Instructions are not
time: cache misses and OpenMP fork/join at 2 threads are not in them.

    python bench/instructions.py                       # plain, smgd_itp; 5 and 25 steps
    python bench/instructions.py --quick               # 2 and 6 steps
    python bench/instructions.py --variants plain smgd_itp weighted_sum_itp --jobs 2

Needs valgrind (``apt-get install valgrind``); each run takes minutes (torch's import
under valgrind dominates).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json

ROOT = Path(__file__).resolve().parent.parent


def child(variant: str, steps: int, data_file: str) -> None:
    """Inside valgrind: one epoch of ``steps`` steps of ``variant`` (throughput.py's own functions)."""
    sys.path.insert(0, str(ROOT))
    from bench.throughput import BATCH, VARIANTS
    from motune.data import Dataset

    torch.set_num_threads(1)
    t = torch.load(data_file)
    n = steps * BATCH
    x, y = t["x"], t["y"]
    data = Dataset(t["name"], x[:n], y[:n], x[-16:], y[-16:], x[-16:], y[-16:], t["num_classes"])
    run, _ = VARIANTS[variant]
    run(data, 1, torch.device("cpu"))


def count(variant: str, steps: int, data_file: str, out_dir: str) -> subprocess.Popen:
    """Start one callgrind run; its instruction total is read from stderr by :func:`collected`."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_dir}/{variant}.{steps}.out",
           sys.executable, __file__, "--child", variant, str(steps), data_file]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def collected(proc: subprocess.Popen) -> int:
    """The ``Collected : N`` total of a finished callgrind run."""
    _, err = proc.communicate()
    match = re.search(r"Collected : (\d+)", err)
    if proc.returncode or not match:
        raise RuntimeError(f"callgrind run failed (exit {proc.returncode}):\n{err[-2000:]}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["plain", "smgd_itp"])
    parser.add_argument("--quick", action="store_true", help="2 and 6 steps")
    parser.add_argument("--steps", nargs=2, type=int, default=None, metavar=("LOW", "HIGH"), help="default 5 25")
    parser.add_argument("--jobs", type=int, default=2, help="callgrind runs at once (default 2)")
    parser.add_argument("--json", default="bench/results/instructions.json")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "STEPS", "DATA"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return
    sys.path.insert(0, str(ROOT))
    from bench.throughput import BATCH, VARIANTS, load_data

    unknown = [v for v in args.variants if v not in VARIANTS or VARIANTS[v][1]]
    if unknown:
        parser.error(f"--variants: in-memory variants of bench/throughput.py only, not {unknown}")
    low, high = sorted(args.steps or ([2, 6] if args.quick else [5, 25]))
    data, source = load_data(high * BATCH + 16)
    with tempfile.TemporaryDirectory() as tmp:
        data_file = f"{tmp}/data.pt"
        torch.save({"name": data.name, "x": data.x_train.clone(), "y": data.y_train.clone(),
                    "num_classes": data.num_classes}, data_file)
        runs = [(v, s) for v in args.variants for s in (low, high)]
        totals: dict[tuple[str, int], int] = {}
        for i in range(0, len(runs), args.jobs):
            procs = {run: count(*run, data_file, tmp) for run in runs[i : i + args.jobs]}
            totals.update({run: collected(proc) for run, proc in procs.items()})
    per_step = {v: (totals[v, high] - totals[v, low]) / (high - low) for v in args.variants}
    base = per_step.get("plain")
    print(f"LeNet-5, batch {BATCH}, {source}, 1 thread; instructions per step from {low} and {high} steps (callgrind)")
    print(f"{'variant':<20}{'instructions/step':>20}{'vs plain':>10}")
    for v, n in per_step.items():
        print(f"{v:<20}{n:>20,.0f}" + (f"{base / n:>10.4f}" if base else ""))
    out = {"data": source, "threads": 1, "steps": [low, high], "totals": {f"{v}.{s}": n for (v, s), n in totals.items()},
           "instructions_per_step": per_step, "torch": torch.__version__}
    print(f"wrote {write_json(args.json, out)}")


if __name__ == "__main__":
    main()
