"""Throughput of motune's training loop against a plain PyTorch loop, side by side.

LeNet-5 on Fashion-MNIST (or, when the files are absent, digits upscaled to 28x28, and
the table says so), batch size 128, the same optimiser, one epoch per repeat. Variants:

- ``plain``: the textbook loop (zero_grad, forward, loss, backward, step): no penalty,
  no pruning;
- ``weighted_sum_itp``: ``motune.train`` with a weighted sum (l1 weight 1e-4) and soft
  intra-training pruning;
- ``smgd_itp``: ``motune.train`` with the multi-gradient combiner (SGD + momentum) and
  pruning;
- ``plain_loader``: the textbook loop over a ``torch.utils.data.DataLoader`` (a
  ``TensorDataset`` of the same images, shuffled, batch 128, pinned memory and
  non-blocking copies on CUDA);
- ``dataloader_itp``: ``motune.train`` (as ``weighted_sum_itp``) from the same kind of
  DataLoader, through ``data={"train": ..., "val": ...}``, motune's loader path.

Repeats are interleaved (plain, ws, smgd, plain_loader, dataloader, then the same rotated by one, ...) so
machine noise hits all variants alike; each ratio is the median over repeats of (variant
samples/s) / (its plain loop's samples/s in the same repeat: ``plain`` for the in-memory
rows, ``plain_loader`` for ``dataloader_itp``). Targets: weighted_sum_itp_ratio >= 0.97,
smgd_itp_ratio >= 0.95, dataloader_itp_ratio >= 0.95. Seconds are those of the training
loop (``TrainResult.train_seconds``; on CUDA after a synchronize), not data loading or
evaluation.

Every setting of intra-op threads in ``--threads`` (default: 1 and all cores) is measured
in the same run; the top-level keys are those of the last (all cores), ``by_threads``
holds each. A fixed per-step cost weighs more on a faster (multi-threaded) step.

    python bench/throughput.py            # full: 50k samples/epoch, 7 repeats
    python bench/throughput.py --quick    # 10k samples/epoch, 3 repeats
    python bench/throughput.py --device cuda   # on a GPU (bench/gpu_check.sh)
    python bench/throughput.py --quick --smgd-steps 40   # + SMGD's step before/after the views
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import write_json

import motune
from motune.data import DEFAULT_DATA_DIRS, DataError
from motune.train import resolve_device

BATCH = 128
LR = 0.01


def load_data(limit: int | None) -> tuple[motune.Dataset, str]:
    try:
        return motune.load_dataset("fashion-mnist", DEFAULT_DATA_DIRS["fashion-mnist"], limit=limit), "fashion-mnist"
    except DataError:
        return motune.load_dataset("digits", image_size=28, limit=limit), "digits upscaled to 28x28 (Fashion-MNIST not installed)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _plain_model(data: motune.Dataset, seed: int, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = motune.build_model("lenet5", data.input_shape, data.num_classes).to(device)
    return model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)


def plain_epoch(data: motune.Dataset, seed: int, device: torch.device) -> float:
    """One epoch of the textbook loop on in-memory tensors (``data`` already on ``device``); its seconds.

    The batch order is motune's seeding protocol (one ``randperm`` of a seeded CPU
    generator, moved to the device once per epoch, as ``motune.train`` does).
    """
    model, opt = _plain_model(data, seed, device)
    x, y = data.x_train, data.y_train
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).to(device)
    for idx in order.split(BATCH):
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def loaders(data: motune.Dataset, seed: int, device: torch.device) -> dict[str, DataLoader]:
    """The DataLoaders of both loader rows: CPU tensors, shuffled by a seeded generator, pinned on CUDA."""
    pin = device.type == "cuda"
    train = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=BATCH, shuffle=True, pin_memory=pin,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(TensorDataset(data.x_val, data.y_val), batch_size=1000, pin_memory=pin)
    return {"train": train, "val": val}


def plain_loader_epoch(data: motune.Dataset, seed: int, device: torch.device) -> float:
    """One epoch of the textbook loop over a DataLoader (non-blocking copies to the device); its seconds."""
    model, opt = _plain_model(data, seed, device)
    loader = loaders(data, seed, device)["train"]
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        loss = F.cross_entropy(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - t0


def motune_epoch(data: motune.Dataset | dict, seed: int, device: torch.device, **changes) -> float:
    cfg = motune.TrainConfig(
        dataset="fashion-mnist", model="lenet5", optimizer="sgd", lr=LR, momentum=0.9, batch_size=BATCH,
        epochs=1, seed=seed, device=str(device), eval_every_epoch=False, **changes,
    )
    return motune.train(cfg, data=data).train_seconds


def motune_loader_epoch(data: motune.Dataset, seed: int, device: torch.device) -> float:
    """``motune.train`` (weighted sum, ITP) on the loader path, from the same kind of DataLoader."""
    mapping = {**loaders(data, seed, device), "input_shape": data.input_shape, "num_classes": data.num_classes}
    return motune_epoch(mapping, seed, device, method="weighted_sum", l1_weight=1e-4)


# name -> (epoch function, whether it takes the CPU dataset (loaders) rather than the device copy)
VARIANTS = {
    "plain": (plain_epoch, False),
    "weighted_sum_itp": (lambda d, s, dev: motune_epoch(d, s, dev, method="weighted_sum", l1_weight=1e-4), False),
    "smgd_itp": (lambda d, s, dev: motune_epoch(d, s, dev, method="multi_gradient"), False),
    "plain_loader": (plain_loader_epoch, True),
    "dataloader_itp": (motune_loader_epoch, True),
}
BASELINE = {"weighted_sum_itp": "plain", "smgd_itp": "plain", "dataloader_itp": "plain_loader"}
ROWS = ("weighted_sum_itp", "smgd_itp", "dataloader_itp")


def measure(data: motune.Dataset, repeats: int, device: torch.device) -> dict:
    """Interleaved repeats of every variant at the current thread setting; medians and ratios."""
    n = len(data.x_train)
    on_device = data.to(device)  # in-memory rows: the tensors live on the device (as motune.train puts them)
    plain_epoch(on_device, 0, device)  # warm-up: allocator, kernels, thread pool
    plain_loader_epoch(data, 0, device)
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    for rep in range(repeats):
        # Rotate the order every repeat, so each variant runs in every slot equally often: a drift
        # within a repeat (a neighbour's job, the CPU's clock) then biases no variant against its
        # baseline. With a fixed order SMGD always ran two slots after plain and read 0.93 where
        # pairs run back to back read 1.02 (docs/benchmarks.md §4).
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            run, cpu_data = VARIANTS[name]
            seconds[name].append(run(data if cpu_data else on_device, rep, device))
    rate = {name: [n / s for s in secs] for name, secs in seconds.items()}
    ratios = {name: [r / p for r, p in zip(rate[name], rate[BASELINE[name]])] for name in ROWS}
    return {
        "threads": torch.get_num_threads(),
        **{f"{name}_samples_per_s": statistics.median(rate[name]) for name in VARIANTS},
        **{f"{name}_ratio": statistics.median(ratios[name]) for name in ROWS},
        "ratios_per_repeat": ratios,
        "seconds_per_repeat": seconds,
    }


def smgd_steps(data: motune.Dataset, blocks: int, steps: int = 20) -> dict:
    """SMGD's hot loop before and after the ``.grad`` views, side by side: µs per step, interleaved blocks.

    ``before``: ``optimizer.zero_grad()`` (``.grad`` set to None, ``g1`` copied into the flat
    buffer every step, the loop at 01a31d3); ``now``: ``SparseTraining.zero_grad`` (one
    memset, backward writes into the flat buffer), what ``motune.train`` runs. Three
    LeNet-5s on the same batches; medians over blocks of ``steps`` steps.
    """
    from motune.hook import SparseTraining

    cpu = torch.device("cpu")
    batches = list(zip(data.x_train.split(BATCH), data.y_train.split(BATCH)))
    runs = {}
    for name in ("plain", "before", "now"):
        model, opt = _plain_model(data, 0, cpu)
        runs[name] = (model, opt, None if name == "plain" else SparseTraining(model, "dense", method="multi_gradient"))

    def block(name: str, start: int) -> float:
        model, opt, hook = runs[name]
        t0 = time.perf_counter()
        for j in range(steps):
            xb, yb = batches[(start + j) % len(batches)]
            loss = F.cross_entropy(model(xb), yb)
            if hook is not None and name == "now":
                hook.zero_grad(opt)
            else:
                opt.zero_grad()
            loss.backward()
            opt.step() if hook is None else hook.step(opt)
        return (time.perf_counter() - t0) / steps * 1e6

    us: dict[str, list[float]] = {name: [] for name in runs}
    for b in range(blocks + 1):
        for name in runs:
            t = block(name, b * steps)
            if b:  # the first block warms up
                us[name].append(t)
    plain = us["plain"]
    return {name: {"us_per_step": statistics.median(v),
                   "overhead_us": statistics.median([a - p for a, p in zip(v, plain)]),
                   "ratio": statistics.median([p / a for a, p in zip(v, plain)])} for name, v in us.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k samples per epoch, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="intra-op thread settings (default: 1, all cores)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--smgd-steps", type=int, metavar="BLOCKS", default=0,
                        help="also time SMGD's step before/after the .grad views, BLOCKS interleaved blocks (CPU)")
    parser.add_argument("--json", default="bench/results/throughput.json", help="where to write the JSON results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    limit = 10_000 if args.quick else None
    repeats = args.repeats or (3 if args.quick else 7)
    threads = args.threads or sorted({1, torch.get_num_threads()})

    data, source = load_data(limit)
    n = len(data.x_train)
    by_threads = {}
    for t in threads:
        torch.set_num_threads(t)
        by_threads[t] = measure(data, repeats, device)
        if args.smgd_steps:
            by_threads[t]["smgd_steps"] = smgd_steps(data, args.smgd_steps)
    targets = {"weighted_sum_itp_ratio": 0.97, "smgd_itp_ratio": 0.95, "dataloader_itp_ratio": 0.95}
    out = {
        "data": source,
        "model": "lenet5",
        "batch_size": BATCH,
        "samples_per_epoch": n,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "load_average_at_end": os.getloadavg(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        **by_threads[threads[-1]],
        "by_threads": by_threads,
        "targets": targets,
    }

    where = out["gpu"] or out["machine"]
    print(f"LeNet-5, batch {BATCH}, {n} samples/epoch on {source}, {device} ({where}); {repeats} interleaved repeats, medians")
    print(f"{'threads':<8}{'variant':<20}{'samples/s':>12}{'ratio':>9}{'target':>9}")
    for t, res in by_threads.items():
        for name in VARIANTS:
            line = f"{t:<8}{name:<20}{res[f'{name}_samples_per_s']:>12.0f}"
            if name in ROWS:
                ratio, target = res[f"{name}_ratio"], targets[f"{name}_ratio"]
                line += f"{ratio:>9.3f}{target:>7.2f} {'ok' if ratio >= target else 'MISSED'}"
            else:
                line += f"{1.0:>9.3f}"
            print(line)
        for name, r in res.get("smgd_steps", {}).items():
            print(f"{t:<8}{'step: smgd ' + name if name != 'plain' else 'step: plain':<20}{r['us_per_step']:>9.0f} us"
                  f"{r['ratio']:>9.3f}  (+{r['overhead_us']:.0f} us)")
    print(f"wrote {write_json(args.json, out)}")


if __name__ == "__main__":
    main()
