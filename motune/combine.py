"""Gradient combiners: one mechanism for weighted sums and the multi-gradient method.

After ``loss.backward()`` every parameter's ``.grad`` holds ``g1``, the minibatch
cross-entropy gradient. The l1 objective needs no autograd: its subgradient is
``g2 = sign(w)`` on penalised weights and 0 elsewhere. A combiner overwrites ``.grad``
with ``d = alpha * g1 + (1 - alpha) * g2`` and any ``torch.optim`` optimiser takes the step
(or a :mod:`motune.optim` optimiser consumes ``g1``, ``g2`` and ``alpha`` separately):

- :class:`WeightedSum`: ``alpha = 1 - l1_weight``, fixed for the whole run (or, with a
  warm-up, ``l1_weight`` scaled by :func:`cubic_ramp` over the first steps);
- :class:`MultiGradient`: ``alpha`` minimises ``||alpha g1 + (1 - alpha) g2||^2`` over
  [0, 1] (Liu & Vicente's stochastic multi-gradient), recomputed every step. With SGD +
  momentum this is SMGD, with Adam multi-Adam, with RMSprop multi-RMSprop.

Dot products and norms run over all parameters at once (``torch._foreach_*`` kernels for
the weighted sum, flat gradient buffers for the multi-gradient combiner).
On the CPU ``alpha`` is computed in Python floats (reading three numbers back is free
there and saves a dozen tiny kernels); on a GPU it stays a device tensor, so the hot path
has no host sync (``MultiGradient(host_alpha=...)`` overrides either choice).

The combiner *decides* alpha (:meth:`GradientCombiner.alpha_`); how ``g1``, ``g2`` and
alpha are consumed is the optimiser's business. :meth:`GradientCombiner.combine_` is the
``"combined"`` form: it writes ``d`` into ``.grad`` for a stock ``torch.optim``
optimiser. The ``"per_objective"`` form hands alpha and ``g2`` to an optimiser that keeps
separate moments per objective (:mod:`motune.optim`, the authors' MAdam / MRMSprop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Scalar = float | torch.Tensor


def min_norm_alpha(g1_sq: Scalar, g1_dot_g2: Scalar, g2_sq: Scalar) -> Scalar:
    """Minimiser over [0, 1] of ``||a g1 + (1 - a) g2||^2`` from the three inner products.

    ``a* = clip(((g2 - g1) . g2) / ||g1 - g2||^2, 0, 1)``, and ``a* = 1`` when ``g1 = g2``.
    Takes Python floats (host arithmetic) or 0-d tensors (stays on the device, no sync).
    """
    denominator = g1_sq - 2.0 * g1_dot_g2 + g2_sq
    numerator = g2_sq - g1_dot_g2
    if not isinstance(denominator, torch.Tensor):
        return min(max(numerator / denominator, 0.0), 1.0) if denominator > 0 else 1.0
    safe = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return torch.where(denominator > 0, (numerator / safe).clamp(0.0, 1.0), torch.ones_like(denominator))


def cubic_ramp(step: int, ramp_steps: int) -> float:
    """Share of the final l1 weight at optimiser step ``step`` (0-based) of a cubic warm-up.

    ``1 - (1 - step / ramp_steps)^3`` for ``step < ramp_steps``, then 1: Zhu & Gupta's
    gradual-pruning schedule, applied to the penalty instead of the sparsity. The first
    step is pure cross-entropy, the penalty grows fast at first and levels off at its
    value. ``ramp_steps <= 0`` means no ramp (always 1).
    """
    if step >= ramp_steps:
        return 1.0
    return 1.0 - (1.0 - max(step, 0) / ramp_steps) ** 3


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
        # Reused every step: fresh ~200 KB tensors per step cost page faults (mmap'd allocations).
        self._signs = [torch.empty_like(p) for p in self.penalised]

    @torch.no_grad()
    def l1_subgradient(self) -> list[torch.Tensor]:
        """``g2 = sign(w)`` of the penalised weights, written into buffers reused every step."""
        for w, s in zip(self.penalised, self._signs):
            torch.sign(w, out=s)
        return self._signs

    @property
    def signs(self) -> list[torch.Tensor]:
        """``g2`` as left by the last :meth:`alpha_` (aligned with ``penalised``; stale when ``1 - alpha`` was 0)."""
        return self._signs

    def alpha_(self) -> Scalar:  # pragma: no cover - interface
        """Decide this step's alpha (the weight of ``g1``; ``g2`` gets ``1 - alpha``) from the
        current ``.grad``, leaving ``.grad`` untouched and ``g2`` in :attr:`signs`."""
        raise NotImplementedError

    def combine_(self) -> Scalar | None:  # pragma: no cover - interface
        """Decide alpha and overwrite ``.grad`` with ``alpha g1 + (1 - alpha) g2`` (the combined form)."""
        raise NotImplementedError


class WeightedSum(GradientCombiner):
    """``d = (1 - l1_weight) g1 + l1_weight sign(w)``: the gradient of the weighted sum ``F_l1_weight``."""

    def __init__(self, params: Sequence[torch.Tensor], penalised: Sequence[torch.Tensor], l1_weight: float) -> None:
        if not isinstance(l1_weight, (int, float)) or math.isnan(l1_weight) or not 0.0 <= l1_weight <= 1.0:
            raise ValueError(f"l1_weight: must be a number in [0, 1], got {l1_weight!r}")
        super().__init__(params, penalised)
        self.l1_weight = float(l1_weight)

    @torch.no_grad()
    def alpha_(self) -> float:
        """``1 - l1_weight``; fills :attr:`signs` only when the l1 term takes part (``l1_weight > 0``)."""
        if self.l1_weight > 0.0:
            self.l1_subgradient()
        return 1.0 - self.l1_weight

    @torch.no_grad()
    def combine_(self) -> None:
        lam = self.l1_weight
        if lam == 0.0:  # plain cross-entropy training: leave .grad bit-for-bit untouched
            return None
        grads = [p.grad for p in self.params]
        torch._foreach_mul_(grads, 1.0 - lam)
        pen_grads = [p.grad for p in self.penalised]
        torch._foreach_add_(pen_grads, self.l1_subgradient(), alpha=lam)
        return None


class MultiGradient(GradientCombiner):
    """Min-norm convex combination of ``g1`` and ``g2`` (Liu & Vicente 2019), every step.

    ``host_alpha``: compute alpha in Python floats (one host read per step). ``None``
    (default) does so on the CPU, where the read is free, and keeps alpha a device tensor
    elsewhere (no sync on the GPU hot path).

    Flat buffers: every step copies ``g1`` into one flat vector laid out as [penalised
    weights | everything else], with ``g2 = sign(w)`` in a second one (zero outside the
    penalised prefix). The three inner products are then three ``vdot`` kernels and the
    combination one ``lerp_`` over all parameters, and ``.grad`` of every parameter becomes
    a view of the flat result (no copy back). A step costs about 8 kernels whatever the
    number of tensors, against ~30 small per-tensor ones before (LeNet-5: 10 tensors);
    the price is one copy of ``g1`` and two buffers the size of the parameters. If the
    loop keeps the ``.grad`` views (:meth:`zero_grad_`, or ``zero_grad(set_to_none=False)``),
    backward accumulates into them and the copy is skipped. All parameters must share one dtype
    and device.
    """

    def __init__(self, params: Sequence[torch.Tensor], penalised: Sequence[torch.Tensor], host_alpha: bool | None = None) -> None:
        super().__init__(params, penalised)
        self.host_alpha = host_alpha
        if not self.params:
            raise ValueError("MultiGradient: no trainable parameters")
        ref = self.params[0]
        if any(p.dtype != ref.dtype or p.device != ref.device for p in self.params):
            raise ValueError("MultiGradient: all parameters must share one dtype and device (flat gradient buffers)")
        trainable = {id(p) for p in self.params}
        if any(id(w) not in trainable for w in self.penalised):
            raise ValueError("MultiGradient: every penalised weight must be a trainable parameter")
        self.param_ids = frozenset(id(p) for p in self.params)
        self._order = self.penalised + self.others  # the flat layout: penalised prefix first
        sizes = [p.numel() for p in self._order]
        n_pen = sum(sizes[: len(self.penalised)])
        self._flat_grad = torch.zeros(sum(sizes), dtype=ref.dtype, device=ref.device)
        self._flat_sign = torch.zeros_like(self._flat_grad)
        self._grad_views = [v.view_as(p) for v, p in zip(self._flat_grad.split(sizes), self._order)]
        self._signs = [v.view_as(w) for v, w in zip(self._flat_sign[:n_pen].split(sizes[: len(self.penalised)]), self.penalised)]
        self._pen_grad, self._pen_sign = self._flat_grad[:n_pen], self._flat_sign[:n_pen]
        self._products = torch.zeros(3, dtype=ref.dtype, device=ref.device)

    @torch.no_grad()
    def alpha_(self) -> Scalar:
        """The min-norm alpha of this step's ``g1`` and ``g2``; ``g2`` is left in :attr:`signs`."""
        grads = [p.grad for p in self._order]
        flat, products = self._flat_grad, self._products
        if not all(g is v for g, v in zip(grads, self._grad_views)):
            if any(g is v for g, v in zip(grads, self._grad_views)):  # some views kept: copy the others one by one
                for g, v in zip(grads, self._grad_views):
                    if g is not v:
                        v.copy_(g)
            else:
                torch.cat([g.reshape(-1) for g in grads], out=flat)  # one copy of g1 into the flat buffer
        self.l1_subgradient()  # sign(w) into the penalised prefix of the flat sign buffer
        # ||g1||^2, g1.g2 and ||g2||^2 (= the number of nonzero penalised weights), into one 3-vector.
        torch.vdot(flat, flat, out=products[0])
        torch.vdot(self._pen_grad, self._pen_sign, out=products[1])
        torch.vdot(self._pen_sign, self._pen_sign, out=products[2])
        if self.host_alpha or (self.host_alpha is None and products.device.type == "cpu"):
            return min_norm_alpha(*products.tolist())
        return min_norm_alpha(products[0], products[1], products[2])  # device tensor: no host sync

    @torch.no_grad()
    def zero_grad_(self) -> bool:
        """Before ``backward()``: zero ``g1`` in place, keeping every ``.grad`` a view of the flat buffer.

        One memset; backward then accumulates this step's ``g1`` straight into the flat
        buffer (``0 + g1 = g1``, the same numbers) and :meth:`alpha_` skips its copy. Returns
        False and does nothing when some ``.grad`` is not a view (before the first
        :meth:`combine_`, or after ``zero_grad(set_to_none=True)``): clear them as usual then.
        """
        if not all(p.grad is v for p, v in zip(self._order, self._grad_views)):
            return False
        self._flat_grad.zero_()
        return True

    @torch.no_grad()
    def combine_(self) -> Scalar:
        alpha = self.alpha_()
        # a g + (1 - a) s over every parameter at once (s = 0 outside the penalised prefix)
        self._flat_grad.lerp_(self._flat_sign, 1.0 - alpha)
        for p, v in zip(self._order, self._grad_views):
            if p.grad is not v:
                p.grad = v
        return alpha
