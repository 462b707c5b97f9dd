"""The two objectives and the measurements every result carries.

Both objectives are minimised:

``f1``: mean cross-entropy of the network's predictions on held-out data (the
validation split, measured after training).
``f2``: l1 norm of the penalised weights (a property of the weights alone; biases are
never penalised).

Besides the two values, every result carries accuracy and the nonzero penalised
weights per layer and in total; these are the helpers that measure them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from motune.pruning import count_nonzero


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``, in eval mode, in chunks."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for start in range(0, len(x), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum")
        correct += (logits.argmax(dim=1) == target).sum()
    model.train(was_training)
    n = max(len(x), 1)
    return float(loss_sum) / n, float(correct) / n


@torch.no_grad()
def l1_norm(weights: Mapping[str, torch.Tensor]) -> float:
    """``f2``: the sum of absolute values of all penalised weights."""
    if not weights:
        return 0.0
    return float(torch.stack([w.abs().sum() for w in weights.values()]).sum())


def nonzeros_per_layer(weights: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Nonzero entries of each penalised weight tensor, by parameter name."""
    return dict(zip(weights.keys(), count_nonzero(list(weights.values()))))


def penalised_size(weights: Mapping[str, torch.Tensor]) -> int:
    """Total number of penalised weights (nonzero or not)."""
    return sum(w.numel() for w in weights.values())
