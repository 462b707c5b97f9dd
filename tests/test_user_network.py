"""Your own network and data from Python: motune.train(model=..., data=...), penalise globs, loaders, the hook."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import motune
from motune import SparseTraining, TrainConfig, train
from motune.data import load_dataset
from motune.models import build_model, penalised_parameters
from motune.objectives import evaluate
from motune.train import make_optimizer

SMALL = dict(dataset="digits", limit=300, model="digits_cnn", epochs=2, batch_size=32, optimizer="adam", lr=0.01)


@pytest.fixture(scope="module")
def digits() -> motune.Dataset:
    return load_dataset("digits", limit=300)


class TinyNet(nn.Module):
    """A user's network with its own parameter names (body / head)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> None:
        super().__init__()
        n_in = math.prod(input_shape)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class SeededBatches:
    """Yields exactly the batches the tensor path draws: one seeded CPU generator, randperm per epoch (no ``len``)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int) -> None:
        self.x, self.y, self.batch_size = x, y, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator)
        for idx in order.split(self.batch_size):
            yield self.x[idx], self.y[idx]


class SizedSeededBatches(SeededBatches):
    """The same with ``len()``, as a DataLoader has."""

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)


def _assert_same_run(a: motune.TrainResult, b: motune.TrainResult) -> None:
    assert a.state_dict.keys() == b.state_dict.keys()
    for name, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[name]), name
    assert (a.cross_entropy, a.l1, a.val_accuracy, a.nonzeros) == (b.cross_entropy, b.l1, b.val_accuracy, b.nonzeros)
    assert [(r.train_loss, r.l1, r.nonzeros_per_layer) for r in a.history] == [
        (r.train_loss, r.l1, r.nonzeros_per_layer) for r in b.history
    ]


# ----------------------------------------------------------------------------- model=


def test_given_module_trains_exactly_like_the_builtin(digits) -> None:
    cfg = TrainConfig(**SMALL, l1_weight=1e-3, seed=5)
    builtin = train(cfg, data=digits)
    torch.manual_seed(5)
    net = build_model("digits_cnn", digits.input_shape, digits.num_classes)
    mine = train(cfg, model=net, data=digits)
    _assert_same_run(builtin, mine)
    assert all(torch.equal(v, mine.state_dict[k]) for k, v in net.state_dict().items())  # trained in place
    assert mine.model_name == "motune.models:DigitsCNN" and builtin.model_name == "digits_cnn"
    assert mine.penalised == builtin.penalised == ["classifier.0.weight", "classifier.2.weight"]


def test_factory_gets_shape_classes_and_model_args(digits) -> None:
    seen = {}

    def factory(input_shape, num_classes, hidden):
        seen.update(input_shape=input_shape, num_classes=num_classes, hidden=hidden)
        return TinyNet(input_shape, num_classes, hidden)

    cfg = TrainConfig(**SMALL, model_args={"hidden": 8}, penalise=["body.*.weight", "head.weight"])
    with pytest.raises(ValueError, match="model_args: only an import-path model"):
        train(cfg, model=factory, data=digits)  # model_args with a built-in model name is refused
    result = train(cfg.replace(model="tests:unused"), model=factory, data=digits)
    assert seen == {"input_shape": (1, 8, 8), "num_classes": 10, "hidden": 8}
    assert result.penalised == ["body.1.weight", "body.3.weight", "head.weight"] and result.model_args == {"hidden": 8}


# ----------------------------------------------------------------------------- penalise


def test_penalise_globs_choose_weights_never_biases() -> None:
    net = TinyNet((13,), 3)
    assert list(penalised_parameters(net, ["body.*"])) == ["body.1.weight", "body.3.weight"]
    assert list(penalised_parameters(net, ["head.weight", "body.1.*"])) == ["body.1.weight", "head.weight"]
    assert list(penalised_parameters(net, "dense")) == ["body.1.weight", "body.3.weight", "head.weight"]


@pytest.mark.parametrize(
    "patterns,match",
    [
        (["body.*.weight", "tail.*"], r"penalise: pattern 'tail\.\*' matches no parameter; the parameters are: body\.1\.weight"),
        (["*.bias"], r"penalise: pattern '\*\.bias' matches only biases"),
        ([], "penalise: must be 'dense', 'all' or a non-empty list"),
        (["ok", 3], "penalise: must be"),
        ("conv", "penalise: unknown value 'conv'"),
    ],
)
def test_bad_penalise_names_the_pattern(patterns, match: str, digits) -> None:
    with pytest.raises(ValueError, match=match):
        train(TrainConfig(**SMALL, penalise=patterns), model=TinyNet(digits.input_shape, 10), data=digits)


# ----------------------------------------------------------------------------- loaders


def test_loaders_give_the_numbers_of_the_tensor_path(digits) -> None:
    """Same seeded batches, same numbers: bit for bit, with the l1 warm-up (which needs steps per epoch)."""
    cfg = TrainConfig(**SMALL, l1_weight=2e-3, l1_ramp=0.5, seed=3)
    tensors = train(cfg, data=digits)
    loaders = {
        "train": SizedSeededBatches(digits.x_train, digits.y_train, cfg.batch_size, cfg.seed),
        "val": [(digits.x_val, digits.y_val)],
        "test": [(digits.x_test[:50], digits.y_test[:50]), (digits.x_test[50:], digits.y_test[50:])],
        "num_classes": 10,
    }
    result = train(cfg, data=loaders)
    _assert_same_run(tensors, result)
    assert result.test_accuracy == tensors.test_accuracy
    assert result.test_cross_entropy == pytest.approx(tensors.test_cross_entropy, rel=1e-6)


def test_loader_without_len_is_counted_for_the_warm_up(digits) -> None:
    cfg = TrainConfig(**SMALL, l1_weight=2e-3, l1_ramp=0.5, seed=3)
    batches = SeededBatches(digits.x_train, digits.y_train, cfg.batch_size, cfg.seed)
    result = train(cfg, data={"train": batches, "val": [(digits.x_val, digits.y_val)]})
    assert result.num_classes == 10 and 0 < result.nonzeros < result.penalised_size


class SeededIndexBatches:
    """A DataLoader batch sampler that draws the tensor path's order (randperm of one seeded CPU generator)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __iter__(self):
        yield from (idx.tolist() for idx in torch.randperm(self.n, generator=self.generator).split(self.batch_size))

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)


def test_torch_dataloader_drawing_the_same_order_matches_the_tensor_path(digits) -> None:
    # An MLP: a DataLoader's collated batch has other (equivalent) strides than an indexed one, and
    # the conv kernels of digits_cnn may then take another path with different rounding.
    cfg = TrainConfig(**{**SMALL, "model": "mlp"}, l1_weight=1e-3, seed=11)
    tensors = train(cfg, data=digits)
    sampler = SeededIndexBatches(len(digits.x_train), cfg.batch_size, cfg.seed)
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_sampler=sampler)
    val = DataLoader(TensorDataset(digits.x_val, digits.y_val), batch_size=1000)
    result = train(cfg, data={"train": loader, "val": val, "num_classes": 10})
    _assert_same_run(tensors, result)
    assert math.isnan(result.test_accuracy) and math.isnan(result.test_cross_entropy)  # no test loader


def test_user_network_on_loaders(digits) -> None:
    """motune.train(model=..., data=loaders) on the user's network: trains, prunes, reads classes from the labels."""
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(digits.x_val, digits.y_val), batch_size=64)
    cfg = TrainConfig(**{**SMALL, "epochs": 3}, penalise=["body.*.weight", "head.weight"], l1_weight=5e-3)
    result = train(cfg, model=TinyNet(digits.input_shape, 10), data={"train": loader, "val": val})
    assert result.num_classes == 10 and result.input_shape == (1, 8, 8)
    assert 0 < result.nonzeros < result.penalised_size and result.val_accuracy > 0.5
    assert len(result.history) == 3


@pytest.mark.parametrize(
    "loaders,match",
    [
        ({"train": [(torch.zeros(2, 3), torch.tensor([0, 1]))]}, "dataset: the mapping of loaders has no 'val' loader"),
        ({"train": [], "val": [torch.zeros(2, 3)]}, "dataset: the val loader yields Tensor batches"),
        ({"train": [], "val": [(torch.zeros(2, 3), torch.zeros(2))]}, "dataset: the val loader yields y of shape"),
        ({"train": 3, "val": []}, "dataset: the train loader is a int"),
        ({"train": [], "val": [], "extra": []}, "has an unknown key 'extra'"),
        ({"train": [(1, 2)], "val": [(torch.zeros(2, 3), torch.tensor([0, 1]))]}, "dataset: the train loader yields"),
    ],
)
def test_bad_loaders_name_the_problem(loaders, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        motune.Loaders.from_mapping(loaders).check_train()


def test_training_loader_yielding_junk_is_a_clear_error() -> None:
    good = [(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]))]
    with pytest.raises(ValueError, match=r"dataset: a loader yielded a str; it must yield \(x, y\) pairs"):
        train(TrainConfig(epochs=1), model=nn.Linear(3, 2), data={"train": ["junk"], "val": good, "num_classes": 2})


# ----------------------------------------------------------------------------- the hook


@pytest.mark.parametrize(
    "overrides",
    [
        dict(method="weighted_sum", optimizer="sgd", lr=0.05, l1_weight=5e-3, prune_policy="permanent"),
        dict(method="multi_gradient", optimizer="sgd", lr=0.05),
        dict(method="weighted_sum", optimizer="adam", lr=0.01, l1_weight=2e-3, optimizer_form="per_objective"),
    ],
    ids=["weighted-sum-permanent", "smgd", "per-objective-adam"],
)
def test_plain_loop_with_the_hook_reproduces_train(digits, overrides) -> None:
    cfg = TrainConfig(**{**SMALL, **overrides, "l1_ramp": 0.0, "seed": 2, "penalise": ["body.*.weight", "head.weight"]})
    result = train(cfg, model=lambda input_shape, num_classes: TinyNet(input_shape, num_classes), data=digits)

    torch.manual_seed(2)
    model = TinyNet(digits.input_shape, digits.num_classes)
    hook = SparseTraining(model, ["body.*.weight", "head.weight"], l1_weight=cfg.l1_weight, method=cfg.method,
                          prune_policy=cfg.prune_policy, host_alpha=True if cfg.optimizer_form == "per_objective" else None)
    optimizer = make_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.momentum, form=cfg.optimizer_form,
                               penalised=list(hook.penalised.values()))
    order_of = torch.Generator().manual_seed(2)
    model.train()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(digits.x_train), generator=order_of).split(cfg.batch_size):
            loss = F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            hook.step(optimizer)

    for name, tensor in model.state_dict().items():
        assert torch.equal(result.state_dict[name], tensor), name
    assert hook.l1() == result.l1 and hook.nonzeros() == result.nonzeros
    assert evaluate(model, digits.x_val, digits.y_val) == (result.cross_entropy, result.val_accuracy)
    assert hook.nonzeros() < result.penalised_size  # it did prune


def test_hook_split_calls_equal_step_and_refuse_bad_method() -> None:
    torch.manual_seed(0)
    a, b = TinyNet((6,), 3), TinyNet((6,), 3)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opts, hooks = [], []
    for net in (a, b):
        opts.append(torch.optim.SGD(net.parameters(), lr=0.5))
        hooks.append(SparseTraining(net, "dense", l1_weight=0.05, prune_threshold=0.05))
    for _ in range(3):
        for net, opt in zip((a, b), opts):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
        hooks[0].step(opts[0])
        hooks[1].before_step()
        opts[1].step()
        hooks[1].after_step(opts[1])
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    assert hooks[0].nonzeros() < sum(p.numel() for p in hooks[0].penalised.values())
    with pytest.raises(ValueError, match="method: unknown value 'bayes'"):
        SparseTraining(a, method="bayes")
    with pytest.raises(ValueError, match="multi-gradient method has no l1 weight"):
        SparseTraining(a, method="multi_gradient").l1_weight = 0.1
