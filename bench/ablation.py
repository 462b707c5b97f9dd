"""Issue 11's levers at the level of a whole study: each alone, the defaults and all together.

Every arm runs the real :func:`motune.run_study` (KneeSampler, the knee retrained at full
length) with ``[study] baselines = ["gmp"]`` only: once the knee's retrain completes, the
study trains its own GMP trial (:mod:`motune.gmp`) to the knee's exact sparsity with the
knee's epochs and seed, so "knee − GMP" is at the same sparsity, the same epochs *of the
final run* and the same initial weights and batch order. The levers
(``motune/config.py``):

- ``optimizer_form = "per_objective"``: the authors' MAdam (separate moments per objective);
  off: ``"combined"``, one Adam over ``(1 - λ) g1 + λ sign(w)``;
- ``[study] continuation``: front trials warm-start from the nearest smaller λ and train
  ``continuation_epochs`` (default half of ``front_epochs``); the knee's retrain continues
  from its own front network;
- ``l1_ramp = 0.5``: λ ramps from 0 on a cubic curve over the first half of the penalised
  epochs; off: 0;
- ``finetune_epochs`` = a third of the full length (``--finetune-epochs``): the knee's
  retrain ends with that many epochs on cross-entropy alone, its mask frozen (GMP's own
  schedule prunes until two thirds of the run and trains the last third at its sparsity);
  off: 0;
- ``[study] prune``: multi-objective trial pruning (collapsed or dominated trials end PRUNED).

Arms: ``none`` (all off), each lever alone on top of ``none``, ``defaults`` (today's shipped
settings: ramp + trial pruning), ``all``, and ``defaults + continuation + fine-tune`` (all
but the per-objective form: the combination of bench/pruning.py's target run). Per arm,
over seeds (study seeds 0, 1000, 2000, ...): the knee's test accuracy and fraction of penalised weights kept, the study's total
epochs (every trial that ran: completed, pruned, failed; the GMP trial left out, it is the
yardstick), trials (pruned ones), knee − GMP, and the knee's *lineage* epochs (with
continuation the knee's network was trained along a chain of warm starts: its front
ancestors' epochs plus the retrain's; without, the retrain's alone). GMP trains only the
retrain's epochs, so with continuation "knee − GMP" is not at equal epochs per network.

    python bench/ablation.py --study digits --seeds 10 --jobs 2
    python bench/ablation.py --quick               # digits, 2 seeds, 3 arms
    python bench/ablation.py --study fashion --seeds 2 --epochs 15 --limit 10000 --jobs 2 \\
        --json bench/results/ablation-fashion.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, load_average, setup, study_config, study_cost, table, write_json

import motune
from motune.gmp import gmp_trials
from motune.study import knee_trial, run_study
from motune.trials import FIDELITY, WARM_START_FROM

STUDIES = {
    "digits": Path(__file__).resolve().parent.parent / "studies" / "digits.toml",
    "fashion": Path(__file__).resolve().parent.parent / "studies" / "fashion_mnist_lenet5.toml",
}
LEVERS = ("per_objective", "continuation", "ramp", "finetune", "prune")
# Arm -> the levers it turns on (everything else off).
ARMS: dict[str, tuple[str, ...]] = {
    "none": (),
    "+per-objective": ("per_objective",),
    "+continuation": ("continuation",),
    "+ramp": ("ramp",),
    "+fine-tune": ("finetune",),
    "+trial pruning": ("prune",),
    "defaults (ramp + pruning)": ("ramp", "prune"),
    "all": LEVERS,
    # The combination bench/pruning.py's target run uses (everything but the per-objective form).
    "defaults + continuation + fine-tune": ("continuation", "ramp", "finetune", "prune"),
}


def arm_config(study: str, arm: str, seed: int, epochs: int | None, limit: int | None, finetune: int | None) -> Any:
    """The shipped study with the arm's levers on and the others off (no SMGD trial; the GMP trial)."""
    on = set(ARMS[arm])
    toml = STUDIES[study]
    full = epochs or motune.StudyConfig.load(toml).train.epochs  # front trials: a third (study_config), as shipped
    config = study_config(toml, f"ablation-{study}-{arm}-s{seed}", epochs=full, limit=limit, seed=1000 * seed,
                          baselines=["gmp"], continuation="continuation" in on, prune="prune" in on)
    config.train.optimizer_form = "per_objective" if "per_objective" in on else "combined"
    config.train.l1_ramp = 0.5 if "ramp" in on else 0.0
    config.train.finetune_epochs = (finetune if finetune is not None else full // 3) if "finetune" in on else 0
    return config.validate()


def lineage_epochs(study_trials: list[FrozenTrial], trial: FrozenTrial) -> int:
    """Epochs the trial's network was trained in all: its own plus those of its warm-start ancestors."""
    by_number = {t.number: t for t in study_trials}
    total, seen, t = 0, set(), trial
    while t is not None and t.number not in seen:
        seen.add(t.number)
        total += int(t.user_attrs.get("epochs", 0))
        parent = t.user_attrs.get(WARM_START_FROM)
        t = by_number.get(int(parent)) if parent is not None else None
    return total


def one_study(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one arm's study for one seed (in a worker process, one torch thread) and measure it."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = arm_config(spec["study"], spec["arm"], spec["seed"], spec["epochs"], spec["limit"], spec["finetune"])
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="motune-ablation-") as tmp:
        study = run_study(config, f"sqlite:///{Path(tmp) / 'study.db'}", artifact_dir=Path(tmp) / "artifacts")
        seconds = time.perf_counter() - t0
        trials = study.get_trials(deepcopy=False)
        knee = knee_trial(study, config)
        gmp = [t for t in gmp_trials(study, knee.number) if t.state == TrialState.COMPLETE] if knee is not None else []
    ka = knee.user_attrs if knee is not None else {}
    ga = gmp[-1].user_attrs if gmp else {}
    row = {
        "study": spec["study"], "arm": spec["arm"], "seed": spec["seed"], "study_seed": config.study.seed,
        "levers": list(ARMS[spec["arm"]]),
        "knee_trial": None if knee is None else knee.number,
        "knee_lambda": None if knee is None else knee.params.get("l1_weight"),
        "knee_fidelity": ka.get(FIDELITY),
        "knee_test_accuracy": ka.get("test_accuracy"),
        "knee_fraction_kept": ka.get("fraction_kept"),
        "knee_nonzeros": ka.get("nonzeros"),
        "knee_epochs": ka.get("epochs"),
        "knee_lineage_epochs": None if knee is None else lineage_epochs(trials, knee),
        "gmp_test_accuracy": ga.get("test_accuracy"),
        "gmp_fraction_kept": ga.get("fraction_kept"),
        "gmp_epochs": ga.get("epochs"),
        **study_cost(trials),
        "seconds": round(seconds, 1),
        "settings": {"epochs": config.train.epochs, "front_epochs": config.train.front_epochs,
                     "optimizer_form": config.train.optimizer_form, "l1_ramp": config.train.l1_ramp,
                     "finetune_epochs": config.train.finetune_epochs, "continuation": config.study.continuation,
                     "prune": config.study.prune, "limit": config.data.limit, "n_trials": config.study.n_trials},
    }
    if row["knee_test_accuracy"] is not None and row["gmp_test_accuracy"] is not None:
        row["knee_minus_gmp_pp"] = 100 * (row["knee_test_accuracy"] - row["gmp_test_accuracy"])
    return row


def _key(spec: dict[str, Any]) -> str:
    return json.dumps({k: spec[k] for k in ("study", "arm", "seed", "epochs", "limit", "finetune")}, sort_keys=True)


def run_all(specs: list[dict[str, Any]], jobs: int, partial: Path) -> list[dict[str, Any]]:
    """Every (arm, seed) study, ``jobs`` at a time; finished rows go to ``partial`` (JSON lines) for ``--resume``."""
    done: dict[str, dict[str, Any]] = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done[r["key"]] = r
    todo = [s for s in specs if _key(s) not in done]

    def finished(spec: dict[str, Any], r: dict[str, Any]) -> None:
        r["key"] = _key(spec)
        done[r["key"]] = r
        with partial.open("a") as fh:
            fh.write(json.dumps(r, default=str) + "\n")
        d = r.get("knee_minus_gmp_pp")
        print(f"  {r['arm']} seed {r['seed']}: knee {r['knee_test_accuracy']:.4f} at {r['knee_fraction_kept']:.4f} kept, "
              f"GMP {r['gmp_test_accuracy']}, Δ {'-' if d is None else f'{d:+.2f} pp'}, {r['trials']} trials "
              f"({r['pruned']} pruned), {r['total_epochs']} epochs, {r['seconds']} s", flush=True)

    if jobs <= 1:
        for spec in todo:
            finished(spec, one_study(spec))
    else:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(one_study, s): s for s in todo}
            for f in concurrent.futures.as_completed(futures):
                finished(futures[f], f.result())
    return [done[_key(s)] for s in specs]


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per arm: median and mean over seeds of every measurement."""
    keys = ("knee_test_accuracy", "knee_fraction_kept", "knee_minus_gmp_pp", "gmp_test_accuracy", "total_epochs",
            "front_epochs", "knee_lineage_epochs", "trials", "pruned", "warm_started", "seconds")
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        s: dict[str, Any] = {"arm": arm, "levers": mine[0]["levers"], "seeds": len(mine)}
        for k in keys:
            vals = [r[k] for r in mine if r.get(k) is not None]
            s[k] = {"median": statistics.median(vals), "mean": statistics.fmean(vals)} if vals else None
        s["knee_minus_gmp_pp_per_seed"] = [r.get("knee_minus_gmp_pp") for r in mine]
        out.append(s)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 seeds; arms none, defaults, defaults + continuation + fine-tune (~20 s)")
    parser.add_argument("--study", choices=sorted(STUDIES), default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=None,
                        help="full length (front trials: a third); default: the study's (digits 30 / front 10)")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="the fine-tune lever (default: a third of the full length)")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of: {', '.join(ARMS)}")
    parser.add_argument("--jobs", type=int, default=1, help="studies run at a time (processes, one thread each)")
    parser.add_argument("--resume", action="store_true", help="keep the studies already in JSON.partial.jsonl")
    parser.add_argument("--json", default=None, help="default: bench/results/ablation-STUDY.json")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.arms = min(args.seeds, 2), "none,defaults (ramp + pruning),defaults + continuation + fine-tune"
    arms = [a.strip() for a in args.arms.split(",")]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        parser.error(f"--arms: unknown arm(s) {', '.join(unknown)}; allowed: {', '.join(ARMS)}")
    path = Path(args.json or RESULTS / f"ablation-{args.study}.json")
    partial = path.with_suffix(".partial.jsonl")
    partial.parent.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        partial.unlink(missing_ok=True)
    machine = setup(1)
    load_before = load_average()
    t0 = time.perf_counter()
    specs = [{"study": args.study, "arm": arm, "seed": seed, "epochs": args.epochs, "limit": args.limit,
              "finetune": args.finetune_epochs} for seed in range(args.seeds) for arm in arms]  # arms interleaved per seed
    print(f"{len(specs)} studies ({len(arms)} arms x {args.seeds} seeds), {args.jobs} at a time; load {load_before}", flush=True)
    rows = run_all(specs, args.jobs, partial)
    summary = summarise(rows)
    wall = time.perf_counter() - t0

    def med(s: dict[str, Any], k: str, scale: float = 1.0) -> float | None:
        return None if s[k] is None else scale * s[k]["median"]

    def mean(s: dict[str, Any], k: str, scale: float = 1.0) -> float | None:
        return None if s[k] is None else scale * s[k]["mean"]

    print(f"\n{args.study}: medians over {args.seeds} seeds (means in the JSON); knee − GMP: the study's own GMP trial "
          "at the knee's sparsity, epochs and seed")
    print(table([[s["arm"], med(s, "knee_test_accuracy", 100), med(s, "knee_fraction_kept", 100),
                  med(s, "knee_minus_gmp_pp"), mean(s, "knee_minus_gmp_pp"), med(s, "total_epochs"),
                  med(s, "knee_lineage_epochs"), med(s, "trials"), med(s, "pruned")] for s in summary],
                ["arm", "knee acc %", "kept %", "knee−GMP pp", "(mean)", "study epochs", "knee lineage ep", "trials",
                 "pruned"]))
    load_after = load_average()
    print(f"wall {wall:.0f} s; load average {load_before} -> {load_after}")
    out = write_json(path, {"benchmark": "ablation", "study": args.study, "seeds": args.seeds, "epochs": args.epochs,
                            "limit": args.limit, "finetune_epochs": args.finetune_epochs, "arms": {a: ARMS[a] for a in arms},
                            "machine": machine, "load_before": load_before, "load_after": load_after,
                            "wall_seconds": wall, "summary": summary, "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
