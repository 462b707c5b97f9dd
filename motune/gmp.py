"""Gradual magnitude pruning (GMP): the baseline a sparse network from motune is measured against.

Zhu & Gupta (2017, "To prune, or not to prune"): train the network on cross-entropy alone
and, every ``Δt`` steps from step ``t0`` for ``n`` intervals, prune the penalised weights
of smallest magnitude (globally, across layers) to the sparsity

    s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n Δt))^3,    s_i = 0,

then train at the final sparsity ``s_f`` to the end, the pruned weights held at zero.
Pruning is ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` (masks
that combine, so each step prunes among the weights still alive), made permanent at the
end. :class:`GMPSchedule` holds the schedule; :func:`train_gmp` is one run, with a
:class:`~motune.train.TrainConfig`'s data, model, optimiser, learning rate (schedule),
batch size, epochs, seed and penalised weights (``l1_weight``, ``l1_ramp``,
``optimizer_form``, ``finetune_epochs`` and intra-training pruning do not apply), and the
seeding protocol of :func:`motune.train`: with the same seed both start from the same
weights and see the same minibatches.

The target is a number of penalised weights to keep (``nonzeros``) or a fraction of them
(``fraction_kept``, rounded to a count): the run ends with exactly that many nonzero
penalised weights. A study with ``baselines = ["gmp"]`` trains one such network at the
knee's sparsity, epochs and seed (:func:`enqueue_due`); ``bench/pruning.py`` uses
:func:`train_gmp` for its GMP rows.

Example:

    >>> import motune
    >>> data = motune.load_dataset("digits", limit=200)
    >>> config = motune.TrainConfig(epochs=2, seed=0)
    >>> result = train_gmp(config, nonzeros=300, data=data)
    >>> result.nonzeros, result.penalised_size
    (300, 8832)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState
from torch import nn
from torch.nn.utils import prune

from motune.data import Dataset, Loaders, as_data, load_data
from motune.models import build_model, penalised_parameters
from motune.objectives import l1_norm, nonzeros_per_layer, penalised_size
from motune.sampler import FULL
from motune.train import (
    DivergenceError,
    EpochRecord,
    TrainConfig,
    TrainResult,
    _device_batches,
    _evaluate,
    _make_scheduler,
    _steps_per_epoch,
    make_optimizer,
    resolve_device,
)
from motune.trials import FIDELITY, GMP, KIND, trial_kind

__all__ = ["GMPSchedule", "Target", "comparison", "duplicate_of", "enqueue_due", "gmp_trials", "train_gmp"]

# User attributes of a GMP trial (besides every trial's; see motune.trials).
KNEE_TRIAL = "gmp_knee_trial"  # the knee trial it is compared with
TARGET_NONZEROS = "gmp_target_nonzeros"  # penalised weights it keeps: the knee's nonzeros
TARGET_FRACTION = "gmp_target_fraction"  # the same as a fraction: the knee's fraction_kept


@dataclass(frozen=True)
class GMPSchedule:
    """When GMP prunes, and to what sparsity: steps ``t0, t0 + Δt, ..., t0 + n Δt`` of ``total``.

    :meth:`for_run` is the schedule of ``bench/pruning.py`` (docs/benchmarks.md §2): from
    the end of the first epoch to two thirds of the run, a quarter epoch apart.

    >>> s = GMPSchedule.for_run(steps_per_epoch=8, epochs=6)
    >>> s.t0, s.dt, s.n, s.end, s.total
    (8, 2, 12, 32, 48)
    >>> [round(s.sparsity(t, 0.9), 3) for t in (8, 20, 32)], s.sparsity(9, 0.9), s.sparsity(34, 0.9)
    ([0.0, 0.787, 0.9], None, None)
    """

    t0: int  # first pruning step (1-based: the step after the t0-th optimiser step)
    dt: int  # steps between two pruning steps
    n: int  # intervals: the last pruning step is t0 + n dt
    total: int  # optimiser steps in the run

    @classmethod
    def for_run(cls, steps_per_epoch: int, epochs: int) -> GMPSchedule:
        """Zhu & Gupta's schedule fitted to a run: ``t0`` = end of epoch 1, ``Δt`` = a quarter epoch,
        the last step at two thirds of the run; a run too short for that prunes over its first
        two thirds from step 1."""
        total = epochs * steps_per_epoch
        t0, dt = steps_per_epoch, max(1, steps_per_epoch // 4)
        n = max(1, (2 * total // 3 - t0) // dt)
        if t0 + n * dt > total:  # tiny budgets: prune over the first two thirds instead
            t0, n = 1, max(1, (2 * total // 3) // dt)
        return cls(t0, dt, n, total)

    @property
    def end(self) -> int:
        """The last pruning step (after it the run trains at the final sparsity)."""
        return self.t0 + self.n * self.dt

    def sparsity(self, step: int, final: float) -> float | None:
        """The sparsity to prune to after optimiser step ``step`` (1-based); None: no pruning there."""
        if step < self.t0 or step > self.end or (step - self.t0) % self.dt:
            return None
        return final * (1.0 - (1.0 - (step - self.t0) / (self.n * self.dt)) ** 3)


def _targets(model: nn.Module, penalised: Mapping[str, nn.Parameter]) -> list[tuple[nn.Module, str]]:
    """``(module, attribute)`` of every penalised weight, as ``torch.nn.utils.prune`` names them."""
    out = []
    for name in penalised:
        module_name, _, attr = name.rpartition(".")
        out.append((model.get_submodule(module_name), attr))
    return out


def _effective(module: nn.Module, attr: str) -> torch.Tensor:
    """The weight as the network uses it now (``module.<attr>`` is only refreshed by a forward pass)."""
    if hasattr(module, f"{attr}_mask"):
        return (getattr(module, f"{attr}_orig") * getattr(module, f"{attr}_mask")).detach()
    return getattr(module, attr).detach()


def prune_to(targets: Sequence[tuple[nn.Module, str]], n_pruned: int) -> None:
    """Global L1 (magnitude) pruning of ``targets`` until ``n_pruned`` weights are masked in all.

    ``global_unstructured`` combines a new mask with the existing ones: its ``amount``
    counts among the weights still alive, so the masks only grow.
    """
    already = sum(int((m.get_buffer(f"{a}_mask") == 0).sum()) for m, a in targets if hasattr(m, f"{a}_mask"))
    extra = n_pruned - already
    if extra <= 0:
        return
    prune.global_unstructured(list(targets), pruning_method=prune.L1Unstructured, amount=extra,
                              importance_scores={(m, a): _effective(m, a) for m, a in targets})


def train_gmp(
    config: TrainConfig,
    *,
    nonzeros: int | None = None,
    fraction_kept: float | None = None,
    data: Dataset | Loaders | Mapping[str, Any] | None = None,
    model: nn.Module | Callable[..., nn.Module] | None = None,
    callback: Callable[[EpochRecord], Any] | None = None,
) -> TrainResult:
    """Train one network with gradual magnitude pruning to ``nonzeros`` (or ``fraction_kept``) penalised weights.

    ``config``, ``data``, ``model`` and ``callback`` are as for :func:`motune.train` (the
    l1 and intra-training-pruning settings are ignored: GMP trains cross-entropy alone);
    give exactly one of ``nonzeros`` (a count, as a knee trial records it) and
    ``fraction_kept`` (in [0, 1], rounded to a count of the penalised weights). The result
    is a :class:`~motune.train.TrainResult` whose state dict holds the pruned weights as
    zeros (the masks made permanent): exactly that many penalised weights are nonzero.
    Raises ``ValueError`` for a bad target or config and :class:`~motune.train.DivergenceError`
    when the loss becomes NaN or infinite.
    """
    if (nonzeros is None) == (fraction_kept is None):
        raise ValueError("train_gmp: give exactly one of nonzeros= and fraction_kept=")
    if fraction_kept is not None and not (isinstance(fraction_kept, (int, float)) and 0.0 <= fraction_kept <= 1.0):
        raise ValueError(f"fraction_kept: must be a number in [0, 1], got {fraction_kept!r}")
    cfg = config.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    if data is None:
        data = load_data(cfg.dataset, cfg.data_dir, image_size=cfg.image_size, limit=cfg.limit, args=cfg.data_args)
    data = as_data(data)
    in_memory = isinstance(data, Dataset)
    if in_memory:
        data = data.to(device)

    torch.manual_seed(cfg.seed)  # motune.train's seeding protocol: same initial weights
    if isinstance(model, nn.Module):
        model_name, model_args = f"{type(model).__module__}:{type(model).__qualname__}", {}
    else:
        factory = model
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args, factory=factory)
        model_name = cfg.model if factory is None else f"{factory.__module__}:{factory.__qualname__}"
        model_args = dict(cfg.model_args)
    model = model.to(device)
    penalised = penalised_parameters(model, cfg.penalise)
    size = penalised_size(penalised)
    keep = round(fraction_kept * size) if fraction_kept is not None else nonzeros
    if not isinstance(keep, int) or isinstance(keep, bool) or not 0 <= keep <= size:
        raise ValueError(f"nonzeros: must be an integer in [0, {size}] (the penalised weights), got {nonzeros!r}")
    targets = _targets(model, penalised)
    optimizer = make_optimizer(cfg.optimizer, list(model.parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)
    scheduler = _make_scheduler(cfg.lr_schedule, optimizer, cfg.epochs)
    schedule = GMPSchedule.for_run(_steps_per_epoch(data, cfg.batch_size), cfg.epochs)
    final = 1.0 - keep / size if size else 0.0

    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[EpochRecord] = []
    step, train_seconds, stopped_early = 0, 0.0, False
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        if in_memory:
            order = torch.randperm(len(data.x_train), generator=generator).to(device)
            batches: Iterable[tuple[torch.Tensor, torch.Tensor]] = (
                (data.x_train[idx], data.y_train[idx]) for idx in order.split(cfg.batch_size)
            )
        else:
            batches = _device_batches(data.train, device)
        loss_sum, n_steps = torch.zeros((), device=device), 0
        for xb, yb in batches:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            sparsity = schedule.sparsity(step, final)
            if sparsity is not None:
                # The last step prunes to the exact count; the others round the cubic curve.
                prune_to(targets, size - keep if step == schedule.end else round(sparsity * size))
            loss_sum += loss.detach()
            n_steps += 1
        train_seconds += time.perf_counter() - t_epoch
        train_loss = float(loss_sum) / max(n_steps, 1)
        if not math.isfinite(train_loss):
            raise DivergenceError(f"training diverged: mean minibatch loss became {train_loss} in epoch {epoch} "
                                  f"(lr={cfg.lr}, optimizer={cfg.optimizer}); lower the learning rate",
                                  epoch=epoch, loss=train_loss)
        lr_now = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        weights = {name: _effective(m, a) for name, (m, a) in zip(penalised, targets)}
        per_layer = nonzeros_per_layer(weights)
        record = EpochRecord(epoch=epoch, train_loss=train_loss, l1=l1_norm(weights), nonzeros=sum(per_layer.values()),
                             nonzeros_per_layer=per_layer, lr=lr_now, seconds=train_seconds)
        if cfg.eval_every_epoch:
            record.val_cross_entropy, record.val_accuracy = _evaluate(model, data, "val", device)
        history.append(record)
        if callback is not None and callback(record):
            stopped_early = epoch < cfg.epochs
            break

    prune_to(targets, size - keep)  # a run cut short (or too short for the schedule) still ends at the target
    for module, attr in targets:
        if prune.is_pruned(module) and hasattr(module, f"{attr}_mask"):
            prune.remove(module, attr)  # permanent: plain weights with zeros, the original Parameter objects
    cross_entropy, val_accuracy = _evaluate(model, data, "val", device)
    test_cross_entropy, test_accuracy = _evaluate(model, data, "test", device)
    per_layer = nonzeros_per_layer(penalised)
    kept = sum(per_layer.values())
    return TrainResult(
        config=cfg, cross_entropy=cross_entropy, l1=l1_norm(penalised), val_accuracy=val_accuracy,
        test_cross_entropy=test_cross_entropy, test_accuracy=test_accuracy, nonzeros=kept,
        nonzeros_per_layer=per_layer, penalised_size=size, fraction_kept=kept / size if size else 0.0,
        epochs=len(history), stopped_early=stopped_early, seconds=time.perf_counter() - t_start,
        train_seconds=train_seconds, alpha_mean=None, input_shape=tuple(data.input_shape),
        num_classes=data.num_classes, history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        model_name=model_name, model_args=model_args, penalised=list(penalised),
    )


# ----------------------------------------------------------------------------- the GMP trial of a study


def _knee_of(trial: FrozenTrial) -> Any:
    return trial.user_attrs.get(KNEE_TRIAL)


def gmp_trials(trials: Sequence[FrozenTrial], knee: FrozenTrial | None = None) -> list[FrozenTrial]:
    """The GMP trials among ``trials`` (those comparing with ``knee`` only, when given), in trial order."""
    return [t for t in trials if trial_kind(t) == GMP and (knee is None or _knee_of(t) == knee.number)]


def comparison(study: optuna.Study, knee: FrozenTrial | None) -> FrozenTrial | None:
    """The completed GMP trial that compares with ``knee`` (the latest, should there be several), or None."""
    if knee is None:
        return None
    done = gmp_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), knee)
    return done[-1] if done else None


def trial_attrs(knee: FrozenTrial) -> dict[str, Any]:
    """The user attributes a GMP trial is enqueued with: what it compares with and what it trains.

    Its target (the knee's nonzeros and fraction kept), its fidelity (the knee's: the same
    epochs) and its seed (the knee's: the same initial weights and minibatch order).
    """
    a = knee.user_attrs
    return {KIND: GMP, KNEE_TRIAL: knee.number, TARGET_NONZEROS: int(a["nonzeros"]),
            TARGET_FRACTION: float(a["fraction_kept"]), FIDELITY: a.get(FIDELITY), "seed": a.get("seed")}


def enqueue_due(study: optuna.Study, knee: FrozenTrial | None) -> bool:
    """Queue the GMP trial of ``knee`` unless the study has one; return whether one waits to run.

    Call it once the search has converged (``knee`` is then final: the full-fidelity retrain
    when the study has one). Every worker may call it; two that queue at the same moment
    make two trials, of which :func:`duplicate_of` lets only the first run.
    """
    if knee is None or not isinstance(knee.user_attrs.get("nonzeros"), int):
        return False
    mine = gmp_trials(study.get_trials(deepcopy=False), knee)
    if not mine:
        study.enqueue_trial({}, user_attrs=trial_attrs(knee), skip_if_exists=False)
        return True
    return any(t.state == TrialState.WAITING for t in mine)


def duplicate_of(study: optuna.Study, trial: Any) -> int | None:
    """The number of an earlier GMP trial for the same knee that runs, waits or completed, if any.

    Then ``trial`` (queued by a second worker at the same moment) must not run: exactly one
    GMP trial per knee completes. Failed ones do not count (a retry takes their place).
    """
    knee = trial.user_attrs.get(KNEE_TRIAL)
    live = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
    earlier = [t.number for t in gmp_trials(study.get_trials(deepcopy=False, states=live))
               if t.number < trial.number and _knee_of(t) == knee]
    return earlier[0] if earlier else None


@dataclass(frozen=True)
class Target:
    """What a queued GMP trial trains (from its user attributes, see :func:`trial_attrs`)."""

    nonzeros: int
    fidelity: str
    seed: int | None
    attrs: dict[str, Any]  # recorded on the trial with its results

    @classmethod
    def of(cls, trial: Any) -> Target:
        a = trial.user_attrs
        if not isinstance(a.get(TARGET_NONZEROS), int):
            raise ValueError(f"trial {trial.number} is a GMP trial without {TARGET_NONZEROS}: queue it with "
                             "motune.gmp.enqueue_due (it trains to a knee's sparsity)")
        seed = a.get("seed")
        return cls(a[TARGET_NONZEROS], a.get("fidelity") or FULL, seed if isinstance(seed, int) else None,
                   {k: a[k] for k in (KNEE_TRIAL, TARGET_NONZEROS, TARGET_FRACTION) if k in a})
