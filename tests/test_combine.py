"""The gradient combiners: closed-form min-norm alpha and the weighted-sum direction."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from motune.combine import MultiGradient, WeightedSum, cubic_ramp, min_norm_alpha


def brute_force_alpha(g1: torch.Tensor, g2: torch.Tensor, n: int = 200_001) -> float:
    grid = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    d = grid[:, None] * g1[None, :] + (1 - grid[:, None]) * g2[None, :]
    return float(grid[d.square().sum(dim=1).argmin()])


def closed_form(g1: torch.Tensor, g2: torch.Tensor) -> float:
    return float(min_norm_alpha(g1 @ g1, g1 @ g2, g2 @ g2))


CASES = {
    "interior": (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])),  # alpha = 0.5
    "skewed": (torch.tensor([3.0, -1.0, 0.5]), torch.tensor([-0.2, 1.0, 1.0])),
    "clipped_to_one": (torch.tensor([0.1, 0.1]), torch.tensor([1.0, 1.0])),  # g1 is the min-norm point
    "clipped_to_zero": (torch.tensor([2.0, 2.0]), torch.tensor([0.1, 0.05])),  # g2 is the min-norm point
    "equal": (torch.tensor([0.3, -0.7]), torch.tensor([0.3, -0.7])),
    "opposite": (torch.tensor([1.0, -2.0]), torch.tensor([-1.0, 2.0])),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_min_norm_alpha_matches_brute_force(name: str) -> None:
    g1, g2 = (t.double() for t in CASES[name])
    expected = 1.0 if name == "equal" else brute_force_alpha(g1, g2)
    assert closed_form(g1, g2) == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize("name", sorted(CASES))
def test_min_norm_alpha_float_and_tensor_agree(name: str) -> None:
    g1, g2 = (t.double() for t in CASES[name])
    products = (float(g1 @ g1), float(g1 @ g2), float(g2 @ g2))
    assert min_norm_alpha(*products) == pytest.approx(closed_form(g1, g2), abs=1e-12)


def test_min_norm_alpha_clipping_is_exercised() -> None:
    assert closed_form(*(t.double() for t in CASES["clipped_to_one"])) == 1.0
    assert closed_form(*(t.double() for t in CASES["clipped_to_zero"])) == 0.0


@pytest.mark.parametrize("seed", range(20))
def test_min_norm_alpha_random(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    g1 = torch.randn(7, generator=gen, dtype=torch.float64) * (seed + 1) / 5
    g2 = torch.randn(7, generator=gen, dtype=torch.float64)
    assert closed_form(g1, g2) == pytest.approx(brute_force_alpha(g1, g2), abs=2e-5)


def _net_with_grads(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    net(torch.randn(4, 1, 4, 4)).square().sum().backward()
    penalised = [net[2].weight, net[4].weight]
    g1 = [p.grad.clone() for p in net.parameters()]
    return net, penalised, g1


def test_weighted_sum_direction() -> None:
    net, penalised, g1 = _net_with_grads()
    lam = 0.3
    WeightedSum(list(net.parameters()), penalised, lam).combine_()
    pen_ids = {id(p) for p in penalised}
    for p, g in zip(net.parameters(), g1):
        expected = (1 - lam) * g + (lam * torch.sign(p.detach()) if id(p) in pen_ids else 0)
        torch.testing.assert_close(p.grad, expected)


def test_weighted_sum_zero_leaves_gradient_untouched() -> None:
    net, penalised, g1 = _net_with_grads()
    WeightedSum(list(net.parameters()), penalised, 0.0).combine_()
    for p, g in zip(net.parameters(), g1):
        assert torch.equal(p.grad, g)


def test_multi_gradient_direction_is_min_norm_combination() -> None:
    net, penalised, g1 = _net_with_grads(1)
    pen_ids = {id(p) for p in penalised}
    g2 = [torch.sign(p.detach()) if id(p) in pen_ids else torch.zeros_like(p) for p in net.parameters()]
    flat1 = torch.cat([g.flatten() for g in g1]).double()
    flat2 = torch.cat([g.flatten() for g in g2]).double()
    alpha = float(MultiGradient(list(net.parameters()), penalised).combine_())
    assert alpha == pytest.approx(brute_force_alpha(flat1, flat2), abs=1e-4)
    for p, a, b in zip(net.parameters(), g1, g2):
        torch.testing.assert_close(p.grad, alpha * a + (1 - alpha) * b)


def test_multi_gradient_host_and_device_paths_agree() -> None:
    net_a, pen_a, _ = _net_with_grads(2)
    net_b, pen_b, _ = _net_with_grads(2)
    alpha_host = MultiGradient(list(net_a.parameters()), pen_a, host_alpha=True).combine_()
    alpha_device = MultiGradient(list(net_b.parameters()), pen_b, host_alpha=False).combine_()
    assert isinstance(alpha_host, float) and isinstance(alpha_device, torch.Tensor)
    assert alpha_host == pytest.approx(float(alpha_device), rel=1e-6)
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "0.1"])
def test_weighted_sum_rejects_bad_l1_weight(bad: object) -> None:
    net, penalised, _ = _net_with_grads()
    with pytest.raises(ValueError, match="l1_weight"):
        WeightedSum(list(net.parameters()), penalised, bad)  # type: ignore[arg-type]


def test_cubic_ramp_shape() -> None:
    steps = 100
    values = [cubic_ramp(t, steps) for t in range(steps + 5)]
    assert values[0] == 0.0 and values[steps] == 1.0 and values[-1] == 1.0
    assert values[50] == pytest.approx(1 - 0.5**3)  # GMP's cubic: 7/8 of the way at half time
    assert all(a < b for a, b in itertools.pairwise(values[: steps + 1]))  # strictly rising to the end
    rises = [b - a for a, b in itertools.pairwise(values[: steps + 1])]
    assert all(a >= b for a, b in itertools.pairwise(rises))  # fast first, then levelling off
    assert cubic_ramp(0, 0) == 1.0 and cubic_ramp(3, -1) == 1.0  # no ramp


def test_weighted_sum_alpha_leaves_grad_and_fills_signs() -> None:
    net, penalised, g1 = _net_with_grads()
    combiner = WeightedSum(list(net.parameters()), penalised, 0.25)
    assert combiner.alpha_() == 0.75
    for p, g in zip(net.parameters(), g1):
        assert torch.equal(p.grad, g)
    for w, s in zip(penalised, combiner.signs):
        assert torch.equal(s, torch.sign(w.detach()))


@pytest.mark.parametrize("set_to_none", [True, False])
def test_multi_gradient_over_several_steps_whether_grad_views_are_kept_or_not(set_to_none: bool) -> None:
    """The flat buffers: .grad becomes a view of them; with zero_grad(set_to_none=False) backward
    accumulates into those views (no copy) and every step still combines this step's g1."""
    torch.manual_seed(4)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    params, penalised = list(net.parameters()), [net[2].weight, net[4].weight]
    pen_ids = {id(p) for p in penalised}
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    combiner = MultiGradient(params, penalised)
    for step in range(4):
        opt.zero_grad(set_to_none=set_to_none)
        net(torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(step))).square().sum().backward()
        g1 = [p.grad.detach().clone().double() for p in params]
        g2 = [torch.sign(p.detach()).double() if id(p) in pen_ids else torch.zeros_like(g) for p, g in zip(params, g1)]
        f1, f2 = torch.cat([g.flatten() for g in g1]), torch.cat([g.flatten() for g in g2])
        expected_alpha = min_norm_alpha(float(f1 @ f1), float(f1 @ f2), float(f2 @ f2))
        alpha = combiner.combine_()
        assert alpha == pytest.approx(expected_alpha, rel=1e-5, abs=1e-7)
        for p, a, b in zip(params, g1, g2):
            torch.testing.assert_close(p.grad.double(), alpha * a + (1 - alpha) * b, rtol=1e-5, atol=1e-6)
        opt.step()
    if not set_to_none:  # the views survived: backward wrote straight into the flat buffer
        assert all(p.grad.untyped_storage().data_ptr() == params[0].grad.untyped_storage().data_ptr() for p in params)


def test_multi_gradient_refuses_mixed_dtypes() -> None:
    a, b = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="dtype"):
        MultiGradient([a, b], [a])


def test_multi_gradient_zero_grad_keeps_views_and_gives_the_same_steps() -> None:
    """zero_grad_ (one memset of the flat buffer) steps exactly as optimizer.zero_grad() does."""
    nets, opts, combiners = [], [], []
    for _ in range(2):
        torch.manual_seed(5)
        net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
        params = list(net.parameters())
        nets.append(net)
        opts.append(torch.optim.SGD(params, lr=0.1, momentum=0.9))
        combiners.append(MultiGradient(params, [net[2].weight, net[4].weight]))
    assert combiners[1].zero_grad_() is False  # no views before the first combine_: nothing done
    for step in range(5):
        x = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(step))
        opts[0].zero_grad()
        if not combiners[1].zero_grad_():
            opts[1].zero_grad()
        for net, opt, combiner in zip(nets, opts, combiners):
            net(x).square().sum().backward()
            combiner.combine_()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    flat = combiners[1]._flat_grad.untyped_storage().data_ptr()
    assert all(p.grad.untyped_storage().data_ptr() == flat for p in nets[1].parameters())  # backward wrote there
    assert combiners[1].zero_grad_() is True and not combiners[1]._flat_grad.any()
