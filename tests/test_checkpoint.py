"""Checkpoints: sparse storage (size follows nonzeros, identical outputs), old dense files, user networks and trust."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import motune
from motune.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint, sparse_decode, sparse_encode
from motune.models import build_model


class Wide(nn.Module):
    """One large penalised layer (400,000 weights, 1.6 MB dense) and a small head."""

    def __init__(self, input_shape: tuple[int, ...] = (1000,), num_classes: int = 4, hidden: int = 400) -> None:
        super().__init__()
        self.body = nn.Linear(input_shape[0], hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))


def _pruned(kept: float, seed: int = 0) -> Wide:
    torch.manual_seed(seed)
    net = Wide()
    with torch.no_grad():
        keep = torch.rand_like(net.body.weight) < kept
        net.body.weight.mul_(keep)
    return net


def _save(net: nn.Module, path: Path, penalised: list[str] | None = None) -> Path:
    return save_checkpoint(path, model=f"{__name__}:Wide", input_shape=(1000,), num_classes=4, state_dict=net.state_dict(),
                           penalised=penalised if penalised is not None else ["body.weight", "head.weight"])


def test_size_follows_nonzeros_and_5_percent_takes_at_most_10_percent(tmp_path: Path) -> None:
    dense_bytes = 400_000 * 4
    sizes = {kept: _save(_pruned(kept), tmp_path / f"{kept}.pt").stat().st_size for kept in (0.0, 0.05, 0.3, 0.71)}
    dense = _save(_pruned(0.05), tmp_path / "dense.pt", penalised=[]).stat().st_size  # everything stored densely
    other = dense - dense_bytes  # the file without the big layer: head, biases, pickle and zip overhead
    assert sizes[0.0] < sizes[0.05] < sizes[0.3] < sizes[0.71] <= dense
    assert sizes[0.05] - other <= 0.10 * dense_bytes
    assert sizes[0.0] - other <= 0.04 * dense_bytes  # the bit mask alone at most; int32 indices when sparser still


@pytest.mark.parametrize("kept", [0.0, 0.001, 0.05, 0.5, 0.99, 1.0])
def test_round_trip_gives_identical_weights_and_outputs(tmp_path: Path, kept: float) -> None:
    net = _pruned(kept, seed=1).eval()
    path = _save(net, tmp_path / "net.pt")
    again = load_model(path, model=Wide())
    for name, tensor in net.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    x = torch.randn(8, 1000)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
    assert not again.training


def test_sparse_encoding_picks_the_smaller_form_and_rejects_tampering() -> None:
    w = torch.zeros(100, 100)
    w[3, :5] = torch.arange(1.0, 6.0)
    assert "indices" in sparse_encode(w)  # 5 nonzeros: indices beat a 1,250-byte mask
    w[::2] = 1.0
    assert "mask" in sparse_encode(w)  # half kept
    assert sparse_encode(torch.ones(100, 100)) is None  # dense is smallest
    assert sparse_encode(torch.ones(3, dtype=torch.int64)) is None
    encoded = sparse_encode(w)
    encoded["values"] = encoded["values"][:-1]
    with pytest.raises(ValueError, match="mask and values disagree"):
        sparse_decode(encoded)
    with pytest.raises(ValueError, match="indices"):
        sparse_decode({"shape": [4], "values": torch.ones(1), "indices": torch.tensor([7], dtype=torch.int32)})


def test_old_dense_version_1_checkpoint_still_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = build_model("digits_cnn", (1, 8, 8), 10).eval()
    payload = {"format": "motune-checkpoint", "version": 1, "model": "digits_cnn", "input_shape": [1, 8, 8],
               "num_classes": 10, "state_dict": net.state_dict(), "metadata": {"trial": 3}}
    torch.save(payload, tmp_path / "old.pt")
    again = load_model(tmp_path / "old.pt")
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(again(x), net(x))
    assert load_checkpoint(tmp_path / "old.pt")["model_args"] == {}


def test_user_network_needs_the_model_or_trust(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "user.pt", model=f"{__name__}:Wide", model_args={"hidden": 16}, input_shape=(1000,),
                           num_classes=4, state_dict=Wide(hidden=16).state_dict())
    with pytest.raises(CheckpointError, match=rf"user code \('{re.escape(__name__)}:Wide'\).*model=.*trust=True"):
        load_model(path)
    trusted = load_model(path, trust=True)
    assert type(trusted).__name__ == "Wide" and trusted.body.out_features == 16  # recorded model_args used
    assert load_model(path, model=Wide).body.out_features == 16  # a factory gets the recorded arguments too
    gone = save_checkpoint(tmp_path / "gone.pt", model="vanished_module:make", input_shape=(1000,), num_classes=4,
                           state_dict=Wide().state_dict())
    with pytest.raises(CheckpointError, match="module 'vanished_module' is not importable"):
        load_model(gone, trust=True)


def test_trained_result_checkpoint_records_the_user_network(tmp_path: Path) -> None:
    data = motune.load_dataset("digits", limit=100)
    config = motune.TrainConfig(epochs=1, limit=100, penalise=["body.*", "head.weight"], l1_weight=0.01)

    def factory(input_shape, num_classes, hidden=32):
        return Wide((64,), num_classes, hidden)

    flat = motune.Dataset("flat", *(t.flatten(1) if t.dim() > 1 else t for t in (
        data.x_train, data.y_train, data.x_val, data.y_val, data.x_test, data.y_test)), num_classes=10)
    result = motune.train(config.replace(model=f"{__name__}:Wide"), model=factory, data=flat)
    assert result.model_name.endswith("factory") and result.penalised == ["body.weight", "head.weight"]
    path = save_checkpoint(tmp_path / "t.pt", model=result.model_name, model_args=result.model_args,
                           penalised=result.penalised, input_shape=result.input_shape, num_classes=result.num_classes,
                           state_dict=result.state_dict)
    again = load_model(path, model=Wide((64,), 10, 32))
    _, accuracy = motune.evaluate(again, flat.x_val, flat.y_val)
    assert accuracy == result.val_accuracy


def test_network_that_cannot_be_rebuilt_by_name_asks_for_the_model(tmp_path: Path) -> None:
    net = Wide(hidden=8)
    path = save_checkpoint(tmp_path / "lambda.pt", model="somewhere:<lambda>", input_shape=(1000,), num_classes=4,
                           state_dict=net.state_dict())
    with pytest.raises(CheckpointError, match=r"neither built in nor an import path; pass it: load_model\(path, model="):
        load_model(path, trust=True)
    assert load_model(path, model=Wide(hidden=8)).body.out_features == 8
