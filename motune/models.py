"""The networks motune trains, and which of their parameters the l1 objective penalises.

Four models ship:

- ``lenet5``: the paper's LeNet-5 variant (conv 6@3x3 -> avgpool 2 -> conv 16@3x3 ->
  avgpool 2 -> dense 120 -> 84 -> 10, ReLU). On 28x28 input its dense layers hold
  exactly 58,920 weights.
- ``vgg``: the paper's VGG-like CIFAR-10 network (three blocks of two 3x3 convs with
  batch norm, ELU, max-pool and dropout, then one dense layer).
- ``digits_cnn`` and ``mlp``: small networks sized for scikit-learn's 8x8 digits, so
  tests and a first study take seconds.

Any other network is named by an import path ``"module:callable"`` (see
:mod:`motune.imports`): the callable gets ``input_shape`` and ``num_classes`` when it
takes them, plus its own ``model_args``.

Which parameters are *penalised* (enter ``f2`` and are pruned) is explicit:
``"dense"`` (the paper's choice: weight matrices of ``nn.Linear`` layers), ``"all"``
(conv kernels too), or a list of glob patterns over parameter names
(``["body.*.weight", "head.weight"]``). Biases (and, for ``"dense"``/``"all"``,
batch-norm parameters) are never penalised.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from motune.imports import ImportPathError, call, is_import_path, resolve

MODELS: tuple[str, ...] = ("lenet5", "vgg", "digits_cnn", "mlp")
PENALISE: tuple[str, ...] = ("dense", "all")


def _flat_features(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Number of features ``features`` produces for one input of ``input_shape``."""
    with torch.no_grad():
        return int(features(torch.zeros(1, *input_shape)).numel())


class LeNet5(nn.Module):
    """LeNet-5 as in Reiners et al.: two 3x3 convs with average pooling, dense 120-84-classes."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 6, kernel_size=3),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, kernel_size=3),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_features(self.features, input_shape), 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _vgg_block(c_in: int, c_out: int, dropout: float) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.ELU(),
        nn.BatchNorm2d(c_out),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.ELU(),
        nn.BatchNorm2d(c_out),
        nn.MaxPool2d(2),
        nn.Dropout(dropout),
    ]


class VGGLike(nn.Module):
    """The paper's VGG-like CIFAR-10 network: 32-32 / 64-64 / 128-128 conv blocks, one dense layer."""

    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_vgg_block(input_shape[0], 32, 0.2),
            *_vgg_block(32, 64, 0.3),
            *_vgg_block(64, 128, 0.4),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(_flat_features(self.features, input_shape), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: conv 8@3x3 (same) -> avgpool 2 -> dense 64 -> classes."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 8, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(_flat_features(self.features, input_shape), 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """A two-hidden-layer perceptron on flattened input (64-64 hidden units)."""

    def __init__(self, input_shape: tuple[int, int, int] = (1, 8, 8), num_classes: int = 10) -> None:
        super().__init__()
        n_in = input_shape[0] * input_shape[1] * input_shape[2]
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_in, 64),
            nn.ReLU(),
            nn.Linear(64, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "vgg": VGGLike,
    "digits_cnn": DigitsCNN,
    "mlp": MLP,
}


def build_model(
    name: str,
    input_shape: Sequence[int],
    num_classes: int,
    model_args: Mapping[str, Any] | None = None,
    *,
    factory: Callable[..., nn.Module] | None = None,
) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` and ``num_classes`` outputs.

    ``name`` is a built-in (:data:`MODELS`; input shape (C, H, W)) or an import path
    ``"module:callable"`` whose callable (or ``factory``, when given: then nothing is
    imported) is called with ``model_args`` plus ``input_shape`` and ``num_classes``
    where it takes them, and must return an ``nn.Module``. Raises ``ValueError`` (an
    :class:`~motune.imports.ImportPathError` for user code) starting with the setting
    at fault (``model`` or ``model_args``).

    >>> build_model("mlp", (1, 8, 8), 10).classifier[-1].out_features
    10
    >>> build_model("torch.nn:Linear", (13,), 3, {"in_features": 13, "out_features": 3})
    Linear(in_features=13, out_features=3, bias=True)
    """
    model_args = dict(model_args or {})
    if factory is None and not is_import_path(name):
        if name not in _BUILDERS:
            raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODELS)}, or an import path 'module:callable'")
        if model_args:
            raise ValueError(f"model_args: built-in model {name!r} takes no arguments; remove model_args")
        return _BUILDERS[name](tuple(input_shape), num_classes)
    fn = factory if factory is not None else resolve("model", name)
    model = call("model", fn, model_args, args_field="model_args", name=name,
                 optional={"input_shape": tuple(int(d) for d in input_shape), "num_classes": int(num_classes)})
    if not isinstance(model, nn.Module):
        raise ImportPathError("model", f"{name} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _is_bias(name: str) -> bool:
    return name.rsplit(".", 1)[-1] == "bias"


def check_penalise(value: object) -> None:
    """Raise ``ValueError`` unless ``value`` is ``"dense"``, ``"all"`` or a non-empty list of glob patterns."""
    if isinstance(value, str):
        if value not in PENALISE:
            raise ValueError(f"penalise: unknown value {value!r}; allowed: {', '.join(PENALISE)}, or a list of glob "
                             "patterns over parameter names")
        return
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(p, str) and p.strip() for p in value):
        raise ValueError(f"penalise: must be 'dense', 'all' or a non-empty list of glob patterns, got {value!r}")


def penalised_parameters(model: nn.Module, penalise: str | Sequence[str] = "dense") -> dict[str, nn.Parameter]:
    """The weights that enter the l1 objective and are pruned, by qualified name.

    ``"dense"``: weight matrices of ``nn.Linear`` layers (the paper's choice).
    ``"all"``: also convolution kernels. Biases and normalisation parameters never.
    A list of glob patterns (:mod:`fnmatch`, ``*`` also matches dots): every trainable
    parameter whose name matches one of them, biases excepted. A pattern that matches no
    parameter, or only biases, is a ``ValueError`` naming it (a typo would otherwise
    silently train an unpenalised network).

    >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> list(penalised_parameters(net, ["*.weight"]))
    ['0.weight', '2.weight']
    >>> penalised_parameters(net, ["2.*"]) == {"2.weight": net[2].weight}
    True
    """
    check_penalise(penalise)
    if isinstance(penalise, str):
        kinds: tuple[type[nn.Module], ...] = (nn.Linear,) if penalise == "dense" else (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
        return {
            f"{module_name}.weight" if module_name else "weight": module.weight
            for module_name, module in model.named_modules()
            if isinstance(module, kinds)
        }
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    chosen: dict[str, nn.Parameter] = {}
    for pattern in penalise:
        hits = [(name, p) for name, p in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            sample = ", ".join(name for name, _ in named[:8]) + (", ..." if len(named) > 8 else "")
            raise ValueError(f"penalise: pattern {pattern!r} matches no parameter; the parameters are: {sample or 'none'}")
        weights = [(name, p) for name, p in hits if not _is_bias(name)]
        if not weights:
            raise ValueError(f"penalise: pattern {pattern!r} matches only biases ({', '.join(n for n, _ in hits)}), "
                             "which are never penalised")
        chosen.update(weights)
    return {name: p for name, p in named if name in chosen}  # in the model's order, whatever the patterns' order
