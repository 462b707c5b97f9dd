"""Throughput of motune's training loop against a plain PyTorch loop, side by side.

LeNet-5 on Fashion-MNIST (or, when the files are absent, digits upscaled to 28x28, and
the table says so), batch size 128, the same optimiser, one epoch per repeat. Variants:

- ``plain``: the textbook loop (zero_grad, forward, loss, backward, step): no penalty,
  no pruning;
- ``weighted_sum_itp``: ``motune.train`` with a weighted sum (l1 weight 1e-4) and soft
  intra-training pruning;
- ``smgd_itp``: ``motune.train`` with the multi-gradient combiner (SGD + momentum) and
  pruning.

Repeats are interleaved (plain, ws, smgd, plain, ws, smgd, ...) so machine noise hits all
variants alike; each ratio is the median over repeats of (variant samples/s) / (plain
samples/s of the same repeat). Targets: weighted_sum_itp_ratio >= 0.97,
smgd_itp_ratio >= 0.95.

Every setting of intra-op threads in ``--threads`` (default: 1 and all cores) is measured
in the same run; the top-level keys are those of the last (all cores), ``by_threads``
holds each. A fixed per-step cost weighs more on a faster (multi-threaded) step.

    python bench/throughput.py            # full: 50k samples/epoch, 7 repeats
    python bench/throughput.py --quick    # 10k samples/epoch, 3 repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
from pathlib import Path

import torch
from _common import plain_epochs

import motune
from motune.data import DEFAULT_DATA_DIRS, DataError

BATCH = 128
LR = 0.01


def load_data(limit: int | None) -> tuple[motune.Dataset, str]:
    try:
        return motune.load_dataset("fashion-mnist", DEFAULT_DATA_DIRS["fashion-mnist"], limit=limit), "fashion-mnist"
    except DataError:
        return motune.load_dataset("digits", image_size=28, limit=limit), "digits upscaled to 28x28 (Fashion-MNIST not installed)"


def plain_epoch(data: motune.Dataset, seed: int) -> float:
    """One epoch of the textbook loop; returns seconds spent in the loop."""
    torch.manual_seed(seed)
    model = motune.build_model("lenet5", data.input_shape, data.num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    return plain_epochs(model, opt, data, batch_size=BATCH, epochs=1, generator=torch.Generator().manual_seed(seed))


def motune_epoch(data: motune.Dataset, seed: int, **changes) -> float:
    cfg = motune.TrainConfig(
        dataset="fashion-mnist", model="lenet5", optimizer="sgd", lr=LR, momentum=0.9, batch_size=BATCH,
        epochs=1, seed=seed, device="cpu", eval_every_epoch=False, **changes,
    )
    return motune.train(cfg, data=data).train_seconds


VARIANTS = {
    "plain": plain_epoch,
    "weighted_sum_itp": lambda data, seed: motune_epoch(data, seed, method="weighted_sum", l1_weight=1e-4),
    "smgd_itp": lambda data, seed: motune_epoch(data, seed, method="multi_gradient"),
}


def measure(data: motune.Dataset, repeats: int) -> dict:
    """Interleaved repeats of every variant at the current thread setting; medians and ratios."""
    n = len(data.x_train)
    plain_epoch(data, 0)  # warm-up: allocator, kernels, thread pool
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for rep in range(repeats):
        for name, run in VARIANTS.items():
            seconds[name].append(run(data, rep))
    rate = {name: [n / s for s in secs] for name, secs in seconds.items()}
    ratios = {name: [r / p for r, p in zip(rate[name], rate["plain"])] for name in VARIANTS if name != "plain"}
    return {
        "threads": torch.get_num_threads(),
        "plain_samples_per_s": statistics.median(rate["plain"]),
        "weighted_sum_itp_samples_per_s": statistics.median(rate["weighted_sum_itp"]),
        "smgd_itp_samples_per_s": statistics.median(rate["smgd_itp"]),
        "weighted_sum_itp_ratio": statistics.median(ratios["weighted_sum_itp"]),
        "smgd_itp_ratio": statistics.median(ratios["smgd_itp"]),
        "ratios_per_repeat": ratios,
        "seconds_per_repeat": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="10k samples per epoch, 3 repeats")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, nargs="+", default=None, help="intra-op thread settings (default: 1, all cores)")
    parser.add_argument("--json", default="bench/results/throughput.json", help="where to write the JSON results")
    args = parser.parse_args()
    limit = 10_000 if args.quick else None
    repeats = args.repeats or (3 if args.quick else 7)
    threads = args.threads or sorted({1, torch.get_num_threads()})

    data, source = load_data(limit)
    n = len(data.x_train)
    by_threads = {}
    for t in threads:
        torch.set_num_threads(t)
        by_threads[t] = measure(data, repeats)
    targets = {"weighted_sum_itp_ratio": 0.97, "smgd_itp_ratio": 0.95}
    out = {
        "data": source,
        "model": "lenet5",
        "batch_size": BATCH,
        "samples_per_epoch": n,
        "repeats": repeats,
        "torch": torch.__version__,
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cpus".strip(),
        "load_average_at_end": os.getloadavg(),
        "device": "cpu",
        **by_threads[threads[-1]],
        "by_threads": by_threads,
        "targets": targets,
    }

    print(f"LeNet-5, batch {BATCH}, {n} samples/epoch on {source}; {repeats} interleaved repeats, medians")
    print(f"{'threads':<8}{'variant':<20}{'samples/s':>12}{'ratio':>9}{'target':>9}")
    for t, res in by_threads.items():
        print(f"{t:<8}{'plain':<20}{res['plain_samples_per_s']:>12.0f}{1.0:>9.3f}")
        for name in ("weighted_sum_itp", "smgd_itp"):
            ratio, target = res[f"{name}_ratio"], targets[f"{name}_ratio"]
            flag = "ok" if ratio >= target else "MISSED"
            print(f"{t:<8}{name:<20}{res[f'{name}_samples_per_s']:>12.0f}{ratio:>9.3f}{target:>7.2f} {flag}")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
