"""Helpers shared by the benchmarks: machine description, study configs, the plain PyTorch loop, output, tables.

What motune already does (reading trials, the Pareto set, the knee, config checks) the
benchmarks take from motune itself (``motune.study``, ``motune.pareto``,
``motune.config``); this module holds only what benchmarks need beyond it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from torch import nn

import motune

RESULTS = Path(__file__).resolve().parent / "results"


def setup(threads: int) -> dict[str, Any]:
    """Common start of a benchmark: torch threads, quiet Optuna, and the machine's description."""
    torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return machine_info()


def study_cost(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, int]:
    """What a study trained, GMP yardstick trials left out: trials run (completed, pruned or
    failed), pruned and warm-started ones, and the epochs of all of them and of the front."""
    from optuna.trial import TrialState

    from motune.trials import FIDELITY, GMP, WARM_START_FROM, WEIGHTED_SUM, trial_kind

    ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
           and trial_kind(t) != GMP]
    front = [t for t in ran if trial_kind(t) == WEIGHTED_SUM and t.user_attrs.get(FIDELITY) != "full"]
    return {
        "trials": len(ran),
        "pruned": sum(t.state == TrialState.PRUNED for t in ran),
        "warm_started": sum(t.user_attrs.get(WARM_START_FROM) is not None for t in ran),
        "total_epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in ran),
        "front_epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in front),
    }


def study_config(toml: str | os.PathLike[str], name: str, *, epochs: int, limit: int | None,
                 data_dir: str | None = None, **study: Any) -> motune.StudyConfig:
    """A shipped study config with a benchmark's settings, checked like any config file.

    The study is named ``name`` (``study`` overrides more [study] keys, e.g.
    ``baselines=[]``), trains ``epochs`` at full length and a third of that (at least 1)
    per front trial, as in the paper, on ``limit`` training images, on the CPU.
    """
    raw = motune.StudyConfig.load(toml).to_dict()
    raw["study"].update(name=name, **study)
    raw["data"]["limit"] = limit
    if data_dir:
        raw["data"]["data_dir"] = data_dir
    raw["train"].update(epochs=epochs, front_epochs=max(1, epochs // 3), device="cpu")
    return motune.StudyConfig.from_dict(raw)


def plain_epochs(model: nn.Module, optimizer: torch.optim.Optimizer, data: motune.Dataset, *, batch_size: int,
                 epochs: int, generator: torch.Generator, on_step: Callable[[], None] | None = None) -> float:
    """The textbook PyTorch loop, the reference motune's training is compared with; returns its seconds.

    Minibatch order follows motune's seeding protocol (one ``torch.randperm`` per epoch
    from ``generator``), so with ``torch.manual_seed(seed)`` before building the model
    and ``generator = torch.Generator().manual_seed(seed)`` it sees exactly the batches
    ``motune.train`` sees. ``on_step()`` runs after every optimiser step.
    """
    x, y = data.x_train, data.y_train
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if on_step is not None:
                on_step()
    return time.perf_counter() - t0


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, load, library versions, threads."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "")
    except OSError:
        model = ""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu": model or platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "optuna": optuna.__version__,
        "torch_threads": torch.get_num_threads(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def median_or_none(values: Sequence[float | None]) -> float | None:
    """Median where a ``None`` (never reached) counts as +infinity; ``None`` if the median is."""
    if not values:
        return None
    med = statistics.median(math.inf if v is None else float(v) for v in values)
    return None if math.isinf(med) else med


def write_json(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=_jsonable))
    return out


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)


def write_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """HTML with plotly.js written once beside it (``include_plotlyjs="directory"``): no CDN."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(out), include_plotlyjs="directory")
    return out


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width text table (first column left-aligned, the others right)."""
    cells = [[_cell(v) for v in row] for row in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for k, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]
        lines.append("  ".join(parts))
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)
