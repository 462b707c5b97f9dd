"""Pruning quality: motune's knee network against magnitude pruning at equal sparsity.

LeNet-5 on Fashion-MNIST, the same budget of E epochs, Adam (lr 1e-3), batch 128 for
every network; sparsity is counted over the dense layers' weights (58,920 in LeNet-5,
the weights motune penalises), accuracy on the 10,000 test images:

(a) ``knee``: motune's method for real: a KneeSampler study
    (``studies/fashion_mnist_lenet5.toml`` with ``epochs = E``, ``front_epochs = E // 3``,
    no SMGD trial) run with :func:`motune.run_study` on a SQLite file under
    ``bench/results/``; the knee's weight is retrained at E epochs (the study's
    full-fidelity trial, or by this script if the trial budget ran out first). Its
    fraction of dense weights kept, f, sets the sparsity of (b) and (c).
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
point of accuracy against (d), and is at least as accurate as (b) and (c). With
``--seeds N > 1`` the knee's weight is also retrained at E epochs with seeds 1 .. N-1
(the search itself runs once), and (b)-(d) are run per seed at that seed's sparsity;
the headline numbers are means over seeds.

Torch runs with one thread: on 2 shared cores LeNet-5 trained ~20x slower with two
(measured, see docs/benchmarks.md).

    python bench/pruning.py            # full: E = 15 (front trials 5 epochs), 2 seeds
    python bench/pruning.py --quick    # E = 3 (front 1), 10,000 training images, 1 seed
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

import motune
from motune.study import knee_trial, run_study

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
from _common import RESULTS, load_average, setup, table, write_json

STUDY_TOML = Path(__file__).resolve().parent.parent / "studies" / "fashion_mnist_lenet5.toml"
LR, BATCH = 1e-3, 128
METHODS = ("dense", "knee", "magnitude", "gmp", "knee_finetune")
TARGETS = {"knee_fraction_kept_max": 0.05, "accuracy_loss_pp_max": 1.0}


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
    x, y = data.x_train, data.y_train
    run.model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=run.gen)
        for start in range(0, len(x), BATCH):
            idx = order[start : start + BATCH]
            loss = F.cross_entropy(run.model(x[idx]), y[idx])
            run.opt.zero_grad()
            loss.backward()
            run.opt.step()
            run.step += 1
            if on_step is not None:
                on_step(run.step)
    run.seconds += time.perf_counter() - t0


def dense_layers(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Linear)]


def _current_weight(module: nn.Module) -> torch.Tensor:
    """The effective weight now (``module.weight`` is only refreshed by a forward pass)."""
    if hasattr(module, "weight_mask"):
        return (module.weight_orig * module.weight_mask).detach()
    return module.weight.detach()


def prune_to(model: nn.Module, n_pruned: int) -> None:
    """Global L1 (magnitude) pruning of the dense layers until ``n_pruned`` weights are masked."""
    layers = dense_layers(model)
    already = sum(int((m.weight_mask == 0).sum()) for m, _ in layers if hasattr(m, "weight_mask"))
    extra = n_pruned - already
    if extra <= 0:
        return
    # global_unstructured combines with existing masks: ``amount`` counts among the unpruned.
    prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=extra,
                              importance_scores={(m, n): _current_weight(m) for m, n in layers})


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
    """(c) gradual magnitude pruning with Zhu & Gupta's cubic schedule."""
    run = new_run(data, seed)
    steps_per_epoch = -(-len(data.x_train) // BATCH)
    total = epochs * steps_per_epoch
    t0 = steps_per_epoch
    dt = max(1, steps_per_epoch // 4)
    n = max(1, (2 * total // 3 - t0) // dt)
    size = sum(m.weight.numel() for m, _ in dense_layers(run.model))
    if t0 + n * dt > total:  # tiny budgets (--quick): prune over the first two thirds instead
        t0, n = 1, max(1, (2 * total // 3) // dt)
    s_i, s_f = 0.0, 1.0 - fraction

    def on_step(step: int) -> None:
        if step >= t0 and (step - t0) % dt == 0 and step <= t0 + n * dt:
            s_t = s_f + (s_i - s_f) * (1 - (step - t0) / (n * dt)) ** 3
            prune_to(run.model, round(s_t * size))

    train_epochs(run, data, epochs, on_step)
    return {**measure(run, data), "schedule": {"t0": t0, "delta_t": dt, "n": n, "end_step": t0 + n * dt,
                                                "total_steps": total}}


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


def knee_network(config: motune.StudyConfig, storage: str, n_trials: int) -> tuple[dict[str, Any], optuna.Study]:
    """Run the KneeSampler study and return the knee retrained at full length."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="motune-bench-") as artifacts:
        study = run_study(config, storage, n_trials=n_trials, artifact_dir=artifacts)
    study_seconds = time.perf_counter() - t0
    trial = knee_trial(study, config)
    if trial is None:
        raise RuntimeError("the study completed no weighted-sum trial")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {
        "study_trials": len(done),
        "study_epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in done),
        "study_seconds": study_seconds,
        "knee_trial": trial.number,
        "l1_weight": trial.params["l1_weight"],
        "knee_fidelity": trial.user_attrs.get("fidelity"),
    }
    if trial.user_attrs.get("fidelity") == "full":
        out.update(test_accuracy=trial.user_attrs["test_accuracy"], fraction_kept=trial.user_attrs["fraction_kept"],
                   nonzeros_per_layer=trial.user_attrs["nonzeros_per_layer"],
                   val_accuracy=trial.user_attrs["val_accuracy"], seed=trial.user_attrs["seed"])
    else:  # the budget ran out before the knee was confirmed: retrain its weight ourselves
        out.update(retrain_full(config, trial.params["l1_weight"], config.study.seed + len(study.trials)))
        out["knee_fidelity"] = "full (retrained by the benchmark: the study stopped before its full trial)"
    return out, study


def retrain_full(config: motune.StudyConfig, lam: float, seed: int, data: motune.Dataset | None = None) -> dict[str, Any]:
    r = motune.train(config.train_config(l1_weight=lam, full=True, seed=seed), data=data)
    return {"test_accuracy": r.test_accuracy, "fraction_kept": r.fraction_kept,
            "nonzeros_per_layer": r.nonzeros_per_layer, "val_accuracy": r.val_accuracy, "seed": seed,
            "train_seconds": r.train_seconds}


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="E = 3, 10,000 training images, 1 seed")
    parser.add_argument("--epochs", type=int, default=None, help="epoch budget E (front trials: E // 3)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds for the retrained knee and (b)-(d)")
    parser.add_argument("--trials", type=int, default=20, help="trial budget of the knee study")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all 50,000; quick 10,000)")
    parser.add_argument("--no-finetune", action="store_true", help="skip (e), the knee with a masked fine-tune")
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
    config = config.validate()
    db = Path(args.json).with_suffix(".db")
    db.unlink(missing_ok=True)
    data = motune.load_dataset("fashion-mnist", config.data.data_dir, limit=limit)

    print(f"knee study: {args.trials} trials at most, front {config.train.front_epochs} epochs, full {epochs}", flush=True)
    knee0, _study = knee_network(config, f"sqlite:///{db}", args.trials)
    print(f"knee: λ={knee0['l1_weight']:.3g}, kept {knee0['fraction_kept']:.4f}, acc {knee0['test_accuracy']:.4f} "
          f"({knee0['study_trials']} trials, {knee0['study_epochs']} epochs, {knee0['study_seconds']:.0f} s)", flush=True)

    per_seed = []
    for seed in range(seeds):
        knee = knee0 if seed == 0 else retrain_full(config, knee0["l1_weight"], seed, data)
        f = knee["fraction_kept"]
        t0 = time.perf_counter()
        res = dense_and_magnitude(data, epochs, f, seed)
        res["gmp"] = gmp(data, epochs, f, seed)
        if not args.no_finetune:
            res["knee_finetune"] = knee_finetune(config, knee0["l1_weight"], data, epochs, seed)
        res["knee"] = {k: knee[k] for k in ("test_accuracy", "fraction_kept", "nonzeros_per_layer", "seed")}
        res["seconds"] = time.perf_counter() - t0
        per_seed.append(res)
        print(f"seed {seed}: " + ", ".join(f"{m} {res[m]['test_accuracy']:.4f} (kept {res[m]['fraction_kept']:.4f})"
                                           for m in METHODS if m in res), flush=True)

    def mean(method: str, key: str) -> float:
        return statistics.fmean(s[method][key] for s in per_seed)

    knee_acc, dense_acc = mean("knee", "test_accuracy"), mean("dense", "test_accuracy")
    mag_acc, gmp_acc = mean("magnitude", "test_accuracy"), mean("gmp", "test_accuracy")
    kept = mean("knee", "fraction_kept")
    loss_pp = 100 * (dense_acc - knee_acc)
    checks = {
        "knee_fraction_kept_le_0.05": kept <= TARGETS["knee_fraction_kept_max"],
        "accuracy_loss_le_1pp": loss_pp <= TARGETS["accuracy_loss_pp_max"],
        "knee_ge_magnitude": knee_acc >= mag_acc,
        "knee_ge_gmp": knee_acc >= gmp_acc,
    }
    wall = time.perf_counter() - t_start
    out = {
        "benchmark": "pruning",
        "quick": args.quick,
        "setup": {"dataset": "fashion-mnist", "train_images": len(data.x_train), "test_images": len(data.x_test),
                  "model": "lenet5", "optimizer": "adam", "lr": LR, "batch_size": BATCH, "epochs": epochs,
                  "front_epochs": config.train.front_epochs, "study_trials_max": args.trials, "seeds": seeds,
                  "sparsity_counted_over": "dense-layer weights (58,920 in LeNet-5)",
                  "magnitude": f"dense {epochs // 2} epochs, global L1 prune, fine-tune {epochs - epochs // 2}",
                  "gmp": "Zhu & Gupta cubic schedule, see per_seed[*].gmp.schedule",
                  "knee_finetune": f"knee λ {epochs - max(1, epochs // 3)} epochs, masked λ = 0 fine-tune "
                                   f"{max(1, epochs // 3)} epochs (information only)",
                  "torch_threads": args.threads, "study_storage": str(db)},
        "machine": info,
        "load_average_at_end": load_average(),
        "wall_seconds": wall,
        "knee_fraction_kept": kept,
        "knee_accuracy": knee_acc,
        "dense_accuracy": dense_acc,
        "magnitude_accuracy": mag_acc,
        "gmp_accuracy": gmp_acc,
        "magnitude_fraction_kept": mean("magnitude", "fraction_kept"),
        "gmp_fraction_kept": mean("gmp", "fraction_kept"),
        "knee_finetune_accuracy": None if args.no_finetune else mean("knee_finetune", "test_accuracy"),
        "knee_finetune_fraction_kept": None if args.no_finetune else mean("knee_finetune", "fraction_kept"),
        "knee_accuracy_loss_pp": loss_pp,
        "knee_lambda": knee0["l1_weight"],
        "knee_search": {k: v for k, v in knee0.items() if k not in ("test_accuracy", "fraction_kept")},
        "targets": TARGETS,
        "checks": checks,
        "per_seed": per_seed,
    }

    print(f"\nLeNet-5 / Fashion-MNIST ({len(data.x_train)} training images), E = {epochs} epochs, "
          f"Adam lr {LR}, batch {BATCH}; test accuracy, mean over {seeds} seed(s)")
    rows = [[m, mean(m, "test_accuracy"), mean(m, "fraction_kept"), 100 * (mean(m, "test_accuracy") - dense_acc)]
            for m in METHODS if m in per_seed[0]]
    print(table(rows, ["network", "test acc", "dense weights kept", "Δ vs dense (pp)"]))
    for name, ok in checks.items():
        print(f"{name}: {'met' if ok else 'MISSED'}")
    print(f"knee λ = {knee0['l1_weight']:.3g}; study: {knee0['study_trials']} trials, {knee0['study_epochs']} epochs, "
          f"{knee0['study_seconds']:.0f} s; wall {wall:.0f} s")
    path = write_json(args.json, out)
    print(f"wrote {path} (study: {db})")


if __name__ == "__main__":
    main()
