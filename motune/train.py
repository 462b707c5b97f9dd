"""One training run on the biobjective problem: a config in, a result out (no Optuna here).

The loop reads top to bottom (nanoGPT style): build data and model, pick the gradient
combiner (weighted sum or multi-gradient) and the pruning policy, then for every
minibatch: forward, backward, combine, step, prune. Everything else (evaluation,
history, the callback, the divergence check) happens once per epoch, off the hot path.

Seeding protocol (so a plain PyTorch loop can reproduce a run bit for bit):
``torch.manual_seed(seed)`` right before the model is built, and the minibatch order of
epoch ``e`` is ``torch.randperm(n_train, generator=g)`` with one CPU generator
``g = torch.Generator().manual_seed(seed)`` drawn once per epoch.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from motune.combine import MultiGradient, cubic_ramp
from motune.data import DATASETS, Dataset, Loaders, as_data, load_data
from motune.hook import SparseTraining
from motune.imports import check_import_path, is_import_path
from motune.models import MODELS, build_model, check_penalise, penalised_parameters
from motune.objectives import evaluate, l1_norm, nonzeros_per_layer, penalised_size
from motune.optim import OPTIMIZER_FORMS, PerObjectiveAdam, PerObjectiveOptimizer, PerObjectiveRMSprop
from motune.pruning import PRUNE_POLICIES

METHODS: tuple[str, ...] = ("weighted_sum", "multi_gradient")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "rmsprop")
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite; the run's results would be garbage."""

    def __init__(self, message: str, *, epoch: int, loss: float) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.loss = loss


@dataclass
class TrainConfig:
    """Everything one training run needs. ``validate()`` checks every field.

    ``method="weighted_sum"`` trains ``(1 - l1_weight) f1 + l1_weight f2``;
    ``method="multi_gradient"`` ignores ``l1_weight`` and combines the two gradients
    by the min-norm rule every step (SMGD with ``optimizer="sgd"``).

    ``optimizer_form``: ``"combined"`` steps a stock ``torch.optim`` optimiser along
    ``alpha g1 + (1 - alpha) sign(w)``; ``"per_objective"`` gives Adam / RMSprop separate
    moments per objective, as the authors' MAdam / MRMSprop (:mod:`motune.optim`; the same
    update as ``"combined"`` for SGD).

    ``l1_ramp``: warm-up of the l1 weight, a fraction of the penalised epochs
    (``epochs - finetune_epochs``) over which the weighted sum's ``l1_weight`` grows from
    0 to its value on a cubic curve (:func:`~motune.combine.cubic_ramp`), step by step;
    0 = no ramp. The multi-gradient method has no ``l1_weight`` and ignores it. Default
    0.5: in ``bench/pruning.py --ablation`` (LeNet-5 / Fashion-MNIST, 15 epochs, 2 seeds)
    it gained ~1.9 pp of test accuracy at matched sparsity, the largest of the levers;
    the per-objective form gained nothing on top of it, so ``"combined"`` stays the
    default (docs/benchmarks.md §2).
    ``finetune_epochs``: the last epochs train cross-entropy alone with the pruning mask
    frozen.

    ``dataset`` and ``model`` name a built-in or an import path ``"module:callable"``
    (your own data and network, :mod:`motune.imports`; keyword arguments in
    ``data_args`` / ``model_args``); ``penalise`` is ``"dense"``, ``"all"`` or a list of
    glob patterns over parameter names (biases never).

    ``device``: ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``; checked for its form here and against the machine by :func:`train`.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = None
    limit: int | None = None
    data_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of an import-path dataset
    model: str = "digits_cnn"
    model_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments of an import-path model
    penalise: str | list[str] = "dense"
    method: str = "weighted_sum"
    l1_weight: float = 0.0
    optimizer: str = "adam"
    lr: float = 0.003
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    batch_size: int = 64
    epochs: int = 10
    prune_threshold: float = 1e-3
    prune_policy: str = "soft"
    finetune_epochs: int = 0
    optimizer_form: str = "combined"
    l1_ramp: float = 0.5
    seed: int = 0
    device: str = "auto"
    eval_every_epoch: bool = False  # validation metrics in every EpochRecord (costs a pass over val data)

    def validate(self) -> TrainConfig:
        """Raise ``ValueError`` naming the field, the value and what is allowed; return self."""
        _user_or_builtin("dataset", self.dataset, DATASETS, "data_args", self.data_args)
        _user_or_builtin("model", self.model, MODELS, "model_args", self.model_args)
        if is_import_path(self.dataset):
            for name in ("image_size", "limit"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: applies to built-in datasets only; let {self.dataset} take it as an argument")
        check_penalise(self.penalise)
        _choice("method", self.method, METHODS)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("prune_policy", self.prune_policy, PRUNE_POLICIES)
        _choice("optimizer_form", self.optimizer_form, OPTIMIZER_FORMS)
        _number("l1_ramp", self.l1_ramp, low=0.0, high=1.0, allowed="a fraction in [0, 1] of the penalised epochs")
        _number("l1_weight", self.l1_weight, low=0.0, high=1.0, allowed="a number in [0, 1]")
        _number("lr", self.lr, low=0.0, low_open=True, allowed="a number > 0")
        _number("momentum", self.momentum, low=0.0, high=1.0, high_open=True, allowed="a number in [0, 1)")
        _number("weight_decay", self.weight_decay, low=0.0, allowed="a number >= 0")
        _number("prune_threshold", self.prune_threshold, low=0.0, allowed="a number >= 0")
        _positive_int("batch_size", self.batch_size)
        _positive_int("epochs", self.epochs)
        if not isinstance(self.finetune_epochs, int) or isinstance(self.finetune_epochs, bool) or not (
            0 <= self.finetune_epochs < self.epochs
        ):
            raise ValueError(f"finetune_epochs: must be an integer in [0, epochs), got {self.finetune_epochs!r}")
        for name in ("image_size", "limit"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        check_device(self.device)  # the form only: whether this machine has it is train()'s question
        return self

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` applied (like ``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


@dataclass
class EpochRecord:
    """What is measured at the end of every epoch (the pruning history)."""

    epoch: int
    train_loss: float
    l1: float
    nonzeros: int
    nonzeros_per_layer: dict[str, int]
    lr: float
    seconds: float
    val_cross_entropy: float | None = None
    val_accuracy: float | None = None
    alpha_mean: float | None = None


@dataclass
class TrainResult:
    """The outcome of one run: both objectives on validation data and every measurement."""

    config: TrainConfig
    cross_entropy: float
    l1: float
    val_accuracy: float
    test_cross_entropy: float
    test_accuracy: float
    nonzeros: int
    nonzeros_per_layer: dict[str, int]
    penalised_size: int
    fraction_kept: float
    epochs: int
    stopped_early: bool
    seconds: float
    train_seconds: float
    alpha_mean: float | None
    input_shape: tuple[int, ...]
    num_classes: int
    history: list[EpochRecord] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    # How to rebuild the network (a checkpoint records both): a built-in name or an import path.
    model_name: str = ""
    model_args: dict[str, Any] = field(default_factory=dict)
    penalised: list[str] = field(default_factory=list)  # names of the penalised weights


def check_device(device: str) -> torch.device | None:
    """The form of a device setting, without looking at this machine's hardware: ``"auto"``
    -> None, otherwise the ``torch.device`` it names (``"cpu"``, ``"cuda"``, ``"cuda:N"``).

    The device is a local choice: a config that names ``"cuda:1"`` is valid on a machine
    without one (a study created on a GPU box is inspected on a laptop);
    :func:`resolve_device` checks the hardware where training runs.
    """
    if device == "auto":
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device: unknown device {device!r}; allowed: 'auto', 'cpu', 'cuda', 'cuda:N'") from exc


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; otherwise a device torch accepts and this machine has.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    dev = check_device(device)
    if dev is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {device!r} requested but CUDA is not available on this machine; use 'auto' or 'cpu'")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"device: {device!r} requested but this machine has {count} CUDA device(s): "
                             f"cuda:0 to cuda:{count - 1}")
    return dev


def make_optimizer(
    name: str,
    params: Any,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    form: str = "combined",
    penalised: Sequence[torch.Tensor] = (),
) -> torch.optim.Optimizer:
    """The optimiser of a run: a stock ``torch.optim`` one for the combined direction, or a
    :class:`~motune.optim.PerObjectiveOptimizer` (``form="per_objective"``, Adam / RMSprop;
    ``penalised`` are the weights ``g2`` acts on). SGD is linear in the gradient, so its
    per-objective form *is* the combined one: plain ``torch.optim.SGD`` either way."""
    if form not in OPTIMIZER_FORMS:
        raise ValueError(f"optimizer_form: unknown value {form!r}; allowed: {', '.join(OPTIMIZER_FORMS)}")
    per_objective = form == "per_objective"
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        if per_objective:
            return PerObjectiveAdam(params, penalised, lr=lr, weight_decay=weight_decay)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        if per_objective:
            return PerObjectiveRMSprop(params, penalised, lr=lr, momentum=momentum, weight_decay=weight_decay)
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer: unknown optimizer {name!r}; allowed: {', '.join(OPTIMIZERS)}")


def _make_scheduler(name: str, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=max(1, epochs // 3), gamma=0.1)
    return None


EpochCallback = Callable[[EpochRecord], "bool | None"]


def train(
    config: TrainConfig,
    *,
    model: nn.Module | Callable[..., nn.Module] | None = None,
    data: Dataset | Loaders | Mapping[str, Any] | None = None,
    callback: EpochCallback | None = None,
    init_state: Mapping[str, torch.Tensor] | None = None,
) -> TrainResult:
    """Train one network on the biobjective problem and measure it.

    ``model``: your own network, an ``nn.Module`` (trained in place) or a factory called
    like an import-path model (``input_shape=``, ``num_classes=`` where it takes them,
    plus ``config.model_args``); default: build ``config.model``. ``penalise`` globs then
    name its parameters.
    ``data``: a :class:`~motune.data.Dataset` (in-memory tensors, the fast path; pass one
    to reuse it across runs) or a mapping with ``"train"``, ``"val"`` and optionally
    ``"test"`` loaders, any re-iterables of ``(x, y)`` batches (the loader decides order
    and batch size; ``batch_size`` and the seeded order apply to a Dataset only);
    default: load ``config.dataset``. Without test batches the test metrics are NaN.
    ``callback`` is called with each :class:`EpochRecord`; returning True stops training
    early (the result then says ``stopped_early``); exceptions it raises propagate (an
    Optuna objective can raise ``TrialPruned`` from it).
    ``init_state``: a state dict loaded into the network after it is built, before
    training (a warm start, e.g. from a trained parent: :mod:`motune.continuation`);
    its zeros are where pruning starts from.

    Every step is :class:`~motune.hook.SparseTraining`'s (combine, step, prune), so a
    loop of your own with that hook reproduces this function's numbers.

    .. testcode::

        import torch
        from torch import nn
        import motune

        data = motune.load_dataset("digits", limit=200)
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        config = motune.TrainConfig(penalise=["1.weight", "3.*"], l1_weight=1e-3, epochs=2)
        result = motune.train(config, model=net, data=data)
        assert result.penalised == ["1.weight", "3.weight"] and result.penalised_size == 64 * 32 + 32 * 10

    Raises ``ValueError`` for a bad config (starting with the setting at fault; an
    :class:`~motune.imports.ImportPathError` for user code) and :class:`DivergenceError`
    when the loss becomes NaN or infinite.
    """
    cfg = config.validate()
    t_start = time.perf_counter()
    device = resolve_device(cfg.device)
    data = run_data(cfg, data, device)

    torch.manual_seed(cfg.seed)
    if isinstance(model, nn.Module):
        model_name, model_args = f"{type(model).__module__}:{type(model).__qualname__}", {}
    else:
        factory = model
        model = build_model(cfg.model, data.input_shape, data.num_classes, cfg.model_args, factory=factory)
        model_name = cfg.model if factory is None else f"{factory.__module__}:{factory.__qualname__}"
        model_args = dict(cfg.model_args)
    if init_state is not None:
        model.load_state_dict(init_state)
    model = model.to(device)
    penalised = penalised_parameters(model, cfg.penalise)
    weights = list(penalised.values())
    params = list(model.parameters())
    optimizer = make_optimizer(cfg.optimizer, params, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.optimizer_form, weights)
    # One mechanism, two forms: the combiner decides alpha every step; a stock optimiser
    # steps along the combined .grad, a per-objective one takes g1 (.grad), g2 and alpha.
    per_objective = isinstance(optimizer, PerObjectiveOptimizer)
    scheduler = _make_scheduler(cfg.lr_schedule, optimizer, cfg.epochs)
    # The per-objective step reads alpha on the host anyway: compute it there.
    hook = SparseTraining(model, penalised, l1_weight=cfg.l1_weight if cfg.method == "weighted_sum" else 0.0,
                          method=cfg.method, prune_threshold=cfg.prune_threshold, prune_policy=cfg.prune_policy,
                          host_alpha=True if per_objective else None)

    generator = torch.Generator().manual_seed(cfg.seed)
    # Warm-up of the l1 weight over the first l1_ramp of the penalised steps (weighted sums only).
    ramped = hook if cfg.method == "weighted_sum" and cfg.l1_weight > 0 and cfg.l1_ramp > 0 else None
    ramp_steps = round(cfg.l1_ramp * (cfg.epochs - cfg.finetune_epochs) * _steps_per_epoch(data, cfg.batch_size)) if ramped else 0
    step = 0
    history: list[EpochRecord] = []
    alpha_total, n_alpha_steps = 0.0, 0  # over multi-gradient steps only
    train_seconds, stopped_early = 0.0, False
    model.train()
    finetune_from = cfg.epochs - cfg.finetune_epochs + 1
    for epoch in range(1, cfg.epochs + 1):
        if epoch == finetune_from and cfg.finetune_epochs:
            # Fine-tuning: cross-entropy only, on the sparsity pattern reached so far
            # (a permanent mask at the same threshold), to recover accuracy at that sparsity.
            hook = SparseTraining(model, penalised, prune_threshold=cfg.prune_threshold,
                                  prune_policy="permanent" if hook.pruning.active else "none")
        t_epoch = time.perf_counter()
        batches = epoch_batches(data, cfg.batch_size, generator, device)
        loss_sum = torch.zeros((), device=device)
        alpha_sum: float | torch.Tensor = 0.0  # stays a float when alpha is one (CPU): no kernel per step
        n_steps = 0
        # --- hot path: forward, backward, combine, step, prune ---
        for xb, yb in batches:
            if ramped is not None and step <= ramp_steps:  # during the warm-up only: one float per step
                ramped.l1_weight = cfg.l1_weight * cubic_ramp(step, ramp_steps)
            loss = F.cross_entropy(model(xb), yb)
            hook.zero_grad(optimizer)  # optimizer.zero_grad(); multi-gradient: keeps .grad views of its flat buffer
            loss.backward()
            alpha = hook.step(optimizer)  # combine g1 and g2, step, prune
            loss_sum += loss.detach()
            if alpha is not None:
                alpha_sum += alpha
            n_steps += 1
            step += 1
        # --- once per epoch ---
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        train_seconds += time.perf_counter() - t_epoch
        train_loss = float(loss_sum) / n_steps
        if not math.isfinite(train_loss):
            raise DivergenceError(
                f"training diverged: mean minibatch loss became {train_loss} in epoch {epoch} "
                f"(lr={cfg.lr}, optimizer={cfg.optimizer}); lower the learning rate",
                epoch=epoch,
                loss=train_loss,
            )
        lr_now = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        per_layer = nonzeros_per_layer(penalised)
        record = EpochRecord(
            epoch=epoch,
            train_loss=train_loss,
            l1=l1_norm(penalised),
            nonzeros=sum(per_layer.values()),
            nonzeros_per_layer=per_layer,
            lr=lr_now,
            seconds=train_seconds,
            alpha_mean=float(alpha_sum) / n_steps if isinstance(hook.combiner, MultiGradient) else None,
        )
        if isinstance(hook.combiner, MultiGradient):
            alpha_total += float(alpha_sum)
            n_alpha_steps += n_steps
        if cfg.eval_every_epoch:
            record.val_cross_entropy, record.val_accuracy = _evaluate(model, data, "val", device)
        history.append(record)
        if callback is not None and callback(record):
            stopped_early = epoch < cfg.epochs
            break

    return TrainResult(
        config=cfg,
        **final_metrics(model, data, penalised, device),
        epochs=len(history),
        stopped_early=stopped_early,
        seconds=time.perf_counter() - t_start,
        train_seconds=train_seconds,
        alpha_mean=alpha_total / n_alpha_steps if n_alpha_steps else None,
        input_shape=tuple(data.input_shape),
        num_classes=data.num_classes,
        history=history,
        state_dict={k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        model_name=model_name,
        model_args=model_args,
        penalised=list(penalised),
    )


def run_data(cfg: TrainConfig, data: Dataset | Loaders | Mapping[str, Any] | None, device: torch.device) -> Dataset | Loaders:
    """A run's data: ``data`` as given (a Dataset moved to ``device``) or, when None, ``cfg.dataset`` loaded."""
    if data is None:
        data = load_data(cfg.dataset, cfg.data_dir, image_size=cfg.image_size, limit=cfg.limit, args=cfg.data_args)
    data = as_data(data)
    return data.to(device) if isinstance(data, Dataset) else data


def epoch_batches(
    data: Dataset | Loaders, batch_size: int, generator: torch.Generator, device: torch.device
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's ``(x, y)`` training batches on ``device``.

    A Dataset (the fast path) is indexed in the seeded order ``torch.randperm(n, generator=g)``
    (the seeding protocol above; one draw per epoch); loaders give their own order.
    """
    if isinstance(data, Dataset):
        order = torch.randperm(len(data.x_train), generator=generator).to(device)
        return ((data.x_train[idx], data.y_train[idx]) for idx in order.split(batch_size))
    return _device_batches(data.train, device)


def final_metrics(
    model: nn.Module, data: Dataset | Loaders, penalised: Mapping[str, torch.Tensor], device: torch.device
) -> dict[str, Any]:
    """A trained network's :class:`TrainResult` measurements: both objectives on the validation
    data, test metrics, and the sparsity of the ``penalised`` weights."""
    cross_entropy, val_accuracy = _evaluate(model, data, "val", device)
    test_cross_entropy, test_accuracy = _evaluate(model, data, "test", device)
    per_layer = nonzeros_per_layer(penalised)
    size = penalised_size(penalised)
    nonzeros = sum(per_layer.values())
    return {
        "cross_entropy": cross_entropy,
        "l1": l1_norm(penalised),
        "val_accuracy": val_accuracy,
        "test_cross_entropy": test_cross_entropy,
        "test_accuracy": test_accuracy,
        "nonzeros": nonzeros,
        "nonzeros_per_layer": per_layer,
        "penalised_size": size,
        "fraction_kept": nonzeros / size if size else 0.0,
    }


def _steps_per_epoch(data: Dataset | Loaders, batch_size: int) -> int:
    """Optimiser steps in one epoch (a loader without ``len()`` is counted once)."""
    if isinstance(data, Dataset):
        return math.ceil(len(data.x_train) / batch_size)
    try:
        return len(data.train)  # type: ignore[arg-type]
    except TypeError:
        return sum(1 for _ in data.train)


def _device_batches(loader: Iterable[Any], device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's ``(x, y)`` batches on ``device`` (non-blocking copies: pinned memory overlaps them)."""
    for batch in loader:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(f"dataset: a loader yielded a {type(batch).__name__}; it must yield (x, y) pairs")
        x, y = batch
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


@torch.no_grad()
def _evaluate(model: nn.Module, data: Dataset | Loaders, split: str, device: torch.device) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on the ``val`` or ``test`` split (NaN, NaN when loaders have no test)."""
    if isinstance(data, Dataset):
        return evaluate(model, getattr(data, f"x_{split}"), getattr(data, f"y_{split}"))
    loader = getattr(data, split)
    if loader is None:
        return math.nan, math.nan
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    n = 0
    for x, y in _device_batches(loader, device):
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
        n += len(y)
    model.train(was_training)
    return float(loss_sum) / max(n, 1), float(correct) / max(n, 1)


def _user_or_builtin(name: str, value: Any, builtins: tuple[str, ...], args_name: str, args: Any) -> None:
    """A built-in name (no arguments) or a well-formed import path with a table of keyword arguments (nothing imported)."""
    if not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ValueError(f"{args_name}: must be a table of keyword arguments, got {args!r}")
    if isinstance(value, str) and ":" in value:
        check_import_path(name, value)
        return
    _choice(name, value, builtins, " or an import path 'module:callable'")
    if args:
        raise ValueError(f"{args_name}: only an import-path {name} takes arguments; built-in {value!r} takes none")


def _choice(name: str, value: Any, allowed: tuple[str, ...], more: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"{name}: unknown value {value!r}; allowed: {', '.join(allowed)}{more}")


def _number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allowed: str,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        raise ValueError(f"{name}: must be {allowed}, got {value!r}")


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: must be a positive integer, got {value!r}")
