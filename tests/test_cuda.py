"""Training, the DataLoader path, the hook and checkpoints on a CUDA device.

Skipped, with the reason, on a machine without CUDA (CI never needs a GPU);
``bench/gpu_check.sh`` runs them on a GPU machine. The device is always an explicit
``cuda:N`` (the last GPU when there are several), so a wrong ``cuda:0`` default
somewhere would show.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import motune
from motune import SparseTraining, TrainConfig, load_model, save_checkpoint, train
from motune.train import resolve_device
from motune.workers import local_gpu_count, worker_device

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

FAST = dict(dataset="digits", model="digits_cnn", epochs=3, batch_size=64, optimizer="sgd", lr=0.05)


@pytest.fixture(scope="module")
def digits() -> motune.Dataset:
    return motune.load_dataset("digits")


@pytest.fixture(scope="module")
def gpu() -> str:
    return f"cuda:{torch.cuda.device_count() - 1}"


@pytest.mark.parametrize("method", ["weighted_sum", "multi_gradient"])
def test_training_on_cuda_learns_prunes_and_returns_cpu_weights(digits, gpu: str, method: str) -> None:
    result = train(TrainConfig(**FAST, method=method, l1_weight=1e-3, device=gpu), data=digits)
    assert result.val_accuracy > 0.8 and 0 < result.nonzeros < result.penalised_size
    assert all(t.device.type == "cpu" for t in result.state_dict.values())
    # The same run on the CPU: the same problem, close numbers (other kernels, other rounding).
    on_cpu = train(TrainConfig(**FAST, method=method, l1_weight=1e-3, device="cpu"), data=digits)
    assert abs(result.val_accuracy - on_cpu.val_accuracy) < 0.05


def test_dataloader_path_with_pinned_memory_on_cuda(digits, gpu: str) -> None:
    """Pinned CPU batches, copied without blocking, train like the in-memory tensors on the GPU."""
    loader = DataLoader(TensorDataset(digits.x_train, digits.y_train), batch_size=64, shuffle=True, pin_memory=True,
                        generator=torch.Generator().manual_seed(0))
    val = DataLoader(TensorDataset(digits.x_val, digits.y_val), batch_size=256, pin_memory=True)
    cfg = TrainConfig(**FAST, l1_weight=1e-3, device=gpu)
    result = train(cfg, data={"train": loader, "val": val, "num_classes": 10})
    assert result.val_accuracy > 0.8 and 0 < result.nonzeros < result.penalised_size
    assert math.isnan(result.test_accuracy)  # no test loader
    tensors = train(cfg, data=digits)
    assert abs(result.val_accuracy - tensors.val_accuracy) < 0.05


def test_hook_multi_gradient_on_cuda_keeps_alpha_on_the_device(digits, gpu: str) -> None:
    torch.manual_seed(0)
    model = motune.build_model("digits_cnn", digits.input_shape, digits.num_classes).to(gpu)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    hook = SparseTraining(model, "dense", method="multi_gradient")
    x, y = digits.x_train[:256].to(gpu), digits.y_train[:256].to(gpu)
    for idx in torch.arange(256, device=gpu).split(64):
        hook.zero_grad(optimizer)
        torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        alpha = hook.step(optimizer)
        assert isinstance(alpha, torch.Tensor) and alpha.device == torch.device(gpu)  # no host sync per step
        assert 0.0 <= float(alpha) <= 1.0
    flat = hook.combiner._flat_grad.untyped_storage().data_ptr()
    assert all(p.grad.untyped_storage().data_ptr() == flat for p in model.parameters())  # views kept


def test_checkpoint_of_a_cuda_run_loads_on_cpu_and_on_the_gpu(digits, gpu: str, tmp_path) -> None:
    result = train(TrainConfig(**FAST, l1_weight=2e-3, device=gpu), data=digits)
    path = save_checkpoint(tmp_path / "net.pt", model=result.model_name, input_shape=result.input_shape,
                           num_classes=result.num_classes, state_dict=result.state_dict, penalised=result.penalised)
    on_cpu, on_gpu = load_model(path), load_model(path, device=gpu)
    assert all(p.device.type == "cpu" for p in on_cpu.parameters())
    assert all(p.device == torch.device(gpu) for p in on_gpu.parameters())
    for name, tensor in on_gpu.state_dict().items():
        assert torch.equal(tensor.cpu(), result.state_dict[name]), name
    x = digits.x_test[:200]
    with torch.no_grad():
        torch.testing.assert_close(on_gpu(x.to(gpu)).cpu(), on_cpu(x), rtol=1e-4, atol=1e-4)


def test_local_workers_get_real_gpus(gpu: str) -> None:
    n = local_gpu_count()
    assert n == torch.cuda.device_count() >= 1
    devices = [worker_device("auto", i, n) for i in range(2 * n)]
    assert devices == [f"cuda:{i % n}" for i in range(2 * n)]
    assert all(resolve_device(d).type == "cuda" for d in devices)
