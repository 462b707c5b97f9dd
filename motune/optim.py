"""Per-objective optimisers: Adam and RMSprop with separate moments for each objective.

The authors' own optimisers (``MAdam`` / ``MRMSprop`` in the Keras code of Reiners, Klamroth
& Stiglmayr, ``MultiobjectiveOptimizers.py``)
keep *separate* moment estimates for the cross-entropy gradient ``g1`` and the l1
subgradient ``g2 = sign(w)``, and step along a weighted sum of the two *normalised*
directions::

    Adam:     w <- w - lr_t * (c1 * m1 / (sqrt(v1) + eps) + c2 * m2 / (sqrt(v2) + eps))
    RMSprop:  w <- w - lr   * (c1 * g1 / (sqrt(v1) + eps) + c2 * g2 / (sqrt(v2) + eps))

with ``(c1, c2) = (alpha, 1 - alpha)``: ``alpha = 1 - l1_weight`` for a weighted sum,
the min-norm ``alpha`` of every batch for the multi-gradient method. Since ``g2`` is
constant (+-1) for a surviving weight, ``m2 / sqrt(v2)`` is about +-1: the l1 term is a
steady shrink of about ``lr * l1_weight`` per step, independent of the scale of ``g1``.
One stock Adam over the combined gradient ``(1 - l1_weight) g1 + l1_weight g2`` (the
``"combined"`` form, :mod:`motune.combine`) instead moves every weight whose ``|g1|`` is
below about ``l1_weight`` toward zero at the full step size. With SGD the two forms are
the same update, so there is no per-objective SGD.

One mechanism: a :class:`~motune.combine.GradientCombiner` decides ``alpha`` each step
(:meth:`~motune.combine.GradientCombiner.alpha_`, which also leaves ``g2`` in its sign
buffers); the optimiser decides how it consumes ``g1`` (in ``.grad``), ``g2`` and
``alpha``: ``optimizer.step(alpha, g2)``.

An objective whose coefficient is exactly 0 sits the step out: its moments are neither
used nor updated, and its step count (bias correction) does not advance. So ``alpha = 1``
is the stock ``torch.optim`` optimiser (tested to match it), the masked fine-tune costs
no extra passes, and an l1 term ramped in from 0 starts its moments at its first
nonzero step. (The Keras code updates both moments every step; the two differ only on a
step where the min-norm ``alpha`` is clipped to exactly 0 or 1.)

Written here rather than taken from ``torch.optim``: the stock classes take one gradient
per parameter, and their functional forms (``torch.optim.adam.adam``, ...) change
signature across the torch versions motune supports (RMSprop gained ``state_steps``).
Each update below mirrors torch's multi-tensor implementation (``torch._foreach_*``, one
kernel launch per op over every tensor of a group, no per-element Python, no second
backward pass). Cost: objective 2 repeats Adam's moment and update passes over the
penalised weights, roughly doubling the optimiser's share of a step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch

OPTIMIZER_FORMS: tuple[str, ...] = ("combined", "per_objective")


class PerObjectiveOptimizer(torch.optim.Optimizer):
    """Base class: two objectives, ``g1`` from ``.grad`` for every parameter, ``g2`` for ``penalised``.

    Subclasses implement :meth:`_update` for one parameter group. ``penalised`` must be
    a subset of the parameters (the same tensor objects); every other parameter has
    ``g2 = 0`` and gets objective 1's step only.
    """

    def __init__(self, params: Iterable[Any], penalised: Sequence[torch.Tensor], defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self.penalised = list(penalised)
        known = {id(p) for group in self.param_groups for p in group["params"]}
        if any(id(w) not in known for w in self.penalised):
            raise ValueError("penalised: every penalised tensor must be one of the optimiser's parameters")

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        alpha: float | torch.Tensor = 1.0,
        g2: Sequence[torch.Tensor] | None = None,
        closure: Callable[[], float] | None = None,
    ) -> float | None:
        """One step with ``c1 = alpha`` on ``g1 = .grad`` and ``c2 = 1 - alpha`` on ``g2``.

        ``g2`` is aligned with ``penalised`` (default: ``sign(w)``, computed here). A
        tensor ``alpha`` is read on the host (one device sync per step on a GPU).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        c1 = float(alpha)
        c2 = 1.0 - c1
        if not 0.0 <= c1 <= 1.0:
            raise ValueError(f"alpha: must be in [0, 1], got {c1!r}")
        g2_of: dict[int, torch.Tensor] = {}
        if c2 != 0.0:
            signs = [torch.sign(w) for w in self.penalised] if g2 is None else list(g2)
            if len(signs) != len(self.penalised):
                raise ValueError(f"g2: {len(signs)} tensors for {len(self.penalised)} penalised weights")
            g2_of = {id(w): s for w, s in zip(self.penalised, signs)}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            for p in params:
                if not self.state[p]:
                    self._init_state(group, p)
            pen = [p for p in params if id(p) in g2_of]
            self._update(group, params, [p.grad for p in params], c1, pen, [g2_of[id(p)] for p in pen], c2)
        return loss

    def _init_state(self, group: dict[str, Any], p: torch.Tensor) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def _update(
        self,
        group: dict[str, Any],
        params: list[torch.Tensor],
        g1: list[torch.Tensor],
        c1: float,
        pen: list[torch.Tensor],
        g2: list[torch.Tensor],
        c2: float,
    ) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class PerObjectiveAdam(PerObjectiveOptimizer):
    """Adam with separate ``(m, v)`` per objective (the authors' ``MAdam``); L2 ``weight_decay`` on ``g1``.

    Per objective ``k`` (bias correction as in ``torch.optim.Adam``, with objective
    ``k``'s own step count ``t_k``)::

        m_k <- b1 m_k + (1 - b1) g_k,   v_k <- b2 v_k + (1 - b2) g_k^2
        w   <- w - lr c_k / (1 - b1^t_k) * m_k / (sqrt(v_k) / sqrt(1 - b2^t_k) + eps)

    With ``alpha = 1`` this is ``torch.optim.Adam(params, lr, betas, eps, weight_decay)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        penalised: Sequence[torch.Tensor],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr > 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"invalid Adam settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        super().__init__(params, penalised, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _init_state(self, group: dict[str, Any], p: torch.Tensor) -> None:
        state = self.state[p]
        for k in (1, 2):
            state[f"step{k}"] = 0
            state[f"exp_avg{k}"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state[f"exp_avg_sq{k}"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, params, g1, c1, pen, g2, c2) -> None:  # type: ignore[no-untyped-def]
        if c1 != 0.0 and params:
            if group["weight_decay"]:
                g1 = torch._foreach_add(g1, params, alpha=group["weight_decay"])  # new tensors, as torch.optim.Adam
            self._adam(group, params, g1, c1, 1)
        if c2 != 0.0 and pen:
            self._adam(group, pen, g2, c2, 2)

    def _adam(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor], c: float, k: int) -> None:
        """Objective ``k``'s moments and its share ``c`` of the step (torch's multi-tensor Adam)."""
        beta1, beta2 = group["betas"]
        states = [self.state[p] for p in params]
        m = [s[f"exp_avg{k}"] for s in states]
        v = [s[f"exp_avg_sq{k}"] for s in states]
        for s in states:
            s[f"step{k}"] += 1
        steps = [s[f"step{k}"] for s in states]
        torch._foreach_lerp_(m, grads, 1 - beta1)
        torch._foreach_mul_(v, beta2)
        torch._foreach_addcmul_(v, grads, grads, 1 - beta2)
        step_size = [(group["lr"] * c / (1 - beta1**t)) * -1 for t in steps]
        bias_correction2_sqrt = [(1 - beta2**t) ** 0.5 for t in steps]
        denom = torch._foreach_sqrt(v)  # new tensors: one temporary per parameter, as in torch.optim.Adam
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        torch._foreach_addcdiv_(params, m, denom, step_size)


class PerObjectiveRMSprop(PerObjectiveOptimizer):
    """RMSprop with a separate square average per objective (the authors' ``MRMSprop``).

    ``v_k <- a v_k + (1 - a) g_k^2``; the direction ``d = c1 g1 / (sqrt(v1) + eps) + c2 g2 /
    (sqrt(v2) + eps)`` is taken as ``w <- w - lr d`` or, with ``momentum``, through one
    momentum buffer ``b <- momentum b + d``, ``w <- w - lr b`` (the Keras code has no
    momentum; a buffer of the combined direction is what ``torch.optim.RMSprop`` does with
    one objective). With ``alpha = 1`` this is ``torch.optim.RMSprop(params, lr, alpha=a,
    eps, weight_decay, momentum)``.
    """

    def __init__(
        self,
        params: Iterable[Any],
        penalised: Sequence[torch.Tensor],
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        momentum: float = 0.0,
    ) -> None:
        if not lr > 0 or not 0 <= alpha < 1 or not eps >= 0 or not weight_decay >= 0 or not 0 <= momentum < 1:
            raise ValueError(f"invalid RMSprop settings: lr={lr}, alpha={alpha}, eps={eps}, "
                             f"weight_decay={weight_decay}, momentum={momentum}")
        defaults = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay, "momentum": momentum}
        super().__init__(params, penalised, defaults)

    def _init_state(self, group: dict[str, Any], p: torch.Tensor) -> None:
        state = self.state[p]
        for k in (1, 2):
            state[f"step{k}"] = 0
            state[f"square_avg{k}"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if group["momentum"] > 0:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, params, g1, c1, pen, g2, c2) -> None:  # type: ignore[no-untyped-def]
        lr, momentum = group["lr"], group["momentum"]
        if group["weight_decay"] and c1 != 0.0 and params:
            g1 = torch._foreach_add(g1, params, alpha=group["weight_decay"])
        terms = [(params, g1, c1, 1), (pen, g2, c2, 2)]
        terms = [(ps, gs, c, k) for ps, gs, c, k in terms if c != 0.0 and ps]
        if momentum > 0:
            buffers = [self.state[p]["momentum_buffer"] for p in params]
            torch._foreach_mul_(buffers, momentum)
        for ps, gs, c, k in terms:
            avg = self._square_avg(group, ps, gs, k)
            if momentum > 0:
                torch._foreach_addcdiv_([self.state[p]["momentum_buffer"] for p in ps], gs, avg, c)
            else:
                torch._foreach_addcdiv_(ps, gs, avg, -lr * c)
        if momentum > 0:
            torch._foreach_add_(params, buffers, alpha=-lr)

    def _square_avg(
        self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor], k: int
    ) -> list[torch.Tensor]:
        """Update objective ``k``'s square averages; return ``sqrt(v_k) + eps`` (new tensors)."""
        a = group["alpha"]
        v = [self.state[p][f"square_avg{k}"] for p in params]
        for p in params:
            self.state[p][f"step{k}"] += 1
        torch._foreach_mul_(v, a)
        torch._foreach_addcmul_(v, grads, grads, value=1 - a)
        avg = torch._foreach_sqrt(v)
        torch._foreach_add_(avg, group["eps"])
        return avg
