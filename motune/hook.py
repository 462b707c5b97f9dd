"""Sparse biobjective training inside any training loop: one object around ``optimizer.step()``.

:class:`SparseTraining` is what :func:`motune.train` itself runs every step, packaged for
a loop you own (plain PyTorch, Lightning's ``on_before_optimizer_step``, a Hugging Face
``Trainer`` callback): after ``loss.backward()`` it replaces the cross-entropy gradient
``g1`` by the combination with the l1 subgradient ``g2 = sign(w)`` of the penalised
weights (a fixed weighted sum, or the min-norm multi-gradient rule, :mod:`motune.combine`)
and after the step it prunes (intra-training pruning, :mod:`motune.pruning`). It decides
nothing else: the loss, the optimiser, the data order and the schedule stay yours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from motune.combine import MultiGradient, Scalar, WeightedSum
from motune.models import penalised_parameters
from motune.objectives import l1_norm, nonzeros_per_layer
from motune.optim import PerObjectiveOptimizer
from motune.pruning import IntraTrainingPruning

__all__ = ["SparseTraining"]

HOOK_METHODS: tuple[str, ...] = ("weighted_sum", "multi_gradient")


class SparseTraining:
    """Combine the two objectives' gradients and prune, around any optimiser's step.

    ``penalised``: ``"dense"``, ``"all"``, a list of glob patterns over parameter names
    (as ``TrainConfig.penalise``) or a ``{name: parameter}`` mapping. ``method``:
    ``"weighted_sum"`` steps along ``(1 - l1_weight) g1 + l1_weight sign(w)``;
    ``"multi_gradient"`` picks the weight every step by the min-norm rule (SMGD with SGD)
    and ignores ``l1_weight``. ``prune_threshold`` / ``prune_policy`` are intra-training
    pruning's (``"soft"``, ``"permanent"``, ``"none"``). The initial weights are pruned
    once, here. ``host_alpha`` is :class:`~motune.combine.MultiGradient`'s.

    Every step: ``loss.backward()``, then :meth:`step` (or :meth:`before_step`,
    ``optimizer.step()``, :meth:`after_step`). :meth:`zero_grad` in place of
    ``optimizer.zero_grad()`` saves the multi-gradient method a copy per step. A
    :class:`~motune.optim.PerObjectiveOptimizer` (``optimizer_form="per_objective"``)
    must go through :meth:`step`, which hands it alpha and ``g2``.

    A plain loop that gives exactly what :func:`motune.train` gives (its seeding protocol:
    seed, build, then one CPU generator for the batch order):

    .. testcode::

        import torch
        import torch.nn.functional as F
        import motune

        data = motune.load_dataset("digits", limit=200)
        config = motune.TrainConfig(l1_weight=0.01, l1_ramp=0.0, epochs=2, optimizer="sgd", lr=0.05, seed=3, limit=200)

        torch.manual_seed(3)
        model = motune.build_model("digits_cnn", data.input_shape, data.num_classes)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        hook = motune.SparseTraining(model, penalised="dense", l1_weight=0.01, prune_threshold=1e-3)
        order_of = torch.Generator().manual_seed(3)
        for epoch in range(2):
            order = torch.randperm(len(data.x_train), generator=order_of)
            for start in range(0, len(order), 64):
                idx = order[start : start + 64]
                loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
                optimizer.zero_grad()
                loss.backward()
                hook.step(optimizer)          # combine, step, prune

        result = motune.train(config, data=data)
        assert all(torch.equal(result.state_dict[k], v) for k, v in model.state_dict().items())
        assert hook.l1() == result.l1 and hook.nonzeros() == result.nonzeros
    """

    def __init__(
        self,
        model: nn.Module,
        penalised: str | Sequence[str] | Mapping[str, nn.Parameter] = "dense",
        *,
        l1_weight: float = 0.0,
        method: str = "weighted_sum",
        prune_threshold: float = 1e-3,
        prune_policy: str = "soft",
        host_alpha: bool | None = None,
    ) -> None:
        if method not in HOOK_METHODS:
            raise ValueError(f"method: unknown value {method!r}; allowed: {', '.join(HOOK_METHODS)}")
        self.model = model
        self.method = method
        self.penalised: dict[str, nn.Parameter] = (
            dict(penalised) if isinstance(penalised, Mapping) else penalised_parameters(model, penalised)
        )
        weights = list(self.penalised.values())
        params = list(model.parameters())
        if method == "weighted_sum":
            self.combiner: WeightedSum | MultiGradient = WeightedSum(params, weights, l1_weight)
        else:
            self.combiner = MultiGradient(params, weights, host_alpha=host_alpha)
        self.pruning = IntraTrainingPruning(weights, prune_threshold, prune_policy)
        # zero_grad's check "does the combiner own all of this optimiser's parameters?",
        # made once per optimiser rather than per step: (optimizer, answer).
        self._flat_zero: tuple[torch.optim.Optimizer, bool] | None = None
        self.pruning.before_training()

    @property
    def l1_weight(self) -> float | None:
        """The weighted sum's current l1 weight (settable, e.g. for a warm-up); None for the multi-gradient method."""
        return self.combiner.l1_weight if isinstance(self.combiner, WeightedSum) else None

    @l1_weight.setter
    def l1_weight(self, value: float) -> None:
        if not isinstance(self.combiner, WeightedSum):
            raise ValueError("l1_weight: the multi-gradient method has no l1 weight")
        self.combiner.l1_weight = float(value)

    @property
    def signs(self) -> list[torch.Tensor]:
        """``g2 = sign(w)`` of the penalised weights as of the last :meth:`before_step`."""
        return self.combiner.signs

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        """Before ``backward()``: ``optimizer.zero_grad()``, made cheaper for the multi-gradient method.

        The multi-gradient combiner keeps every ``.grad`` a view of one flat buffer and
        zeroes it in one kernel, so backward writes ``g1`` where the combination needs
        it (no copy per step; the same numbers). Falls back to ``optimizer.zero_grad()``
        otherwise, and when the optimiser holds parameters the model does not (checked once
        per optimiser: add parameter groups before the first step).
        """
        combiner = self.combiner
        if isinstance(combiner, MultiGradient):
            if self._flat_zero is None or self._flat_zero[0] is not optimizer:
                owned = all(id(p) in combiner.param_ids for group in optimizer.param_groups for p in group["params"])
                self._flat_zero = (optimizer, owned)
            if self._flat_zero[1] and combiner.zero_grad_():
                return
        optimizer.zero_grad()

    def before_step(self, optimizer: torch.optim.Optimizer | None = None) -> Scalar | None:
        """After ``backward()``: decide this step's alpha (the weight of ``g1``) and prepare ``.grad``.

        For a stock optimiser ``.grad`` becomes ``alpha g1 + (1 - alpha) g2``; for a
        :class:`~motune.optim.PerObjectiveOptimizer` (pass it) ``.grad`` stays ``g1`` and
        alpha and ``g2`` are kept for its step. Returns alpha (None for a weighted sum in
        the combined form: it never changes).
        """
        if isinstance(optimizer, PerObjectiveOptimizer):
            alpha: Scalar | None = self.combiner.alpha_()
        else:
            alpha = self.combiner.combine_()
        self.pruning.before_step()
        return alpha

    def after_step(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """After ``optimizer.step()``: prune (and, for the permanent policy, clear pruned optimiser state)."""
        self.pruning.after_step(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> Scalar | None:
        """:meth:`before_step`, ``optimizer.step()`` and :meth:`after_step` in one call; returns alpha."""
        alpha = self.before_step(optimizer)
        if isinstance(optimizer, PerObjectiveOptimizer):
            optimizer.step(alpha, self.combiner.signs)
        else:
            optimizer.step()
        self.after_step(optimizer)
        return alpha

    def l1(self) -> float:
        """``f2``: the l1 norm of the penalised weights now."""
        return l1_norm(self.penalised)

    def nonzeros(self) -> int:
        """Nonzero penalised weights now."""
        return sum(nonzeros_per_layer(self.penalised).values())
