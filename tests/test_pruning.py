"""Intra-training pruning policies and the penalised-parameter selection."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from motune.models import build_model, penalised_parameters
from motune.pruning import IntraTrainingPruning, count_nonzero, prune_below_threshold_


def test_prune_below_threshold_zeroes_exactly_the_small_entries() -> None:
    w = torch.tensor([0.0, 1e-3, -1e-3, 1.0001e-3, -0.5, 2e-4])
    prune_below_threshold_([w], 1e-3)
    assert w.tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0001e-3, -0.5, 0.0])
    assert count_nonzero([w]) == [2]


def test_lenet5_dense_weight_count_matches_paper() -> None:
    model = build_model("lenet5", (1, 28, 28), 10)
    dense = penalised_parameters(model, "dense")
    assert sum(w.numel() for w in dense.values()) == 58_920
    everything = penalised_parameters(model, "all")
    assert len(everything) == 5 and set(dense) < set(everything)
    assert not any(name.endswith("bias") for name in everything)


def test_vgg_penalises_only_its_dense_layer_by_default() -> None:
    model = build_model("vgg", (3, 32, 32), 10)
    dense = penalised_parameters(model, "dense")
    assert list(dense) == ["classifier.weight"] and dense["classifier.weight"].shape == (10, 2048)


def _train_steps(policy: str, steps: int = 30, lr: float = 0.5):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    penalised = [model[0].weight, model[2].weight]
    unpenalised = [model[0].bias, model[2].bias]
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    itp = IntraTrainingPruning(penalised, threshold=0.05, policy=policy)
    itp.before_training()
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    snapshots = []
    for _ in range(steps):
        before = [w.detach().clone() for w in penalised]
        bias_before = [b.detach().clone() for b in unpenalised]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        bias_grads = [b.grad.clone() for b in unpenalised]
        itp.before_step()
        opt.step()
        itp.after_step(opt)
        snapshots.append((before, [w.detach().clone() for w in penalised], bias_before, bias_grads))
        # invariant after every step: nothing penalised lies in (0, threshold]
        for w in penalised:
            mag = w.detach().abs()
            assert not ((mag > 0) & (mag <= 0.05)).any()
    return model, penalised, unpenalised, snapshots


def test_permanent_never_revives_a_pruned_weight() -> None:
    _, _, _, snapshots = _train_steps("permanent")
    pruned_so_far = None
    for before, after, _, _ in snapshots:
        zero_before = [b == 0 for b in before]
        pruned_so_far = zero_before if pruned_so_far is None else [p | z for p, z in zip(pruned_so_far, zero_before)]
        for pruned, w in zip(pruned_so_far, after):
            assert (w[pruned] == 0).all()
    assert sum(int(p.sum()) for p in pruned_so_far) > 0  # the test did prune something


def test_soft_policy_lets_weights_grow_back() -> None:
    _, _, _, snapshots = _train_steps("soft", steps=60, lr=1.0)
    revived = sum(int(((b == 0) & (a != 0)).sum()) for before, after, _, _ in snapshots for b, a in zip(before, after))
    assert revived > 0


@pytest.mark.parametrize("policy", ["soft", "permanent"])
def test_unpenalised_parameters_follow_plain_sgd(policy: str) -> None:
    # Biases get the ordinary SGD-momentum update: pruning never touches them.
    _, _, unpenalised, snapshots = _train_steps(policy)
    # replay SGD with momentum on the recorded bias gradients and compare
    replay = [snapshots[0][2][i].clone() for i in range(len(unpenalised))]
    buf: list[torch.Tensor | None] = [None, None]
    for _, _, _, bias_grads in snapshots:
        for i, g in enumerate(bias_grads):
            buf[i] = g.clone() if buf[i] is None else 0.9 * buf[i] + g
            replay[i] = replay[i] - 0.5 * buf[i]
    for b, r in zip(unpenalised, replay):
        torch.testing.assert_close(b.detach(), r)


def test_permanent_zeroes_optimizer_state_of_pruned_entries() -> None:
    w = nn.Parameter(torch.tensor([0.5, 0.02, -0.3]))
    opt = torch.optim.Adam([w], lr=0.1)
    itp = IntraTrainingPruning([w], threshold=0.05, policy="permanent")
    itp.before_training()
    for _ in range(5):
        opt.zero_grad()
        (w * torch.tensor([1.0, -5.0, 1.0])).sum().backward()  # pushes w[1] up hard
        itp.before_step()
        opt.step()
        itp.after_step(opt)
    assert w[1] == 0
    assert opt.state[w]["exp_avg"][1] == 0 and opt.state[w]["exp_avg_sq"][1] == 0


@pytest.mark.parametrize("policy,threshold", [("bogus", 1e-3), ("soft", -1.0), ("soft", float("nan"))])
def test_bad_pruning_arguments(policy: str, threshold: float) -> None:
    with pytest.raises(ValueError, match="prune_"):
        IntraTrainingPruning([torch.zeros(2)], threshold=threshold, policy=policy)
