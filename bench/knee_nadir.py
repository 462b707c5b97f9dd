"""May collapsed, chance-level networks set the knee's nadir? The knee with and without them.

Past λ ≈ 0.02 the digits network collapses: every penalised weight is pruned and the
validation cross-entropy is ln 10 (chance). Such a point is nondominated (its l1 is 0), so
it is the front's f2-end and sets the nadir of f1 when the front is normalised; the knee
(widest normal cone, KneeSampler's ``"angle"``) is measured in those normalised units.

Per seed: a sweep of λ ∈ {0} ∪ 30 log-spaced values in [1e-6, 1e-1] at front fidelity
(digits, the default study's training: ``digits_cnn``, Adam 3e-3, batch 64, 10 epochs, l1
ramp 0.5), then the knee of the swept points by

- ``with``: :func:`motune.pareto.knee_index` ``(points, "angle", 0.02)``: collapsed points
  count (motune before this change);
- ``without``: the same with ``floor=0.0``: collapsed points (:func:`motune.pareto.collapsed_mask`:
  l1 = 0, or cross-entropy no better than that) neither set the nadir nor are knees;
- ``live-only``: the knee of the swept points with the collapsed ones deleted (hull and
  normalisation recomputed): what ``without`` approximates on the search's own hull.

Each knee's λ is retrained at full fidelity (30 epochs, same seed) and compared with
:func:`motune.gmp.train_gmp` at exactly the retrain's nonzeros (30 epochs, same seed) and
with the dense network (λ = 0, 30 epochs). Test accuracy on the 360 held-out images.

``--studies``: the digits default study itself, ``motune.run_study`` with its KneeSampler
(``collapsed_nadir`` True = before, False = motune's studies now) and ``baselines =
["gmp"]``, for study seeds 0, 1000, 2000, ... (each trial trains with motune.trials.trial_seed of it):
trials, epochs, the knee and its GMP trial, as a user sees them in ``motune status``.

``--study fashion``: the same with ``studies/fashion_mnist_lenet5.toml`` (LeNet-5, Adam 1e-3,
batch 128) at E = 15 epochs (front trials 5), λ ∈ {0} ∪ 12 log-spaced values in
[1e-5, 1e-1], on ``--limit`` training images (default 10,000), test accuracy on the
10,000 test images.

    python bench/knee_nadir.py                                    # digits, 5 seeds
    python bench/knee_nadir.py --quick                            # digits, 2 seeds, 15-point sweep
    python bench/knee_nadir.py --study fashion --seeds 2          # LeNet-5 / Fashion-MNIST
    python bench/knee_nadir.py --studies                          # the digits study, sampler in the loop
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from optuna.trial import TrialState

import motune
from motune import pareto
from motune.gmp import gmp_trials, train_gmp
from motune.study import run_study

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, load_average, setup, study_config, table, write_json

DIGITS = motune.StudyConfig()  # studies/digits.toml
FASHION_TOML = Path(__file__).resolve().parent.parent / "studies" / "fashion_mnist_lenet5.toml"
TOLERANCE = 0.02  # KneeSampler's default
VARIANTS = ("with", "without", "live-only")


def knee_of(points: np.ndarray, variant: str) -> int:
    if variant == "with":
        return int(pareto.knee_index(points, "angle", TOLERANCE))
    if variant == "without":
        return int(pareto.knee_index(points, "angle", TOLERANCE, floor=0.0))
    live = np.flatnonzero(~pareto.collapsed_mask(points, 0.0, TOLERANCE))
    return int(live[pareto.knee_index(points[live], "angle", TOLERANCE)])


def run_seed(config: motune.StudyConfig, seed: int, lambdas: list[float], data: motune.Dataset) -> dict[str, Any]:
    front_cfg = config.train_config(seed=seed).replace(device="cpu")
    sweep = []
    for lam in lambdas:
        r = motune.train(front_cfg.replace(l1_weight=lam), data=data)
        sweep.append({"lambda": lam, "cross_entropy": r.cross_entropy, "l1": r.l1, "val_accuracy": r.val_accuracy,
                      "fraction_kept": r.fraction_kept})
    points = np.array([[p["cross_entropy"], p["l1"]] for p in sweep])
    full_cfg = config.train_config(full=True, seed=seed).replace(device="cpu")
    dense = motune.train(full_cfg.replace(l1_weight=0.0), data=data)
    out: dict[str, Any] = {"seed": seed, "sweep": sweep, "collapsed": int(pareto.collapsed_mask(points, 0.0, TOLERANCE).sum()),
                           "dense_test_accuracy": dense.test_accuracy, "knees": {}}
    retrained: dict[float, dict[str, Any]] = {}
    for variant in VARIANTS:
        p = sweep[knee_of(points, variant)]
        lam = p["lambda"]
        if lam not in retrained:
            full = motune.train(full_cfg.replace(l1_weight=lam), data=data)
            gmp = train_gmp(full_cfg, full.nonzeros / full.penalised_size, data=data)  # the same nonzeros
            retrained[lam] = {"full_test_accuracy": full.test_accuracy, "full_fraction_kept": full.fraction_kept,
                              "gmp_test_accuracy": gmp.test_accuracy, "gmp_fraction_kept": gmp.fraction_kept}
        r = retrained[lam]
        out["knees"][variant] = {"lambda": lam, "front_val_accuracy": p["val_accuracy"],
                                 "front_fraction_kept": p["fraction_kept"], **r,
                                 "delta_vs_dense_pp": 100 * (r["full_test_accuracy"] - dense.test_accuracy),
                                 "delta_vs_gmp_pp": 100 * (r["full_test_accuracy"] - r["gmp_test_accuracy"])}
    return out


def summarise(per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    summary = {}
    for variant in VARIANTS:
        knees = [s["knees"][variant] for s in per_seed]

        def stats(key: str, knees: list[dict[str, Any]] = knees) -> dict[str, float]:
            values = [k[key] for k in knees]
            return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "min": min(values), "max": max(values)}

        summary[variant] = {key: stats(key) for key in ("lambda", "front_val_accuracy", "front_fraction_kept",
                                                         "full_test_accuracy", "full_fraction_kept", "gmp_test_accuracy",
                                                         "delta_vs_dense_pp", "delta_vs_gmp_pp")}
    return summary


def run_studies(seeds: int) -> dict[str, Any]:
    """The digits default study with and without collapsed points in the knee's nadir (sampler in the loop)."""
    import motune.study as study_module

    make_sampler = study_module.make_sampler
    out: dict[str, Any] = {}
    for collapsed_nadir in (True, False):
        rows = []

        def sampler(config: motune.StudyConfig, seed: int | None = None,
                    collapsed_nadir: bool = collapsed_nadir) -> motune.KneeSampler:
            s = config.study
            return motune.KneeSampler(start_weights=s.start_weights, knee=s.knee, full_fidelity=s.full_fidelity,
                                      seed=seed, collapsed_nadir=collapsed_nadir)

        study_module.make_sampler = sampler
        try:
            for seed in range(seeds):
                config = motune.StudyConfig.from_dict({"study": {"seed": 1000 * seed, "baselines": ["gmp"]}})
                config.train.device = "cpu"
                with tempfile.TemporaryDirectory(prefix="knee-nadir-") as tmp:
                    study = run_study(config, f"sqlite:///{tmp}/s.db", artifact_dir=f"{tmp}/art")
                    knee = study_module.knee_trial(study, config)
                    done_gmp = [t for t in gmp_trials(study, knee.number) if t.state == TrialState.COMPLETE]
                    g = done_gmp[-1] if done_gmp else None
                done = [t for t in study.trials if t.state.is_finished()]
                k = knee.user_attrs
                rows.append({"seed": seed, "trials": len(done), "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in done),
                             "knee_lambda": knee.params["l1_weight"], "knee_fidelity": k["fidelity"],
                             "knee_val_accuracy": k["val_accuracy"], "knee_test_accuracy": k["test_accuracy"],
                             "knee_fraction_kept": k["fraction_kept"],
                             "gmp_val_accuracy": g.user_attrs["val_accuracy"] if g else None,
                             "gmp_test_accuracy": g.user_attrs["test_accuracy"] if g else None})
                r = rows[-1]
                print(f"collapsed_nadir={collapsed_nadir} seed {seed}: {r['trials']} trials, {r['epochs']} epochs, knee "
                      f"λ={r['knee_lambda']:.2g} val {r['knee_val_accuracy']:.4f} test {r['knee_test_accuracy']:.4f} "
                      f"kept {r['knee_fraction_kept']:.3f}; GMP test {r['gmp_test_accuracy']}", flush=True)
        finally:
            study_module.make_sampler = make_sampler
        out["with" if collapsed_nadir else "without"] = rows
    print("\nthe digits study (run_study), means over seeds")
    table_rows = []
    for variant, rows in out.items():
        def m(key: str, rows: list[dict[str, Any]] = rows) -> float:
            return statistics.fmean(r[key] for r in rows)
        spread = statistics.stdev(r["knee_fraction_kept"] for r in rows) if len(rows) > 1 else 0.0
        table_rows.append([variant, m("trials"), m("epochs"), m("knee_val_accuracy"), m("knee_test_accuracy"),
                           m("knee_fraction_kept"), spread, 100 * (m("knee_test_accuracy") - m("gmp_test_accuracy"))])
    print(table(table_rows, ["collapsed", "trials", "epochs", "knee val acc", "knee test acc", "knee kept", "sd kept",
                             "knee − GMP test (pp)"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 seeds, a 15-point sweep")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--study", choices=("digits", "fashion"), default="digits")
    parser.add_argument("--studies", action="store_true", help="run the digits default study itself (sampler in the loop)")
    parser.add_argument("--limit", type=int, default=10_000, help="training images for --study fashion")
    parser.add_argument("--json", default=None, help="default: bench/results/knee_nadir[-fashion].json")
    args = parser.parse_args()
    seeds = args.seeds or (2 if args.quick else 5)
    info = setup(1)
    t0 = time.perf_counter()
    if args.studies:
        out = {"benchmark": "knee_nadir", "mode": "studies", "seeds": seeds, "machine": info,
               "studies": run_studies(seeds), "load_average_at_end": load_average(),
               "wall_seconds": time.perf_counter() - t0}
        path = write_json(args.json or RESULTS / "knee_nadir-studies.json", out)
        print(f"wall {out['wall_seconds']:.0f} s; wrote {path}")
        return
    if args.study == "digits":
        config, lambdas = DIGITS, [0.0, *np.logspace(-6, -1, 14 if args.quick else 30).tolist()]
    else:
        config = study_config(FASHION_TOML, "knee-nadir", epochs=15, limit=args.limit)
        lambdas = [0.0, *np.logspace(-5, -1, 12).tolist()]
    data = motune.load_dataset(config.data.dataset, config.data.data_dir, limit=config.data.limit)
    per_seed = []
    for seed in range(seeds):
        per_seed.append(run_seed(config, seed, lambdas, data))
        knees = per_seed[-1]["knees"]
        print(f"seed {seed}: " + "; ".join(f"{v} λ={k['lambda']:.2g} acc {k['full_test_accuracy']:.4f} "
                                           f"kept {k['full_fraction_kept']:.3f} vs GMP {k['delta_vs_gmp_pp']:+.2f} pp"
                                           for v, k in knees.items()), flush=True)
    summary = summarise(per_seed)
    rows = []
    for variant, s in summary.items():
        rows.append([variant, s["lambda"]["mean"], s["front_val_accuracy"]["mean"], s["front_fraction_kept"]["mean"],
                     s["full_test_accuracy"]["mean"], s["full_fraction_kept"]["mean"], s["full_fraction_kept"]["sd"],
                     s["delta_vs_dense_pp"]["mean"], s["delta_vs_gmp_pp"]["mean"], s["delta_vs_gmp_pp"]["min"]])
    print(f"\nknee with and without collapsed points, {args.study}, {seeds} seeds (means; sd of kept over seeds)")
    print(table(rows, ["collapsed", "λ", "front val acc", "front kept", "full test acc", "full kept", "sd kept",
                       "Δ vs dense (pp)", "Δ vs GMP (pp)", "worst Δ vs GMP"]))
    out = {"benchmark": "knee_nadir", "study": args.study, "limit": config.data.limit, "seeds": seeds,
           "lambdas": lambdas, "machine": info, "summary": summary,
           "per_seed": per_seed, "load_average_at_end": load_average(), "wall_seconds": time.perf_counter() - t0}
    path = write_json(args.json or RESULTS / ("knee_nadir-fashion.json" if args.study == "fashion" else "knee_nadir.json"), out)
    print(f"wall {out['wall_seconds']:.0f} s; wrote {path}")


if __name__ == "__main__":
    main()
