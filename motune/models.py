"""The networks motune trains, and which of their parameters the l1 objective penalises.

Four models ship:

- ``lenet5``: the paper's LeNet-5 variant (conv 6@3x3 -> avgpool 2 -> conv 16@3x3 ->
  avgpool 2 -> dense 120 -> 84 -> 10, ReLU). On 28x28 input its dense layers hold
  exactly 58,920 weights.
- ``vgg``: the paper's VGG-like CIFAR-10 network (three blocks of two 3x3 convs with
  batch norm, ELU, max-pool and dropout, then one dense layer).
- ``digits_cnn`` and ``mlp``: small networks sized for scikit-learn's 8x8 digits, so
  tests and a first study take seconds.

Which parameters are *penalised* (enter ``f2`` and are pruned) is explicit:
``"dense"`` (the paper's choice: weight matrices of ``nn.Linear`` layers) or ``"all"``
(conv kernels too). Biases and batch-norm parameters are never penalised.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

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


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """Build model ``name`` for inputs of ``input_shape`` (C, H, W) and ``num_classes`` outputs."""
    if name not in _BUILDERS:
        raise ValueError(f"model: unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return _BUILDERS[name](tuple(input_shape), num_classes)


def penalised_parameters(model: nn.Module, penalise: str = "dense") -> dict[str, nn.Parameter]:
    """The weights that enter the l1 objective and are pruned, by qualified name.

    ``"dense"``: weight matrices of ``nn.Linear`` layers (the paper's choice).
    ``"all"``: also convolution kernels. Biases and normalisation parameters never.
    """
    if penalise not in PENALISE:
        raise ValueError(f"penalise: unknown value {penalise!r}; allowed: {', '.join(PENALISE)}")
    kinds: tuple[type[nn.Module], ...] = (nn.Linear,) if penalise == "dense" else (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return {
        f"{module_name}.weight" if module_name else "weight": module.weight
        for module_name, module in model.named_modules()
        if isinstance(module, kinds)
    }
