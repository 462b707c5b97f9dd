"""Gradient combiners: one mechanism for weighted sums and the multi-gradient method.

After ``loss.backward()`` every parameter's ``.grad`` holds ``g1``, the minibatch
cross-entropy gradient. The l1 objective needs no autograd: its subgradient is
``g2 = sign(w)`` on penalised weights and 0 elsewhere. A combiner overwrites ``.grad``
with ``d = alpha * g1 + (1 - alpha) * g2`` and any ``torch.optim`` optimiser takes the step
(DESIGN.md §4):

- :class:`WeightedSum`: ``alpha = 1 - l1_weight``, fixed for the whole run;
- :class:`MultiGradient`: ``alpha`` minimises ``||alpha g1 + (1 - alpha) g2||^2`` over
  [0, 1] (Liu & Vicente's stochastic multi-gradient), recomputed every step. With SGD +
  momentum this is SMGD, with Adam multi-Adam, with RMSprop multi-RMSprop.

Dot products and norms run over all parameters at once with ``torch._foreach_*`` kernels;
``alpha`` stays a device tensor, so the hot path has no host sync.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def min_norm_alpha(g1_sq: torch.Tensor, g1_dot_g2: torch.Tensor, g2_sq: torch.Tensor) -> torch.Tensor:
    """Minimiser over [0, 1] of ``||a g1 + (1 - a) g2||^2`` from the three inner products.

    ``a* = clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1)``, and ``a* = 1`` when ``g1 = g2``.
    """
    denominator = g1_sq - 2.0 * g1_dot_g2 + g2_sq
    numerator = g2_sq - g1_dot_g2
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (numerator / safe).clamp(0.0, 1.0), torch.ones_like(denominator))


class GradientCombiner:
    """Base class: overwrite ``.grad`` of ``params`` with the combined direction.

    ``params`` is every trainable parameter, ``penalised`` the subset the l1 term covers
    (the same tensor objects). :meth:`combine_` returns alpha as a 0-d tensor (or None
    when it never changes) so callers can average it without a sync per step.
    """

    def __init__(self, params: Sequence[torch.Tensor], penalised: Sequence[torch.Tensor]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.penalised = list(penalised)
        penalised_ids = {id(p) for p in self.penalised}
        self.others = [p for p in self.params if id(p) not in penalised_ids]

    def combine_(self) -> torch.Tensor | None:  # pragma: no cover - interface
        raise NotImplementedError


class WeightedSum(GradientCombiner):
    """``d = (1 - l1_weight) g1 + l1_weight sign(w)``: the gradient of the weighted sum ``F_l1_weight``."""

    def __init__(self, params: Sequence[torch.Tensor], penalised: Sequence[torch.Tensor], l1_weight: float) -> None:
        if not isinstance(l1_weight, (int, float)) or math.isnan(l1_weight) or not 0.0 <= l1_weight <= 1.0:
            raise ValueError(f"l1_weight: must be a number in [0, 1], got {l1_weight!r}")
        super().__init__(params, penalised)
        self.l1_weight = float(l1_weight)

    @torch.no_grad()
    def combine_(self) -> None:
        lam = self.l1_weight
        if lam == 0.0:  # plain cross-entropy training: leave .grad bit-for-bit untouched
            return None
        grads = [p.grad for p in self.params]
        torch._foreach_mul_(grads, 1.0 - lam)
        pen_grads = [p.grad for p in self.penalised]
        torch._foreach_add_(pen_grads, torch._foreach_sign(self.penalised), alpha=lam)
        return None


class MultiGradient(GradientCombiner):
    """Min-norm convex combination of ``g1`` and ``g2`` (Liu & Vicente 2019), every step."""

    @torch.no_grad()
    def combine_(self) -> torch.Tensor:
        grads = [p.grad for p in self.params]
        pen_grads = [p.grad for p in self.penalised]
        signs = torch._foreach_sign(self.penalised)
        g1_sq = torch.stack(torch._foreach_norm(grads)).square().sum()
        # ||g2||^2 = number of nonzero penalised weights; g1.g2 only runs over penalised ones.
        g2_sq = torch.stack(torch._foreach_norm(signs)).square().sum()
        g1_dot_g2 = torch.stack([torch.vdot(g.reshape(-1), s.reshape(-1)) for g, s in zip(pen_grads, signs)]).sum()
        alpha = min_norm_alpha(g1_sq, g1_dot_g2, g2_sq)
        torch._foreach_mul_(grads, alpha)
        torch._foreach_mul_(signs, 1.0 - alpha)
        torch._foreach_add_(pen_grads, signs)
        return alpha
