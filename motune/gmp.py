"""Gradual magnitude pruning (GMP), the baseline a knee network should beat.

Zhu & Gupta (2017), "To prune, or not to prune": train on cross-entropy alone and,
every ``Δt`` steps from ``t0`` for ``n`` rounds, prune the penalised weights globally by
magnitude (``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured``) to the
sparsity ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(n Δt))^3``, ``s_i = 0``, ``s_f = 1 -
fraction``; then train at ``s_f`` to the end. Here ``t0`` is the end of the first epoch,
``Δt`` a quarter epoch and pruning ends at two thirds of all steps (over the first two
thirds from step 1 when the run is too short for that). A final prune to exactly
``round((1 - fraction) · size)`` masked weights ends every run, so the network keeps
exactly the requested share (what a comparison at equal sparsity needs).

:func:`train_gmp` trains one such network with a :class:`~motune.train.TrainConfig`
(same model, data, seeding protocol, optimiser, batch size and epochs as
:func:`motune.train`; ``l1_weight`` is ignored) and returns a
:class:`~motune.train.TrainResult`, so a study's ``gmp`` baseline trial records what
every trial records. ``bench/pruning.py`` uses the same function.

In a study (``baselines = ["gmp"]``) the GMP trial can only run once the knee is known:
:func:`enqueue_for_knee` queues it when the knee's full-fidelity retrain completes, with
the knee's ``fraction_kept`` as its target and the knee's number (user attributes
``gmp_target_fraction``, ``gmp_of_trial``); it trains ``train.epochs`` epochs, as the
retrain did, with the weighted sum's optimiser and the knee's seed (``gmp_seed``: the same
initial weights and batch order, a paired comparison), and suggests no λ (the sampler ignores
it, as it ignores the SMGD baseline). It runs on top of ``n_trials`` and after
convergence, so the study ends with it. ``motune status`` prints the comparison.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

from motune.data import Dataset, Loaders
from motune.models import build_model, penalised_parameters
from motune.objectives import l1_norm, nonzeros_per_layer
from motune.sampler import FULL
from motune.train import (
    EpochRecord,
    TrainConfig,
    TrainResult,
    _evaluate,
    _steps_per_epoch,
    epoch_batches,
    final_metrics,
    make_optimizer,
    resolve_device,
    run_data,
)
from motune.trials import FIDELITY, GMP, GMP_OF, GMP_SEED, GMP_TARGET, KIND, is_full, number_or_none, trial_kind

__all__ = ["GMPSchedule", "enqueue_for_knee", "gmp_trials", "prune_to", "train_gmp"]


@dataclass(frozen=True)
class GMPSchedule:
    """When and how far to prune: steps ``t0, t0 + Δt, ..., t0 + n Δt`` (1-based optimiser steps).

    >>> s = GMPSchedule.for_run(total_steps=300, steps_per_epoch=30, fraction=0.1)
    >>> (s.t0, s.delta_t, s.n, s.sparsity(s.t0), s.sparsity(s.t0 + s.n * s.delta_t))
    (30, 7, 24, 0.0, 0.9)
    """

    t0: int
    delta_t: int
    n: int
    final_sparsity: float

    @classmethod
    def for_run(cls, total_steps: int, steps_per_epoch: int, fraction: float) -> GMPSchedule:
        """Zhu & Gupta's schedule for a run of ``total_steps`` keeping ``fraction`` of the weights."""
        t0, dt = steps_per_epoch, max(1, steps_per_epoch // 4)
        n = max(1, (2 * total_steps // 3 - t0) // dt)
        if t0 + n * dt > total_steps:  # short runs: prune over the first two thirds instead
            t0, n = 1, max(1, (2 * total_steps // 3) // dt)
        return cls(t0, dt, n, 1.0 - fraction)

    def sparsity(self, step: int) -> float | None:
        """The target sparsity after optimiser step ``step``, or None when this step does not prune."""
        if step < self.t0 or (step - self.t0) % self.delta_t or step > self.t0 + self.n * self.delta_t:
            return None
        return self.final_sparsity * (1 - (1 - (step - self.t0) / (self.n * self.delta_t)) ** 3)


def _effective(module: nn.Module, name: str) -> torch.Tensor:
    """The weight as used now (``module.<name>`` is refreshed only by a forward pass)."""
    if hasattr(module, f"{name}_mask"):
        return (getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")).detach()
    return getattr(module, name).detach()


def prune_to(layers: list[tuple[nn.Module, str]], n_pruned: int) -> None:
    """Global magnitude pruning of ``layers`` (``(module, parameter name)``) until ``n_pruned`` weights are masked.

    Masks only grow: weights masked earlier stay masked (``global_unstructured`` combines
    with existing masks, and ``amount`` counts among the unmasked ones).
    """
    already = sum(int((getattr(m, f"{n}_mask") == 0).sum()) for m, n in layers if hasattr(m, f"{n}_mask"))
    extra = n_pruned - already
    if extra > 0:
        prune.global_unstructured(layers, pruning_method=prune.L1Unstructured, amount=extra,
                                  importance_scores={(m, n): _effective(m, n) for m, n in layers})


def _layers(model: nn.Module, names: list[str]) -> list[tuple[nn.Module, str]]:
    out = []
    for name in names:
        owner, _, attr = name.rpartition(".")
        out.append((model.get_submodule(owner) if owner else model, attr))
    return out


def train_gmp(
    config: TrainConfig,
    fraction: float,
    *,
    data: Dataset | Loaders | Mapping[str, Any] | None = None,
    callback: Callable[[EpochRecord], Any] | None = None,
) -> TrainResult:
    """Train ``config``'s network on cross-entropy with GMP to ``fraction`` of its penalised weights kept.

    ``config.epochs`` epochs in all (``finetune_epochs``, ``l1_weight`` and the weighted-sum
    options are ignored: GMP's own schedule decides). ``callback`` gets each epoch's
    :class:`~motune.train.EpochRecord` (exceptions propagate, a true return value stops).

    .. testcode::

        import motune
        from motune.gmp import train_gmp

        data = motune.load_dataset("digits", limit=200)
        result = train_gmp(motune.TrainConfig(dataset="digits", epochs=2), fraction=0.1, data=data)
        assert result.nonzeros == result.penalised_size - round(0.9 * result.penalised_size)
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: must be in [0, 1], got {fraction!r}")
    cfg = config.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = run_data(cfg, data, device)
    torch.manual_seed(cfg.seed)  # motune's seeding protocol: same initial weights and batch order as motune.train
    model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args).to(device)
    names = list(penalised_parameters(model, cfg.penalise))
    layers = _layers(model, names)
    size = sum(getattr(m, n).numel() for m, n in layers)
    optimizer = make_optimizer(cfg.optimizer, list(model.parameters()), cfg.lr, cfg.momentum, cfg.weight_decay)
    spe = _steps_per_epoch(data, cfg.batch_size)
    schedule = GMPSchedule.for_run(cfg.epochs * spe, spe, fraction)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[EpochRecord] = []
    step, train_seconds, stopped = 0, 0.0, False
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        loss_sum, batches = torch.zeros((), device=device), 0
        for x, y in epoch_batches(data, cfg.batch_size, generator, device):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            target = schedule.sparsity(step)
            if target is not None:
                prune_to(layers, round(target * size))
            loss_sum += loss.detach()
            batches += 1
        train_seconds += time.perf_counter() - t0
        current = {n: _effective(m, a) for n, (m, a) in zip(names, layers)}
        per_layer = nonzeros_per_layer(current)
        record = EpochRecord(epoch=epoch, train_loss=float(loss_sum) / max(batches, 1), l1=l1_norm(current),
                             nonzeros=sum(per_layer.values()), nonzeros_per_layer=per_layer,
                             lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - t0)
        if cfg.eval_every_epoch:
            record.val_cross_entropy, record.val_accuracy = _evaluate(model, data, "val", device)
        history.append(record)
        if callback is not None and callback(record):
            stopped = epoch < cfg.epochs
            break

    prune_to(layers, round((1.0 - fraction) * size))  # exactly the requested share, whatever the schedule reached
    for m, a in layers:
        if prune.is_pruned(m) and hasattr(m, f"{a}_mask"):
            prune.remove(m, a)  # the mask becomes zeros in the plain weight: an ordinary state dict
    weights = dict(zip(names, (getattr(m, a) for m, a in layers)))
    return TrainResult(
        config=cfg, **final_metrics(model, data, weights, device), epochs=len(history), stopped_early=stopped,
        seconds=time.perf_counter() - t_start, train_seconds=train_seconds, alpha_mean=None,
        input_shape=tuple(data.input_shape), num_classes=data.num_classes, history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        model_name=cfg.model, model_args=dict(cfg.model_args), penalised=names,
    )


def gmp_trials(study: optuna.Study, knee_number: int | None = None) -> list[optuna.trial.FrozenTrial]:
    """The study's gmp trials (any state), or those compared with knee trial ``knee_number``."""
    return [t for t in study.get_trials(deepcopy=False) if trial_kind(t) == GMP
            and (knee_number is None or t.user_attrs.get(GMP_OF) == knee_number)]


def enqueue_for_knee(study: optuna.Study, knee: optuna.trial.FrozenTrial | None) -> bool:
    """Queue the GMP trial for ``knee`` if it is a completed full-fidelity retrain without one yet; True if queued.

    Called by the worker that completed the trial (so, with several workers, once): a
    retried knee or a resumed study finds the existing gmp trial and queues none.
    """
    if knee is None or knee.state != optuna.trial.TrialState.COMPLETE or not is_full(knee):
        return False
    fraction = number_or_none(knee.user_attrs.get("fraction_kept"))
    if fraction is None or gmp_trials(study, knee.number):
        return False
    attrs = {KIND: GMP, FIDELITY: FULL, GMP_TARGET: fraction, GMP_OF: knee.number}
    seed = number_or_none(knee.user_attrs.get("seed"))
    if seed is not None:
        attrs[GMP_SEED] = int(seed)
    study.enqueue_trial({}, user_attrs=attrs, skip_if_exists=False)
    return True
