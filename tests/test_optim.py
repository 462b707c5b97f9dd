"""Per-objective Adam and RMSprop: a hand-written reference step for step, the stock optimiser at alpha = 1."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from motune.combine import MultiGradient, WeightedSum
from motune.optim import PerObjectiveAdam, PerObjectiveRMSprop

STEPS = 6


def _problem(seed: int = 0) -> tuple[nn.Module, list[torch.Tensor]]:
    """A tiny network whose dense weights are penalised (conv kernel and biases are not)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 3))
    return net, [net[2].weight, net[4].weight]


def _backward(net: nn.Module, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    x, y = torch.randn(4, 1, 4, 4, generator=gen), torch.randint(0, 3, (4,), generator=gen)
    for p in net.parameters():
        p.grad = None
    nn.functional.cross_entropy(net(x), y).backward()


# Coefficient c1 = alpha of g1 per step: a weighted sum (constant), a multi-gradient run
# (changes every step, clipped to 1 once), and a ramp that starts with the l1 term off.
SCHEDULES = {
    "weighted_sum": [1 - 0.05] * STEPS,
    "multi_gradient": [0.9, 0.6, 1.0, 0.75, 0.3, 0.95],
    "ramp_from_zero": [1.0, 1.0, 0.99, 0.97, 0.95, 0.95],
}


def _reference_adam(params, pen_ids, grads1, alphas, lr, betas, eps, wd):
    """Per element, in float64, straight from the formula of motune.optim, one objective at a time."""
    b1, b2 = betas
    w = {id(p): p.detach().double().clone() for p in params}
    state = {(id(p), k): [0, torch.zeros_like(w[id(p)]), torch.zeros_like(w[id(p)])] for p in params for k in (1, 2)}
    for g1s, alpha in zip(grads1, alphas):
        new = {}
        for p, g1 in zip(params, g1s):
            i = id(p)
            g = {1: g1.double() + wd * w[i], 2: torch.sign(w[i]) if i in pen_ids else None}
            c = {1: alpha, 2: 1 - alpha}
            update = torch.zeros_like(w[i])
            for k in (1, 2):
                if g[k] is None or c[k] == 0:
                    continue  # an objective with coefficient 0 sits the step out
                st = state[(i, k)]
                st[0] += 1
                st[1] = b1 * st[1] + (1 - b1) * g[k]
                st[2] = b2 * st[2] + (1 - b2) * g[k] ** 2
                m_hat, v_hat = st[1] / (1 - b1 ** st[0]), st[2] / (1 - b2 ** st[0])
                update += c[k] * m_hat / (v_hat.sqrt() + eps)
            new[i] = w[i] - lr * update
        w = new
    return w


def _reference_rmsprop(params, pen_ids, grads1, alphas, lr, a, eps, wd, momentum):
    w = {id(p): p.detach().double().clone() for p in params}
    v = {(id(p), k): torch.zeros_like(w[id(p)]) for p in params for k in (1, 2)}
    buf = {id(p): torch.zeros_like(w[id(p)]) for p in params}
    for g1s, alpha in zip(grads1, alphas):
        new = {}
        for p, g1 in zip(params, g1s):
            i = id(p)
            g = {1: g1.double() + wd * w[i], 2: torch.sign(w[i]) if i in pen_ids else None}
            c = {1: alpha, 2: 1 - alpha}
            d = torch.zeros_like(w[i])
            for k in (1, 2):
                if g[k] is None or c[k] == 0:
                    continue
                v[(i, k)] = a * v[(i, k)] + (1 - a) * g[k] ** 2
                d += c[k] * g[k] / (v[(i, k)].sqrt() + eps)
            if momentum > 0:
                buf[i] = momentum * buf[i] + d
                d = buf[i]
            new[i] = w[i] - lr * d
        w = new
    return w


def _run(make, schedule: list[float]) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Step the optimiser on the tiny problem; return the parameters and the g1 of every step."""
    net, pen = _problem()
    params = list(net.parameters())
    opt = make(params, pen)
    grads1 = []
    for step, alpha in enumerate(schedule):
        _backward(net, step)
        grads1.append([p.grad.clone() for p in params])
        opt.step(alpha)
    return params, grads1


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("wd", [0.0, 0.01])
def test_per_objective_adam_matches_hand_written_reference(schedule: str, wd: float) -> None:
    lr, betas, eps = 0.01, (0.9, 0.999), 1e-8
    alphas = SCHEDULES[schedule]
    params, grads1 = _run(lambda ps, pen: PerObjectiveAdam(ps, pen, lr=lr, betas=betas, eps=eps, weight_decay=wd), alphas)
    # The reference replays the same g1 (recorded: it depends only on the weights, which the
    # reference reproduces), so a mismatch at any step shows up in the final weights.
    net, pen = _problem()
    expected = _reference_adam(list(net.parameters()), {id(p) for p in pen}, grads1, alphas, lr, betas, eps, wd)
    for p, q in zip(params, net.parameters()):
        torch.testing.assert_close(p.detach().double(), expected[id(q)], rtol=1e-5, atol=1e-6)


def test_per_objective_adam_step_by_step() -> None:
    """Not only the end point: after every step the weights equal the reference's."""
    lr, betas, eps = 0.01, (0.9, 0.999), 1e-8
    alphas = SCHEDULES["multi_gradient"]
    net, pen = _problem()
    params = list(net.parameters())
    start = [p.detach().clone() for p in params]
    opt = PerObjectiveAdam(params, pen, lr=lr)
    grads1 = []
    for step, alpha in enumerate(alphas):
        _backward(net, step)
        grads1.append([p.grad.clone() for p in params])
        opt.step(alpha)
        ref_net, ref_pen = _problem()
        with torch.no_grad():
            for q, s in zip(ref_net.parameters(), start):
                q.copy_(s)
        expected = _reference_adam(list(ref_net.parameters()), {id(p) for p in ref_pen}, grads1, alphas[: step + 1],
                                   lr, betas, eps, 0.0)
        for p, q in zip(params, ref_net.parameters()):
            torch.testing.assert_close(p.detach().double(), expected[id(q)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("momentum,wd", [(0.0, 0.0), (0.9, 0.0), (0.5, 0.01)])
def test_per_objective_rmsprop_matches_hand_written_reference(schedule: str, momentum: float, wd: float) -> None:
    lr, a, eps = 0.003, 0.99, 1e-8
    alphas = SCHEDULES[schedule]
    params, grads1 = _run(
        lambda ps, pen: PerObjectiveRMSprop(ps, pen, lr=lr, alpha=a, eps=eps, weight_decay=wd, momentum=momentum), alphas
    )
    net, pen = _problem()
    expected = _reference_rmsprop(list(net.parameters()), {id(p) for p in pen}, grads1, alphas, lr, a, eps, wd, momentum)
    for p, q in zip(params, net.parameters()):
        torch.testing.assert_close(p.detach().double(), expected[id(q)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "ours,stock",
    [
        (lambda ps, pen: PerObjectiveAdam(ps, pen, lr=0.01, weight_decay=0.01),
         lambda ps: torch.optim.Adam(ps, lr=0.01, weight_decay=0.01)),
        (lambda ps, pen: PerObjectiveRMSprop(ps, pen, lr=0.003, momentum=0.9),
         lambda ps: torch.optim.RMSprop(ps, lr=0.003, momentum=0.9)),
        (lambda ps, pen: PerObjectiveRMSprop(ps, pen, lr=0.003), lambda ps: torch.optim.RMSprop(ps, lr=0.003)),
    ],
    ids=["adam", "rmsprop_momentum", "rmsprop"],
)
def test_alpha_one_is_the_stock_optimizer(ours, stock) -> None:
    net_a, pen_a = _problem()
    net_b, _ = _problem()
    opt_a, opt_b = ours(list(net_a.parameters()), pen_a), stock(list(net_b.parameters()))
    for step in range(STEPS):
        _backward(net_a, step)
        _backward(net_b, step)
        opt_a.step(1.0)
        opt_b.step()
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_l1_term_is_a_steady_shrink_decoupled_from_g1() -> None:
    """With g1 = 0 a penalised weight shrinks by lr * l1_weight per step under per-objective
    Adam (m2 / sqrt(v2) = sign(w)), but by the full lr under one Adam on the combined gradient."""
    lr, lam = 1e-3, 0.01
    w_ours = nn.Parameter(torch.tensor([0.5, -0.5]))
    w_stock = nn.Parameter(torch.tensor([0.5, -0.5]))
    ours = PerObjectiveAdam([w_ours], [w_ours], lr=lr)
    stock = torch.optim.Adam([w_stock], lr=lr)
    combiner = WeightedSum([w_stock], [w_stock], lam)
    for _ in range(10):
        w_ours.grad = torch.zeros(2)
        w_stock.grad = torch.zeros(2)
        ours.step(1 - lam)
        combiner.combine_()
        stock.step()
    torch.testing.assert_close(w_ours.detach(), torch.tensor([0.5, -0.5]) - 10 * lr * lam * torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(w_stock.detach(), torch.tensor([0.5, -0.5]) - 10 * lr * torch.tensor([1.0, -1.0]))


def test_multi_gradient_alpha_feeds_the_per_objective_step_without_touching_grad() -> None:
    net, pen = _problem(3)
    params = list(net.parameters())
    _backward(net, 0)
    g1 = [p.grad.clone() for p in params]
    combiner = MultiGradient(params, pen, host_alpha=True)
    alpha = combiner.alpha_()
    assert isinstance(alpha, float) and 0.0 <= alpha <= 1.0
    for p, g in zip(params, g1):
        assert torch.equal(p.grad, g)  # deciding alpha leaves g1 for the optimiser
    for w, s in zip(pen, combiner.signs):
        assert torch.equal(s, torch.sign(w.detach()))
    # same alpha as the combined form
    net_b, pen_b = _problem(3)
    _backward(net_b, 0)
    assert MultiGradient(list(net_b.parameters()), pen_b, host_alpha=True).combine_() == pytest.approx(alpha, rel=1e-12)


def test_tensor_alpha_and_passed_signs_give_the_same_step() -> None:
    net_a, pen_a = _problem()
    net_b, pen_b = _problem()
    opt_a, opt_b = PerObjectiveAdam(list(net_a.parameters()), pen_a), PerObjectiveAdam(list(net_b.parameters()), pen_b)
    for step in range(3):
        _backward(net_a, step)
        _backward(net_b, step)
        opt_a.step(0.75)
        opt_b.step(torch.tensor(0.75), [torch.sign(w.detach()) for w in pen_b])
    for a, b in zip(net_a.parameters(), net_b.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_permanent_masks_reach_every_per_objective_moment() -> None:
    """ITP's permanent policy zeroes the optimiser state of masked weights: all four moments here."""
    from motune.pruning import IntraTrainingPruning

    net, pen = _problem()
    opt = PerObjectiveAdam(list(net.parameters()), pen, lr=0.01)
    itp = IntraTrainingPruning(pen, threshold=0.2, policy="permanent")
    itp.before_training()
    for step in range(3):
        _backward(net, step)
        itp.before_step()
        opt.step(0.9)
        itp.after_step(opt)
    for w, mask in zip(pen, itp.masks):
        assert (~mask).any()
        for key in ("exp_avg1", "exp_avg_sq1", "exp_avg2", "exp_avg_sq2"):
            assert not opt.state[w][key][~mask].any(), key


def test_bad_settings_are_refused() -> None:
    net, pen = _problem()
    with pytest.raises(ValueError, match="penalised"):
        PerObjectiveAdam(list(net.parameters())[:2], pen)
    with pytest.raises(ValueError, match="Adam"):
        PerObjectiveAdam(list(net.parameters()), pen, lr=-1.0)
    opt = PerObjectiveRMSprop(list(net.parameters()), pen)
    _backward(net, 0)
    with pytest.raises(ValueError, match="alpha"):
        opt.step(1.5)
    with pytest.raises(ValueError, match="g2"):
        opt.step(0.5, [torch.sign(pen[0].detach())])
    assert math.isfinite(float(net[2].weight.detach().sum()))
