"""One training run: reproducibility, the plain-loop equivalence, the trade-off, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from motune import DivergenceError, TrainConfig, train
from motune.combine import WeightedSum, cubic_ramp
from motune.data import load_dataset
from motune.models import build_model, penalised_parameters

FAST = dict(dataset="digits", model="digits_cnn", epochs=3, batch_size=64, optimizer="adam", lr=0.003)
SGD = dict(FAST, optimizer="sgd", lr=0.05)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_weighted_sum_zero_without_pruning_matches_plain_loop_bit_for_bit(digits) -> None:
    cfg = TrainConfig(**SGD, l1_weight=0.0, prune_policy="none", seed=7, eval_every_epoch=False)
    result = train(cfg, data=digits)

    # The plain PyTorch loop, following the seeding protocol documented in motune.train.
    torch.manual_seed(7)
    model = build_model("digits_cnn", digits.input_shape, digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(7)
    model.train()
    for _ in range(3):
        order = torch.randperm(len(digits.x_train), generator=gen)
        for start in range(0, len(order), 64):
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for name, tensor in model.state_dict().items():
        assert torch.equal(result.state_dict[name], tensor), name


@pytest.mark.parametrize("prune_policy", ["soft", "permanent"])
def test_multi_gradient_matches_a_plain_loop_with_optimizer_zero_grad_bit_for_bit(digits, prune_policy: str) -> None:
    """train's hot loop keeps .grad as views of the combiner's flat buffer (hook.zero_grad); a loop that
    clears gradients the usual way (set to None, g1 copied every step) gives the same weights."""
    from motune.hook import SparseTraining

    cfg = TrainConfig(**SGD, method="multi_gradient", prune_policy=prune_policy, seed=5)
    result = train(cfg, data=digits)
    torch.manual_seed(5)
    model = build_model("digits_cnn", digits.input_shape, digits.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = SparseTraining(model, "dense", method="multi_gradient", prune_policy=prune_policy)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        order = torch.randperm(len(digits.x_train), generator=gen)
        for idx in order.split(64):
            loss = F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx])
            opt.zero_grad()
            loss.backward()
            hook.step(opt)
    for name, tensor in model.state_dict().items():
        assert torch.equal(result.state_dict[name], tensor), name
    assert result.nonzeros == hook.nonzeros() < result.penalised_size


def test_a_device_this_machine_lacks_is_a_valid_setting_that_train_refuses(digits) -> None:
    """The device is a local choice: a config naming cuda:99 validates anywhere (a study made on a
    GPU box is read on a laptop); train() says the machine lacks it, before any work."""
    cfg = TrainConfig(**FAST, device="cuda:99").validate()
    with pytest.raises(ValueError, match=r"^device: 'cuda:99' requested but (CUDA is not available|this machine has)"):
        train(cfg, data=digits)


def test_same_seed_same_numbers_and_other_seed_differs(digits) -> None:
    cfg = TrainConfig(**FAST, l1_weight=1e-3, seed=3)
    a, b = train(cfg, data=digits), train(cfg, data=digits)
    assert (a.cross_entropy, a.l1, a.nonzeros, a.val_accuracy) == (b.cross_entropy, b.l1, b.nonzeros, b.val_accuracy)
    c = train(cfg.replace(seed=4), data=digits)
    assert c.l1 != a.l1


def test_lambda_one_drives_penalised_weights_to_zero(digits) -> None:
    result = train(TrainConfig(**{**FAST, "epochs": 10}, l1_weight=1.0), data=digits)
    assert result.nonzeros == 0 and result.l1 == 0.0 and result.fraction_kept == 0.0
    # the network collapses to a constant predictor: cross-entropy about ln(10)
    assert result.cross_entropy == pytest.approx(math.log(10), abs=0.1)


def test_digits_reaches_90_percent_and_larger_lambda_trades_accuracy_for_sparsity(digits) -> None:
    dense = train(TrainConfig(dataset="digits", epochs=10, l1_weight=0.0), data=digits)
    sparse = train(TrainConfig(dataset="digits", epochs=10, l1_weight=3e-3), data=digits)
    assert dense.val_accuracy >= 0.90
    assert sparse.nonzeros < dense.nonzeros
    assert sparse.cross_entropy > dense.cross_entropy
    assert sparse.l1 < dense.l1
    assert dense.seconds > 0 and dense.train_seconds <= dense.seconds  # timings are recorded; speed is bench/throughput.py's


def test_itp_invariant_holds_at_the_end_and_history_is_recorded(digits) -> None:
    cfg = TrainConfig(**FAST, l1_weight=1e-3, prune_threshold=1e-2, eval_every_epoch=True)
    result = train(cfg, data=digits)
    assert len(result.history) == 3
    for name, w in result.state_dict.items():
        if name.endswith("weight") and name.startswith("classifier"):
            mag = w.abs()
            assert not ((mag > 0) & (mag <= 1e-2)).any(), name
    model = build_model(cfg.model, result.input_shape, result.num_classes)
    layers = list(penalised_parameters(model))
    for record in result.history:
        assert list(record.nonzeros_per_layer) == layers
        assert record.nonzeros == sum(record.nonzeros_per_layer.values())
        assert record.val_accuracy is not None and record.alpha_mean is None
    # the history is a real pruning history: weights are pruned in the first epoch and sparsity grows after it
    assert result.history[0].nonzeros < result.penalised_size
    assert result.history[-1].nonzeros < result.history[0].nonzeros
    assert result.nonzeros == result.history[-1].nonzeros
    assert result.fraction_kept == pytest.approx(result.nonzeros / result.penalised_size)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.05), ("adam", 0.003), ("rmsprop", 0.001)])
def test_multi_gradient_runs_with_each_base_optimizer(digits, optimizer: str, lr: float) -> None:
    result = train(TrainConfig(**{**FAST, "lr": lr, "optimizer": optimizer}, method="multi_gradient"), data=digits)
    assert result.alpha_mean is not None and 0.0 <= result.alpha_mean <= 1.0
    assert all(r.alpha_mean is not None and 0.0 <= r.alpha_mean <= 1.0 for r in result.history)
    assert result.val_accuracy > 0.5  # it learns: a common descent direction, not pure l1
    assert result.nonzeros < result.penalised_size  # ...and it prunes


def test_finetune_keeps_the_sparsity_pattern_and_recovers_accuracy(digits) -> None:
    base = TrainConfig(dataset="digits", epochs=12, l1_weight=5e-3, eval_every_epoch=True)
    pruned = train(base, data=digits)
    tuned = train(base.replace(finetune_epochs=4), data=digits)
    switch = tuned.history[7]  # last epoch with the l1 term
    for record in tuned.history[8:]:
        assert record.nonzeros <= switch.nonzeros  # the mask is frozen: nothing regrows
    assert tuned.cross_entropy < switch.val_cross_entropy  # accuracy recovers on that pattern
    assert tuned.cross_entropy < pruned.cross_entropy
    smgd = train(base.replace(method="multi_gradient", optimizer="sgd", lr=0.05, finetune_epochs=4), data=digits)
    assert smgd.alpha_mean is not None and smgd.history[-1].alpha_mean is None


def test_callback_can_stop_early(digits) -> None:
    seen = []

    def stop_after_two(record) -> bool:
        seen.append(record.epoch)
        return record.epoch == 2

    result = train(TrainConfig(**{**FAST, "epochs": 5}), data=digits, callback=stop_after_two)
    assert seen == [1, 2] and result.epochs == 2 and result.stopped_early
    assert result.history[0].val_accuracy is None  # validation each epoch is opt-in


def test_divergence_raises_distinct_error(digits) -> None:
    with pytest.raises(DivergenceError, match="diverged") as info:
        train(TrainConfig(**{**SGD, "lr": 1e6, "momentum": 0.99}), data=digits)
    assert info.value.epoch >= 1 and not math.isfinite(info.value.loss)


def test_cosine_schedule_decays_learning_rate(digits) -> None:
    result = train(TrainConfig(**FAST, lr_schedule="cosine"), data=digits)
    lrs = [r.lr for r in result.history]
    assert lrs[0] == 0.003 and lrs[-1] < lrs[0]


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("l1_weight", -0.1, "l1_weight"),
        ("l1_weight", 1.01, "l1_weight"),
        ("l1_weight", float("nan"), "l1_weight"),
        ("prune_threshold", -1e-3, "prune_threshold"),
        ("prune_threshold", float("nan"), "prune_threshold"),
        ("dataset", "imagenet", "dataset.*allowed: digits"),
        ("model", "resnet", "model.*allowed"),
        ("optimizer", "lbfgs", "optimizer.*allowed: sgd, adam, rmsprop"),
        ("epochs", 0, "epochs.*positive integer"),
        ("epochs", 2.5, "epochs"),
        ("batch_size", -8, "batch_size.*positive integer"),
        ("batch_size", True, "batch_size"),
        ("lr", 0.0, "lr"),
        ("method", "bayes", "method"),
        ("prune_policy", "sometimes", "prune_policy"),
        ("penalise", "conv", "penalise"),
        ("device", "tpu:0", "device"),
        ("finetune_epochs", 10, "finetune_epochs"),
        ("finetune_epochs", -1, "finetune_epochs"),
        ("optimizer_form", "both", "optimizer_form.*allowed: combined, per_objective"),
        ("l1_ramp", -0.1, "l1_ramp"),
        ("l1_ramp", 1.5, "l1_ramp"),
        ("l1_ramp", float("nan"), "l1_ramp"),
    ],
)
def test_bad_config_names_field_value_and_allowed(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        train(TrainConfig(**{field: value}))
    assert repr(value) in str(info.value) or str(value) in str(info.value)


def test_l1_ramp_follows_the_cubic_schedule_step_by_step(digits) -> None:
    """train() with a ramp equals a plain loop that sets l1_weight = lam * cubic_ramp(t, T) before
    step t, T = l1_ramp of the penalised steps, then a masked fine-tune epoch: bit for bit."""
    lam, epochs, finetune, ramp = 0.02, 4, 1, 0.5
    cfg = TrainConfig(**{**SGD, "epochs": epochs}, l1_weight=lam, l1_ramp=ramp, finetune_epochs=finetune,
                      prune_policy="none", seed=5)
    result = train(cfg, data=digits)

    steps_per_epoch = math.ceil(len(digits.x_train) / 64)
    ramp_steps = round(ramp * (epochs - finetune) * steps_per_epoch)
    assert 0 < ramp_steps < (epochs - finetune) * steps_per_epoch
    torch.manual_seed(5)
    model = build_model("digits_cnn", digits.input_shape, digits.num_classes)
    params, weights = list(model.parameters()), list(penalised_parameters(model).values())
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    combiner = WeightedSum(params, weights, 0.0)
    gen = torch.Generator().manual_seed(5)
    model.train()
    seen, t = [], 0
    for epoch in range(epochs):
        order = torch.randperm(len(digits.x_train), generator=gen)
        for start in range(0, len(order), 64):
            combiner.l1_weight = 0.0 if epoch >= epochs - finetune else lam * cubic_ramp(t, ramp_steps)
            seen.append(combiner.l1_weight)
            idx = order[start : start + 64]
            loss = F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx])
            opt.zero_grad()
            loss.backward()
            combiner.combine_()
            opt.step()
            t += 1
    assert seen[0] == 0.0 and seen[ramp_steps] == lam and seen[ramp_steps // 2] == pytest.approx(lam * 0.875, rel=0.02)
    assert all(a <= b for a, b in itertools.pairwise(seen[: ramp_steps + 1]))
    for name, tensor in model.state_dict().items():
        assert torch.equal(result.state_dict[name], tensor), name


def test_l1_ramp_keeps_more_weights_early_than_no_ramp(digits) -> None:
    base = TrainConfig(**{**FAST, "epochs": 4}, l1_weight=5e-3, l1_ramp=0.0)
    flat, ramped = train(base, data=digits), train(base.replace(l1_ramp=1.0), data=digits)
    assert ramped.history[0].nonzeros > flat.history[0].nonzeros  # the penalty starts at 0
    assert ramped.history[0].l1 > flat.history[0].l1


@pytest.mark.parametrize("optimizer,lr", [("adam", 0.003), ("rmsprop", 0.001)])
def test_per_objective_form_at_lambda_zero_is_the_stock_optimizer(digits, optimizer: str, lr: float) -> None:
    cfg = TrainConfig(**{**FAST, "optimizer": optimizer, "lr": lr}, l1_weight=0.0, seed=2)
    combined, per_objective = train(cfg, data=digits), train(cfg.replace(optimizer_form="per_objective"), data=digits)
    for name, tensor in combined.state_dict.items():
        assert torch.equal(per_objective.state_dict[name], tensor), name


@pytest.mark.parametrize("method", ["weighted_sum", "multi_gradient"])
@pytest.mark.parametrize("optimizer,lr", [("adam", 0.003), ("rmsprop", 0.001)])
def test_per_objective_form_trains_and_prunes(digits, method: str, optimizer: str, lr: float) -> None:
    cfg = TrainConfig(**{**FAST, "optimizer": optimizer, "lr": lr, "epochs": 5}, method=method, l1_weight=3e-3,
                      optimizer_form="per_objective", l1_ramp=0.3, finetune_epochs=1)
    result = train(cfg, data=digits)
    assert result.val_accuracy > 0.6
    assert result.nonzeros < result.penalised_size
    assert (result.alpha_mean is not None) == (method == "multi_gradient")
    combined = train(cfg.replace(optimizer_form="combined"), data=digits)
    assert combined.l1 != result.l1  # a different update, not a relabelled one


def test_per_objective_sgd_is_the_combined_update(digits) -> None:
    cfg = TrainConfig(**SGD, l1_weight=1e-3)
    a, b = train(cfg, data=digits), train(cfg.replace(optimizer_form="per_objective"), data=digits)
    for name, tensor in a.state_dict.items():
        assert torch.equal(b.state_dict[name], tensor), name
