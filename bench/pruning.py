"""Pruning quality: motune's knee network against magnitude pruning at equal sparsity.

LeNet-5 on Fashion-MNIST, the same budget of E epochs, Adam (lr 1e-3), batch 128 for
every network; sparsity is counted over the dense layers' weights (58,920 in LeNet-5,
the weights motune penalises), accuracy on the 10,000 test images:

(a) ``knee``: motune's method for real: for each seed s a KneeSampler study
    (``studies/fashion_mnist_lenet5.toml`` with ``epochs = E``, ``front_epochs = E // 3``,
    no SMGD trial, ``[study] seed = 1000 s``) run with :func:`motune.run_study` on a
    SQLite file under ``bench/results/``; the knee is the study's own full-fidelity
    retrain at E epochs (with continuation: continued from the knee's front network; if
    the trial budget ran out first, this script retrains it the same way). Its fraction of
    dense weights kept, f, and its seed set the sparsity and seed of (b)-(d): same initial
    weights and batch order, as the study's ``gmp`` baseline trial.
(b) ``magnitude``: a dense network trained for E // 2 epochs, then
    ``torch.nn.utils.prune.global_unstructured(..., pruning_method=prune.L1Unstructured,
    amount=1 - f)`` over the dense layers, then fine-tuned for the remaining epochs with
    the masks kept (same Adam state).
(c) ``gmp``: gradual magnitude pruning (Zhu & Gupta 2017): global L1 pruning of the dense
    layers to s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3 every Δt steps, s_i = 0,
    s_f = 1 - f, from t0 = the end of epoch 1 to two thirds of all steps (Δt = a quarter
    epoch), then training at s_f to the end. Also with ``torch.nn.utils.prune``.
(d) ``dense``: the unpenalised network (λ = 0, no pruning), E epochs; (b) starts from
    its state after E // 2 epochs.
(e) ``knee_finetune`` (information, no target): the knee's λ trained for E - E // 3
    epochs with motune, then its zero weights frozen as masks and E // 3 epochs without
    the l1 term (fresh Adam). Its sparsity is its own, close to but not equal to (a)'s.

Targets: the knee keeps at most 5% of the dense weights, loses at most 1.0 percentage
point of accuracy against (d), and is at least as accurate as (b) and (c) (issue 11:
knee ≥ GMP − 0.5 pp). Every seed runs its own search (the studies run ``--jobs`` at a
time); the headline numbers are means over seeds.

(c') ``gmp_lineage``: with ``--continuation`` the knee's network was trained along a chain
    of warm starts: its front ancestors' epochs plus the retrain's E (its *lineage*
    epochs, more than E). GMP is then also trained with that many epochs, at the same
    sparsity and seed: the comparison at equal epochs per network (without continuation
    it is (c) itself).

(f) ``front_vs_gmp``: every front trial of the knee study with at most 20% of the dense
    weights kept, against GMP trained to the same sparsity for the same (front) epochs
    (the table also shows each front network's lineage epochs).

Levers of the knee study: ``--continuation`` (``--continuation-epochs``),
``--optimizer-form``, ``--l1-ramp``, ``--finetune-epochs`` (the knee's retrain),
``--no-trial-pruning``; default: the study's settings.

``--ablation`` adds the levers of issue 11, each alone and together, at E epochs for each
seed: the optimiser form (``combined``: one Adam over ``(1 - λ) g1 + λ sign(w)``;
``per_objective``: the authors' MAdam, separate moments per objective), the cubic λ
warm-up (``l1_ramp``, half of the penalised epochs) and the masked fine-tune
(``finetune_epochs`` = E // 5, same Adam). Each lever setting runs at two λ (the two forms
need λ of different scales for the same sparsity); every network is compared with a GMP
curve (GMP at 1, 2, 4 and 8% kept, same seed and epochs) interpolated in log(kept) at the
network's own sparsity, so "Δ vs GMP" is at matched sparsity and epochs. ``--ablation-only``
skips (a)-(f); ``--jobs N`` trains N networks at a time (one thread each).

Torch runs with one thread: on 2 shared cores LeNet-5 trained ~20x slower with two
(measured, see docs/benchmarks.md).

    python bench/pruning.py                       # full: E = 15 (front trials 5 epochs), 2 seeds
    python bench/pruning.py --quick               # E = 3 (front 1), 10,000 training images, 1 seed
    python bench/pruning.py --ablation-only --jobs 2 --json bench/results/pruning-ablation.json
    python bench/pruning.py --continuation        # lever: the knee study warm-starts front trials along λ
    python bench/pruning.py --jobs 2 --no-finetune --continuation --finetune-epochs 5   # issue 11's target run
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import dataclasses
import json
import math
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn
from torch.nn.utils import prune

import motune
from motune.continuation import warm_start
from motune.gmp import GMPSchedule, train_gmp
from motune.gmp import prune_to as gmp_prune_to
from motune.study import AtomicArtifactStore, knee_trial, run_study
from motune.trials import WARM_START_FROM, WEIGHTED_SUM, trial_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, load_average, plain_epochs, setup, table, write_json
from ablation import lineage_epochs

STUDY_TOML = Path(__file__).resolve().parent.parent / "studies" / "fashion_mnist_lenet5.toml"
LR, BATCH = 1e-3, 128
METHODS = ("dense", "knee", "magnitude", "gmp", "knee_finetune")
TARGETS = {"knee_fraction_kept_max": 0.05, "accuracy_loss_pp_max": 1.0, "knee_vs_gmp_pp_min": -0.5}
# Ablation rows: name -> (optimizer_form, l1_ramp, with fine-tune). Each row runs at the λ of
# its form in ABLATION_LAMBDAS (chosen so that both land near the knee's 2-5% kept).
ABLATION = {
    "combined (today)": ("combined", 0.0, False),
    "combined + fine-tune": ("combined", 0.0, True),
    "combined + ramp": ("combined", 0.5, False),
    "combined + ramp + fine-tune": ("combined", 0.5, True),
    "per-objective": ("per_objective", 0.0, False),
    "per-objective + fine-tune": ("per_objective", 0.0, True),
    "per-objective + ramp": ("per_objective", 0.5, False),
    "per-objective + ramp + fine-tune": ("per_objective", 0.5, True),
}
ABLATION_LAMBDAS = {"combined": (7e-4, 1.2e-3), "per_objective": (0.05, 0.1)}
GMP_CURVE_KEPT = (0.01, 0.02, 0.04, 0.08)
FRONT_MAX_KEPT = 0.20


# ----------------------------------------------------------------------------- plain loop


@dataclasses.dataclass
class Run:
    """A network in training: model, Adam, the minibatch-order generator, the step count."""

    model: nn.Module
    opt: torch.optim.Optimizer
    gen: torch.Generator
    step: int = 0
    seconds: float = 0.0


def new_run(data: motune.Dataset, seed: int) -> Run:
    # motune's seeding protocol (motune/train.py): same init and minibatch order as motune.train.
    torch.manual_seed(seed)
    model = motune.build_model("lenet5", data.input_shape, data.num_classes)
    return Run(model, torch.optim.Adam(model.parameters(), lr=LR), torch.Generator().manual_seed(seed))


def train_epochs(run: Run, data: motune.Dataset, epochs: int, on_step: Any = None) -> None:
    """``epochs`` epochs of the textbook loop; ``on_step(step)`` after every optimiser step."""

    def step() -> None:
        run.step += 1
        if on_step is not None:
            on_step(run.step)

    run.seconds += plain_epochs(run.model, run.opt, data, batch_size=BATCH, epochs=epochs, generator=run.gen, on_step=step)


def dense_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]


def _current_weight(module: nn.Module) -> torch.Tensor:
    """The effective weight now (``module.weight`` is only refreshed by a forward pass)."""
    if hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def prune_to(model: nn.Module, n_pruned: int) -> None:
    """Global L1 (magnitude) pruning of the dense layers until ``n_pruned`` weights are masked (motune.gmp's)."""
    gmp_prune_to(dense_layers(model), n_pruned)


def measure(run: Run, data: motune.Dataset) -> dict[str, Any]:
    # The pruning hooks apply the masks in forward; count the masked weights as they are used.
    weights = {f"{name}.weight": _current_weight(m) for name, m in run.model.named_modules() if isinstance(m, nn.Linear)}
    per_layer = motune.nonzeros_per_layer(weights)
    size = sum(w.numel() for w in weights.values())
    _, acc = motune.evaluate(run.model, data.x_test, data.y_test)
    return {"test_accuracy": acc, "fraction_kept": sum(per_layer.values()) / size,
            "nonzeros": sum(per_layer.values()), "penalised_size": size, "train_seconds": run.seconds}


def dense_and_magnitude(data: motune.Dataset, epochs: int, fraction: float, seed: int) -> dict[str, dict[str, Any]]:
    """(d) dense for E epochs and (b) one-shot magnitude pruning branched off it at E // 2."""
    dense = new_run(data, seed)
    split = epochs // 2
    train_epochs(dense, data, split)
    mag = copy.deepcopy(dense)  # model and Adam together: the optimiser keeps its parameters
    train_epochs(dense, data, epochs - split)
    size = sum(m.weight.numel() for m, _ in dense_layers(mag.model))
    prune_to(mag.model, round((1 - fraction) * size))
    train_epochs(mag, data, epochs - split)
    return {"dense": measure(dense, data), "magnitude": {**measure(mag, data), "prune_after_epoch": split}}


def gmp(data: motune.Dataset, epochs: int, fraction: float, seed: int) -> dict[str, Any]:
    """(c) gradual magnitude pruning with Zhu & Gupta's cubic schedule: :func:`motune.gmp.train_gmp`, the
    function behind a study's ``gmp`` baseline trial (same seeding, so the same batches as the plain loop)."""
    config = motune.TrainConfig(dataset="fashion-mnist", model="lenet5", optimizer="adam", lr=LR, batch_size=BATCH,
                                epochs=epochs, seed=seed)
    r = train_gmp(config, fraction, data=data)
    steps_per_epoch = -(-len(data.x_train) // BATCH)
    s = GMPSchedule.for_run(epochs * steps_per_epoch, steps_per_epoch, fraction)
    return {"test_accuracy": r.test_accuracy, "fraction_kept": r.fraction_kept, "nonzeros": r.nonzeros,
            "penalised_size": r.penalised_size, "train_seconds": r.train_seconds,
            "schedule": {"t0": s.t0, "delta_t": s.delta_t, "n": s.n, "end_step": s.t0 + s.n * s.delta_t,
                         "total_steps": epochs * steps_per_epoch}}


def knee_finetune(config: motune.StudyConfig, lam: float, data: motune.Dataset, epochs: int, seed: int) -> dict[str, Any]:
    """(e), not a target: the knee's λ for E - E // 3 epochs, then its zeros frozen as masks
    (``prune.custom_from_mask``) and E // 3 epochs unpenalised (fresh Adam): same budget E."""
    ft = max(1, epochs // 3)
    r = motune.train(config.train_config(l1_weight=lam, full=True, seed=seed).replace(epochs=epochs - ft), data=data)
    run = new_run(data, seed)
    run.model.load_state_dict(r.state_dict)
    for m, name in dense_layers(run.model):
        prune.custom_from_mask(m, name, mask=(m.weight != 0))
    run.seconds = r.train_seconds
    train_epochs(run, data, ft)
    return {**measure(run, data), "l1_epochs": epochs - ft, "finetune_epochs": ft,
            "fraction_kept_before_finetune": r.fraction_kept, "accuracy_before_finetune": r.test_accuracy}


# ----------------------------------------------------------------------------- knee


def knee_network(config: motune.StudyConfig, storage: str, n_trials: int,
                 data: motune.Dataset | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the KneeSampler study; return its knee retrained at full length and its front trials.

    The knee is the study's own full-fidelity retrain (with continuation: continued from
    the knee's front network, as the study does it). If the trial budget ran out before
    the study retrained it, the benchmark retrains it the same way: fresh, or with
    continuation from the knee's front network (a continuation knee retrained fresh is
    another, worse network: docs/benchmarks.md §2).
    """
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="motune-bench-") as artifacts:
        study = run_study(config, storage, n_trials=n_trials, artifact_dir=artifacts)
        study_seconds = time.perf_counter() - t0
        trials = study.get_trials(deepcopy=False)
        trial = knee_trial(study, config)
        if trial is None:
            raise RuntimeError("the study completed no weighted-sum trial")
        ran = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                                                optuna.trial.TrialState.FAIL)]
        out: dict[str, Any] = {
            "study_seed": config.study.seed,
            "study_trials": len(ran),
            "study_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in ran),
            "study_epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in ran),
            "study_seconds": study_seconds,
            "knee_trial": trial.number,
            "l1_weight": trial.params["l1_weight"],
            "knee_fidelity": trial.user_attrs.get("fidelity"),
        }
        if trial.user_attrs.get("fidelity") == "full":
            out.update(test_accuracy=trial.user_attrs["test_accuracy"], fraction_kept=trial.user_attrs["fraction_kept"],
                       nonzeros_per_layer=trial.user_attrs["nonzeros_per_layer"],
                       val_accuracy=trial.user_attrs["val_accuracy"], knee_seed=trial.user_attrs["seed"],
                       warm_start_from=trial.user_attrs.get(WARM_START_FROM),
                       lineage_epochs=lineage_epochs(trials, trial))
        else:  # the budget ran out before the knee was confirmed: retrain its weight as the study would
            seed = trial_seed(config.study.seed, WEIGHTED_SUM, trial.params["l1_weight"], "full")
            warm = warm_start(config, [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE], WEIGHTED_SUM,
                              "full", trial.params["l1_weight"], AtomicArtifactStore(artifacts))
            out.update(retrain_full(config, trial.params["l1_weight"], seed, data, init_state=warm.state))
            out["knee_seed"] = out.pop("seed")
            out["warm_start_from"] = warm.parent if warm.warm else None
            out["lineage_epochs"] = config.train.epochs + (lineage_epochs(trials, trial) if warm.warm else 0)
            out["knee_fidelity"] = "full (retrained by the benchmark: the study stopped before its full trial)"
    front = []
    for t in trials:
        a = t.user_attrs
        if (t.state == optuna.trial.TrialState.COMPLETE and a.get("kind") == "weighted_sum"
                and a.get("fidelity") == "front" and 0 < a.get("fraction_kept", 1.0) <= FRONT_MAX_KEPT):
            front.append({"trial": t.number, "l1_weight": t.params.get("l1_weight"), "seed": a["seed"],
                          "epochs": int(a.get("epochs", 0)), "lineage_epochs": lineage_epochs(trials, t),
                          "fraction_kept": a["fraction_kept"], "test_accuracy": a["test_accuracy"]})
    return out, front


def retrain_full(config: motune.StudyConfig, lam: float, seed: int, data: motune.Dataset | None = None,
                 init_state: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    r = motune.train(config.train_config(l1_weight=lam, full=True, seed=seed), data=data, init_state=init_state)
    return {"test_accuracy": r.test_accuracy, "fraction_kept": r.fraction_kept,
            "nonzeros_per_layer": r.nonzeros_per_layer, "val_accuracy": r.val_accuracy, "seed": seed,
            "train_seconds": r.train_seconds}


# ----------------------------------------------------------------------------- ablation and front vs GMP

_DATA: dict[tuple[str | None, int | None], motune.Dataset] = {}


def _job(spec: dict[str, Any]) -> dict[str, Any]:
    """One unit of work in a worker process (one torch thread), by ``kind``: a knee study
    (``study``), dense + one-shot magnitude (``dense_magnitude``), a GMP run (``gmp``), the
    knee λ with a masked fine-tune (``knee_finetune``) or a motune run (``motune``)."""
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    key = (spec["data_dir"], spec["limit"])
    if key not in _DATA:
        _DATA[key] = motune.load_dataset("fashion-mnist", spec["data_dir"], limit=spec["limit"])
    data = _DATA[key]
    if spec["kind"] == "study":
        db = Path(spec["db"])
        db.unlink(missing_ok=True)
        knee, front = knee_network(motune.StudyConfig.from_dict(spec["config"]), f"sqlite:///{db}", spec["trials"], data)
        return {**spec, **knee, "front": front, "key": _key(spec)}
    if spec["kind"] == "dense_magnitude":
        res = dense_and_magnitude(data, spec["epochs"], spec["fraction"], spec["seed"])
        return {**spec, **res, "test_accuracy": res["magnitude"]["test_accuracy"],
                "fraction_kept": res["magnitude"]["fraction_kept"], "key": _key(spec)}
    if spec["kind"] == "gmp":
        return {**spec, **gmp(data, spec["epochs"], spec["fraction"], spec["seed"]), "key": _key(spec)}
    if spec["kind"] == "knee_finetune":
        config = motune.StudyConfig.from_dict(spec["config"])
        return {**spec, **knee_finetune(config, spec["l1_weight"], data, spec["epochs"], spec["seed"]), "key": _key(spec)}
    r = motune.train(motune.TrainConfig(**spec["config"]), data=data)
    return {**spec, "key": _key(spec), "test_accuracy": r.test_accuracy, "fraction_kept": r.fraction_kept, "epochs": r.epochs,
            "nonzeros_per_layer": r.nonzeros_per_layer, "train_seconds": r.train_seconds}


def run_jobs(specs: list[dict[str, Any]], jobs: int, partial: Path | None = None) -> list[dict[str, Any]]:
    """Run independent trainings ``jobs`` at a time (spawned processes: no forked OpenMP state).

    Every finished network is appended to ``partial`` (JSON lines) as it comes in; networks
    already there (same label and settings) are not trained again (``--resume``).
    """
    done: dict[str, dict[str, Any]] = {}
    if partial is not None and partial.exists():
        for line in partial.read_text().splitlines():
            r = json.loads(line)
            done[r["key"]] = r
    todo = [spec for spec in specs if _key(spec) not in done]
    if len(todo) < len(specs):
        print(f"  resuming: {len(specs) - len(todo)} of {len(specs)} networks already in {partial}", flush=True)

    def finished(i: int, r: dict[str, Any]) -> None:
        done[r["key"]] = r
        if partial is not None:
            with partial.open("a") as fh:
                fh.write(json.dumps(r, default=str) + "\n")
        print(f"  [{i}/{len(todo)}] {r['label']}: acc {r['test_accuracy']:.4f}, kept {r['fraction_kept']:.4f}", flush=True)

    if jobs <= 1:
        for i, spec in enumerate(todo, 1):
            finished(i, _job(spec))
    else:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_job, spec) for spec in todo]
            for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
                finished(i, fut.result())
    return [done[_key(spec)] for spec in specs]


def _key(spec: dict[str, Any]) -> str:
    """Identity of a network (of its spec, before results are merged in): label and every setting."""
    fields = ("kind", "label", "epochs", "fraction", "seed", "limit", "config")
    return json.dumps({k: spec.get(k) for k in fields}, sort_keys=True, default=str)


def interpolate_log_kept(curve: list[tuple[float, float]], kept: float) -> tuple[float, bool]:
    """Accuracy at ``kept`` from ``(kept, accuracy)`` points, linear in log(kept); True if extrapolated."""
    pts = sorted(curve)
    if kept <= 0:
        return pts[0][1], True
    i = next((k for k in range(1, len(pts) - 1) if kept < pts[k][0]), len(pts) - 1)
    (k0, a0), (k1, a1) = pts[i - 1], pts[i]
    t = (math.log(kept) - math.log(k0)) / (math.log(k1) - math.log(k0))
    return a0 + t * (a1 - a0), not pts[0][0] <= kept <= pts[-1][0]


def ablation_specs(base: dict[str, Any], epochs: int, seeds: int) -> list[dict[str, Any]]:
    """Every ablation network and the GMP curve of every seed, as job specs."""
    finetune = max(1, epochs // 5)
    specs = []
    for seed in range(seeds):
        for f in GMP_CURVE_KEPT:
            specs.append({**base, "kind": "gmp", "epochs": epochs, "fraction": f, "seed": seed,
                          "label": f"gmp {f:.0%} seed {seed}"})
        for row, (form, ramp, ft) in ABLATION.items():
            for lam in ABLATION_LAMBDAS[form]:
                config = {"dataset": "fashion-mnist", "data_dir": base["data_dir"], "limit": base["limit"],
                          "model": "lenet5", "optimizer": "adam", "lr": LR, "batch_size": BATCH, "epochs": epochs,
                          "l1_weight": lam, "optimizer_form": form, "l1_ramp": ramp,
                          "finetune_epochs": finetune if ft else 0, "seed": seed, "device": "cpu"}
                specs.append({**base, "kind": "motune", "row": row, "l1_weight": lam, "seed": seed, "config": config,
                              "label": f"{row} λ={lam:g} seed {seed}"})
    return specs


def summarise_ablation(results: list[dict[str, Any]], seeds: int) -> dict[str, Any]:
    """Per row and λ: means over seeds of accuracy, kept and Δ vs the same seed's GMP curve at that kept."""
    curves = {s: [(r["fraction_kept"], r["test_accuracy"]) for r in results if r["kind"] == "gmp" and r["seed"] == s]
              for s in range(seeds)}
    rows = []
    for row, (form, ramp, _) in ABLATION.items():
        for lam in ABLATION_LAMBDAS[form]:
            runs = [r for r in results if r["kind"] == "motune" and r["row"] == row and r["l1_weight"] == lam]
            deltas, extrapolated = [], False
            for r in runs:
                ref, out = interpolate_log_kept(curves[r["seed"]], r["fraction_kept"])
                r["gmp_at_same_kept"], r["delta_vs_gmp_pp"] = ref, 100 * (r["test_accuracy"] - ref)
                deltas.append(r["delta_vs_gmp_pp"])
                extrapolated |= out
            rows.append({"row": row, "optimizer_form": form, "l1_ramp": ramp,
                         "finetune_epochs": runs[0]["config"]["finetune_epochs"], "l1_weight": lam, "epochs": runs[0]["epochs"],
                         "test_accuracy": statistics.fmean(r["test_accuracy"] for r in runs),
                         "fraction_kept": statistics.fmean(r["fraction_kept"] for r in runs),
                         "delta_vs_gmp_pp": statistics.fmean(deltas), "gmp_extrapolated": extrapolated,
                         "per_seed": [{k: r[k] for k in ("seed", "test_accuracy", "fraction_kept", "gmp_at_same_kept",
                                                         "delta_vs_gmp_pp", "train_seconds")} for r in runs]})
    by_row = {row: statistics.fmean(r["delta_vs_gmp_pp"] for r in rows if r["row"] == row) for row in ABLATION}
    return {"rows": rows, "mean_delta_vs_gmp_pp_by_row": by_row,
            "gmp_curve": {str(s): sorted(c) for s, c in curves.items()}}


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="E = 3, 10,000 training images, 1 seed")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget E (front trials: E // 3)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for the retrained knee, (b)-(d) and the ablation")
    parser.add_argument("--trials", type=int, default=20, help="trial budget of the knee study")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all 50,000; quick 10,000)")
    parser.add_argument("--no-finetune", action="store_true", help="skip (e), the knee with a masked fine-tune")
    parser.add_argument("--ablation", action="store_true", help="also run the lever ablation against a GMP curve")
    parser.add_argument("--ablation-only", action="store_true", help="run only the ablation (skip (a)-(f))")
    parser.add_argument("--continuation", action=argparse.BooleanOptionalAction, default=None,
                        help="lever: the knee study (a) warm-starts front trials along λ ([study] continuation; "
                             "default: the study's, on since issue 11)")
    parser.add_argument("--continuation-epochs", type=int, default=None,
                        help="epochs of a warm-started front trial (default: half of the front epochs)")
    parser.add_argument("--optimizer-form", choices=("combined", "per_objective"), default=None,
                        help="lever: [train] optimizer_form of the knee study (default: the study's)")
    parser.add_argument("--l1-ramp", type=float, default=None, help="lever: [train] l1_ramp (default: the study's)")
    parser.add_argument("--finetune-epochs", type=int, default=None,
                        help="lever: [train] finetune_epochs of the knee's retrain (default: the study's, a third of E)")
    parser.add_argument("--no-trial-pruning", action="store_true", help="lever off: [study] prune = false")
    parser.add_argument("--jobs", type=int, default=1,
                        help="networks (and the seeds' knee studies) trained at a time (processes, one thread each)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the networks already in JSON.partial.jsonl from an interrupted run (ablation, front vs GMP)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the docstring)")
    parser.add_argument("--json", default=str(RESULTS / "pruning.json"), help="where to write the JSON results")
    args = parser.parse_args()
    epochs = args.epochs or (3 if args.quick else 15)
    seeds = args.seeds or (1 if args.quick else 2)
    limit = args.limit or (10_000 if args.quick else None)

    info = setup(args.threads)
    t_start = time.perf_counter()

    config = motune.StudyConfig.load(STUDY_TOML)
    config.study.name = "bench-pruning"
    config.study.baselines = []
    config.data.limit = limit
    config.train.epochs = epochs
    config.train.front_epochs = max(1, epochs // 3)
    config.train.device = "cpu"
    if args.continuation is not None:
        config.study.continuation = args.continuation
    config.study.continuation_epochs = args.continuation_epochs if config.study.continuation else None
    if args.optimizer_form is not None:
        config.train.optimizer_form = args.optimizer_form
    if args.l1_ramp is not None:
        config.train.l1_ramp = args.l1_ramp
    if args.finetune_epochs is not None:
        config.train.finetune_epochs = args.finetune_epochs
    if args.no_trial_pruning:
        config.study.prune = False
    try:
        config = config.validate()
    except motune.ConfigError as exc:
        parser.error(str(exc))
    db = Path(args.json).with_suffix(".db")
    data = motune.load_dataset("fashion-mnist", config.data.data_dir, limit=limit)
    job_base = {"data_dir": config.data.data_dir, "limit": limit}
    args.partial = Path(args.json).with_suffix(".partial.jsonl")
    args.partial.parent.mkdir(parents=True, exist_ok=True)
    if not args.resume:
        args.partial.unlink(missing_ok=True)
    out: dict[str, Any] = {
        "benchmark": "pruning",
        "quick": args.quick,
        "setup": {"dataset": "fashion-mnist", "train_images": len(data.x_train), "test_images": len(data.x_test),
                  "model": "lenet5", "optimizer": "adam", "lr": LR, "batch_size": BATCH, "epochs": epochs,
                  "front_epochs": config.train.front_epochs, "study_trials_max": args.trials, "seeds": seeds,
                  "sparsity_counted_over": "dense-layer weights (58,920 in LeNet-5)",
                  "levers": {"optimizer_form": config.train.optimizer_form, "l1_ramp": config.train.l1_ramp,
                             "finetune_epochs": config.train.finetune_epochs, "trial_pruning": config.study.prune},
                  "continuation": config.study.continuation, "continuation_epochs": config.study.continuation_epochs,
                  "study_seeds": [1000 * s for s in range(seeds)],
                  "torch_threads": args.threads, "jobs": args.jobs},
        "machine": info,
        "targets": TARGETS,
    }
    if not args.ablation_only:
        out.update(knee_comparison(args, config, data, db, epochs, seeds, job_base))
    if args.ablation or args.ablation_only:
        out["ablation"] = ablation(args, epochs, seeds, job_base)
    out["load_average_at_end"] = load_average()
    out["wall_seconds"] = time.perf_counter() - t_start
    print(f"wall {out['wall_seconds']:.0f} s")
    path = write_json(args.json, out)
    print(f"wrote {path}" + ("" if args.ablation_only else f" (studies: {db.with_suffix('')}-seedN.db)"))


def knee_comparison(args: argparse.Namespace, config: motune.StudyConfig, data: motune.Dataset, db: Path, epochs: int,
                    seeds: int, job_base: dict[str, Any]) -> dict[str, Any]:
    """(a)-(f): one knee study per seed, each knee against magnitude pruning and GMP, the fronts against GMP.

    Seed s runs its own study (``[study] seed = 1000 s``; each trial trains with motune.trials.trial_seed of it), so
    every seed's knee is the network its study hands a user, continuation knees included
    (continued from their own front network). (b)-(d) use the knee's own seed: the same
    initial weights and batch order as the knee's retrain, as the study's ``gmp`` baseline
    trial does. With continuation the knee's network was trained along a lineage of warm
    starts (``lineage_epochs``: its ancestors' epochs plus the retrain's); GMP is then also
    run with that many epochs (``gmp_lineage``), the comparison at equal epochs per network.
    """
    print(f"knee studies: {seeds} (one per seed), {args.trials} trials at most, front {config.train.front_epochs} epochs, "
          f"full {epochs}", flush=True)
    study_specs = []
    for seed in range(seeds):
        raw = config.to_dict()
        raw["study"].update(seed=1000 * seed, name=f"bench-pruning-seed{seed}")
        study_specs.append({**job_base, "kind": "study", "seed": seed, "config": raw, "trials": args.trials,
                            "db": str(db.with_name(f"{db.stem}-seed{seed}.db")), "label": f"knee study seed {seed}"})
    knees = run_jobs(study_specs, args.jobs, args.partial)
    for k in knees:
        print(f"seed {k['seed']}: knee λ={k['l1_weight']:.3g}, kept {k['fraction_kept']:.4f}, acc {k['test_accuracy']:.4f} "
              f"(trial seed {k['knee_seed']}, "
              f"{k['study_trials']} trials, {k['study_pruned']} pruned, {k['study_epochs']} epochs, lineage "
              f"{k['lineage_epochs']} epochs, {k['study_seconds']:.0f} s)", flush=True)

    specs = []
    for k in knees:
        f, s, tag = k["fraction_kept"], k["knee_seed"], f"seed {k['seed']}"
        specs.append({**job_base, "kind": "dense_magnitude", "epochs": epochs, "fraction": f, "seed": s, "of": k["seed"],
                      "label": f"dense + magnitude {tag}"})
        specs.append({**job_base, "kind": "gmp", "epochs": epochs, "fraction": f, "seed": s, "of": k["seed"],
                      "label": f"gmp {tag}"})
        if k["lineage_epochs"] > epochs:
            specs.append({**job_base, "kind": "gmp", "epochs": k["lineage_epochs"], "fraction": f, "seed": s,
                          "of": k["seed"], "label": f"gmp lineage epochs {tag}"})
        if not args.no_finetune and not config.study.continuation:  # (e) trains the λ fresh: not for a continuation knee
            specs.append({**job_base, "kind": "knee_finetune", "config": config.to_dict(), "l1_weight": k["l1_weight"],
                          "epochs": epochs, "seed": s, "of": k["seed"], "label": f"knee_finetune {tag}"})
        for fr in k["front"]:
            specs.append({**job_base, "kind": "gmp", "epochs": fr["epochs"], "fraction": fr["fraction_kept"],
                          "seed": fr["seed"], "of": k["seed"], "front": fr,
                          "label": f"gmp for front trial {fr['trial']} of {tag} ({fr['fraction_kept']:.2%} kept)"})
    print(f"{len(specs)} networks: dense + magnitude, GMP (at {epochs} epochs and at the knee's lineage epochs), "
          f"front vs GMP (front trials with at most {FRONT_MAX_KEPT:.0%} kept)", flush=True)
    results = run_jobs(specs, args.jobs, args.partial)

    per_seed = []
    front_rows = []
    for k in knees:
        mine = [r for r in results if r["of"] == k["seed"]]
        res: dict[str, Any] = {"seed": k["seed"], "study_seed": k["study_seed"]}
        dm = next(r for r in mine if r["kind"] == "dense_magnitude")
        res["dense"], res["magnitude"] = dm["dense"], dm["magnitude"]
        res["gmp"] = next(r for r in mine if r["kind"] == "gmp" and "front" not in r and r["epochs"] == epochs)
        lin = [r for r in mine if r["kind"] == "gmp" and "front" not in r and r["epochs"] != epochs]
        res["gmp_lineage"] = lin[0] if lin else res["gmp"]  # without continuation the lineage is the retrain
        ft = [r for r in mine if r["kind"] == "knee_finetune"]
        if ft:
            res["knee_finetune"] = ft[0]
        res["knee"] = {key: k[key] for key in ("test_accuracy", "fraction_kept", "nonzeros_per_layer", "knee_seed",
                                               "l1_weight", "knee_trial", "knee_fidelity", "warm_start_from",
                                               "lineage_epochs", "study_trials", "study_pruned", "study_epochs",
                                               "study_seconds")}
        per_seed.append(res)
        for r in mine:
            if "front" in r:
                fr = r["front"]
                front_rows.append({"seed": k["seed"], "trial": fr["trial"], "l1_weight": fr["l1_weight"],
                                   "epochs": fr["epochs"], "lineage_epochs": fr["lineage_epochs"],
                                   "fraction_kept": fr["fraction_kept"], "front_accuracy": fr["test_accuracy"],
                                   "gmp_accuracy": r["test_accuracy"],
                                   "delta_pp": 100 * (fr["test_accuracy"] - r["test_accuracy"])})
        print(f"seed {k['seed']}: " + ", ".join(f"{m} {res[m]['test_accuracy']:.4f} (kept {res[m]['fraction_kept']:.4f})"
                                                for m in (*METHODS, "gmp_lineage") if m in res), flush=True)
    front_rows.sort(key=lambda r: (r["seed"], r["fraction_kept"]))

    def mean(method: str, key: str) -> float:
        return statistics.fmean(s[method][key] for s in per_seed)

    knee_acc, dense_acc = mean("knee", "test_accuracy"), mean("dense", "test_accuracy")
    mag_acc, gmp_acc = mean("magnitude", "test_accuracy"), mean("gmp", "test_accuracy")
    gmp_lineage_acc = mean("gmp_lineage", "test_accuracy")
    kept = mean("knee", "fraction_kept")
    loss_pp = 100 * (dense_acc - knee_acc)
    checks = {
        "knee_fraction_kept_le_0.05": kept <= TARGETS["knee_fraction_kept_max"],
        "accuracy_loss_le_1pp": loss_pp <= TARGETS["accuracy_loss_pp_max"],
        "knee_ge_magnitude": knee_acc >= mag_acc,
        "knee_ge_gmp_minus_0.5pp": 100 * (knee_acc - gmp_acc) >= TARGETS["knee_vs_gmp_pp_min"],
        "knee_ge_gmp": knee_acc >= gmp_acc,
        # Information: GMP given as many epochs as the knee's network had along its lineage (= E without continuation).
        "knee_ge_gmp_lineage_epochs_minus_0.5pp": 100 * (knee_acc - gmp_lineage_acc) >= TARGETS["knee_vs_gmp_pp_min"],
    }
    print(f"\nLeNet-5 / Fashion-MNIST ({len(data.x_train)} training images), E = {epochs} epochs, "
          f"Adam lr {LR}, batch {BATCH}; test accuracy, mean over {seeds} seed(s), one knee study per seed")
    rows = [[m, mean(m, "test_accuracy"), mean(m, "fraction_kept"), 100 * (mean(m, "test_accuracy") - dense_acc)]
            for m in (*METHODS, "gmp_lineage") if m in per_seed[0]]
    print(table(rows, ["network", "test acc", "dense weights kept", "Δ vs dense (pp)"]))
    print(f"knee − GMP ({epochs} epochs): {100 * (knee_acc - gmp_acc):+.2f} pp; knee − GMP at the knee's lineage epochs "
          f"({', '.join(str(s['knee']['lineage_epochs']) for s in per_seed)}): {100 * (knee_acc - gmp_lineage_acc):+.2f} pp")
    for name, ok in checks.items():
        print(f"{name}: {'met' if ok else 'MISSED'}")
    print("\nfront vs GMP (the front trial's epochs, its seed; lineage: epochs along its warm starts)")
    print(table([[r["seed"], r["trial"], r["l1_weight"], r["fraction_kept"], r["epochs"], r["lineage_epochs"],
                  r["front_accuracy"], r["gmp_accuracy"], r["delta_pp"]] for r in front_rows],
                ["seed", "trial", "λ", "kept", "epochs", "lineage", "front acc", "GMP acc", "Δ (pp)"]))
    return {
        "study_storage": [s["db"] for s in study_specs],
        "magnitude": f"dense {epochs // 2} epochs, global L1 prune, fine-tune {epochs - epochs // 2}",
        "gmp": "Zhu & Gupta cubic schedule, see per_seed[*].gmp.schedule; the knee's seed",
        "gmp_lineage": "GMP with as many epochs as the knee's network trained along its warm-start lineage",
        "knee_finetune": None if args.no_finetune or config.study.continuation else
        f"knee λ {epochs - max(1, epochs // 3)} epochs, masked λ = 0 fine-tune {max(1, epochs // 3)} epochs (information only)",
        "knee_fraction_kept": kept,
        "knee_accuracy": knee_acc,
        "dense_accuracy": dense_acc,
        "magnitude_accuracy": mag_acc,
        "gmp_accuracy": gmp_acc,
        "gmp_lineage_accuracy": gmp_lineage_acc,
        "magnitude_fraction_kept": mean("magnitude", "fraction_kept"),
        "gmp_fraction_kept": mean("gmp", "fraction_kept"),
        "knee_finetune_accuracy": mean("knee_finetune", "test_accuracy") if "knee_finetune" in per_seed[0] else None,
        "knee_finetune_fraction_kept": mean("knee_finetune", "fraction_kept") if "knee_finetune" in per_seed[0] else None,
        "knee_accuracy_loss_pp": loss_pp,
        "knee_vs_gmp_pp": 100 * (knee_acc - gmp_acc),
        "knee_vs_gmp_lineage_epochs_pp": 100 * (knee_acc - gmp_lineage_acc),
        "knee_lambdas": [s["knee"]["l1_weight"] for s in per_seed],
        "checks": checks,
        "per_seed": per_seed,
        "front_vs_gmp": front_rows,
    }


def ablation(args: argparse.Namespace, epochs: int, seeds: int, job_base: dict[str, Any]) -> dict[str, Any]:
    """Each lever alone and together, every network against the GMP curve at its own sparsity."""
    specs = ablation_specs(job_base, epochs, seeds)
    print(f"ablation: {len(specs)} networks of {epochs} epochs, {args.jobs} at a time", flush=True)
    summary = summarise_ablation(run_jobs(specs, args.jobs, args.partial), seeds)
    print(f"\nablation, E = {epochs} epochs every network, mean over {seeds} seed(s); "
          "Δ vs GMP at the same sparsity (GMP curve interpolated in log kept)")
    print(table([[r["row"], r["l1_weight"], r["epochs"], r["test_accuracy"], r["fraction_kept"], r["delta_vs_gmp_pp"]]
                 for r in summary["rows"]], ["levers", "λ", "epochs", "test acc", "kept", "Δ vs GMP (pp)"]))
    print("GMP curve (kept, acc): " + "; ".join(f"seed {s}: " + ", ".join(f"({k:.3f}, {a:.4f})" for k, a in c)
                                                for s, c in summary["gmp_curve"].items()))
    return {"finetune_epochs": max(1, epochs // 5), "l1_ramp": 0.5, "lambdas": ABLATION_LAMBDAS,
            "gmp_curve_kept": GMP_CURVE_KEPT, **summary}


if __name__ == "__main__":
    main()
