"""Warm-start continuation along λ on the digits study: knee accuracy, sparsity and total epochs, on vs off.

Runs ``studies/digits.toml`` as shipped (16 trials at most, front trials of 10 epochs,
the knee retrained at 30, trial pruning on, one SMGD baseline) with ``[study]
continuation`` off and on (children train ``continuation_epochs``, default half of
``front_epochs``; the knee's retrain continues from its front network), for each seed,
the two arms interleaved. "Total epochs" is the sum of every trial's trained epochs
(completed, pruned and failed trials), the cost of the whole study; "front epochs"
leaves out the knee's retrain and the baseline.

The two arms land on different sparsities, so each knee is also compared at matched
sparsity with a curve of fresh full-length networks of the same seed (λ on a grid, test
accuracy interpolated linearly in log(kept), as bench/pruning.py's GMP curve): "Δ vs fresh".

    python bench/continuation.py --seeds 5
    python bench/continuation.py --seeds 5 --continuation-epochs 5 --json bench/results/continuation-ce5.json
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, load_average, setup, study_cost, write_json

import motune
from motune.study import knee_trial, run_study
from motune.trials import FIDELITY

STUDY = Path(__file__).resolve().parent.parent / "studies" / "digits.toml"
CURVE_LAMBDAS = (0.001, 0.003, 0.006, 0.01, 0.015, 0.02, 0.0265, 0.035, 0.045, 0.06)


def fresh_curve(seed: int) -> list[tuple[float, float]]:
    """(fraction kept, test accuracy) of fresh full-length networks at CURVE_LAMBDAS, by kept."""
    config = motune.StudyConfig.load(STUDY)
    config.train.device = "cpu"
    data = motune.load_dataset("digits")
    out = []
    for lam in CURVE_LAMBDAS:
        r = motune.train(config.train_config(l1_weight=lam, full=True, seed=1000 + seed), data=data)
        out.append((r.fraction_kept, r.test_accuracy))
    return sorted(out)


def at_kept(curve: list[tuple[float, float]], kept: float) -> float | None:
    """The curve's accuracy at ``kept``, linear in log(kept); None outside the curve."""
    for (k0, a0), (k1, a1) in itertools.pairwise(curve):
        if 0 < k0 <= kept <= k1:
            t = 0.0 if k1 == k0 else (math.log(kept) - math.log(k0)) / (math.log(k1) - math.log(k0))
            return a0 + t * (a1 - a0)
    return None


def one_study(seed: int, continuation: bool, continuation_epochs: int | None, workdir: Path) -> dict[str, Any]:
    raw = motune.StudyConfig.load(STUDY).to_dict()
    name = f"digits-s{seed}-{'cont' if continuation else 'fresh'}"
    raw["study"].update(name=name, seed=seed, continuation=continuation, continuation_epochs=continuation_epochs)
    raw["train"]["device"] = "cpu"
    config = motune.StudyConfig.from_dict(raw)
    t0 = time.perf_counter()
    study = run_study(config, f"sqlite:///{workdir / (name + '.db')}", artifact_dir=workdir / name)
    seconds = time.perf_counter() - t0
    knee = knee_trial(study, config)
    trials = study.get_trials(deepcopy=False)
    ua = knee.user_attrs if knee is not None else {}
    return {
        "seed": seed,
        "continuation": continuation,
        "knee_trial": None if knee is None else knee.number,
        "knee_lambda": None if knee is None else knee.params.get("l1_weight"),
        "knee_fidelity": ua.get(FIDELITY),
        "knee_test_accuracy": ua.get("test_accuracy"),
        "knee_val_accuracy": ua.get("val_accuracy"),
        "knee_nonzeros": ua.get("nonzeros"),
        "knee_fraction_kept": ua.get("fraction_kept"),
        **study_cost(trials),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--continuation-epochs", type=int, default=None, help="default: half of front_epochs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(RESULTS / "continuation.json"))
    args = parser.parse_args()
    machine = setup(args.threads)
    load_before = load_average()
    rows, curves = [], {}
    with tempfile.TemporaryDirectory(prefix="motune-cont-") as tmp:
        for seed in range(args.seeds):
            curves[seed] = fresh_curve(seed)
            for continuation in (False, True):  # interleaved
                row = one_study(seed, continuation, args.continuation_epochs, Path(tmp))
                ref = at_kept(curves[seed], row["knee_fraction_kept"]) if row["knee_fraction_kept"] else None
                row["fresh_at_same_kept"] = ref
                row["delta_vs_fresh"] = None if ref is None else row["knee_test_accuracy"] - ref
                rows.append(row)
                print(rows[-1], flush=True)
    summary = {}
    for continuation in (False, True):
        mine = [r for r in rows if r["continuation"] == continuation]
        summary["on" if continuation else "off"] = {
            key: statistics.mean(r[key] for r in mine if r[key] is not None)
            for key in ("knee_test_accuracy", "knee_fraction_kept", "knee_nonzeros", "delta_vs_fresh", "total_epochs",
                        "front_epochs", "trials", "pruned", "seconds")
            if any(r[key] is not None for r in mine)
        }
    print("\n| continuation | seed | knee λ | knee test acc | nonzeros (kept) | Δ vs fresh at same kept "
          "| trials (pruned, warm) | total epochs | front epochs | s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        delta = "-" if r["delta_vs_fresh"] is None else f"{100 * r['delta_vs_fresh']:+.2f} pp"
        print(f"| {'on' if r['continuation'] else 'off'} | {r['seed']} | {r['knee_lambda']:.3g} | "
              f"{100 * r['knee_test_accuracy']:.2f}% | {r['knee_nonzeros']} ({100 * r['knee_fraction_kept']:.2f}%) | {delta} | "
              f"{r['trials']} ({r['pruned']}, {r['warm_started']}) | {r['total_epochs']} | {r['front_epochs']} "
              f"| {r['seconds']} |")
    for arm, s in summary.items():
        print(f"mean {arm}: " + ", ".join(f"{k} {v:.4g}" for k, v in s.items()))
    path = write_json(args.json, {"machine": machine, "load_before": load_before, "load_after": load_average(),
                                  "continuation_epochs": args.continuation_epochs, "curve_lambdas": CURVE_LAMBDAS,
                                  "fresh_curves": curves, "rows": rows, "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
