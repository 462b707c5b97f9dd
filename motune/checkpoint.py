"""Pruned checkpoints: save a trained network with what is needed to rebuild it.

A checkpoint is a plain ``torch.save`` dict (tensors, strings, numbers only) so it loads
with ``weights_only=True``: loading never runs code from the file. Writes go to a
temporary name in the same directory and are renamed into place, so a crash or Ctrl-C
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from motune.models import build_model

FORMAT = "motune-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, or not a motune checkpoint."""


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Atomically write a checkpoint of model ``model`` with ``state_dict`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "metadata": dict(metadata or {}),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check a checkpoint (``weights_only=True``); raise :class:`CheckpointError` if bad."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file; export the study again with `motune export`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a PyTorch checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}); it is corrupted or not a motune checkpoint"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a motune checkpoint (no '{FORMAT}' format tag)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {payload.get('version')!r}, this motune reads {VERSION}")
    missing = [k for k in ("model", "input_shape", "num_classes", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing fields {', '.join(missing)}")
    return payload


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a ready-to-use ``nn.Module`` (eval mode) from a motune checkpoint."""
    payload = load_checkpoint(path)
    try:
        model = build_model(payload["model"], tuple(payload["input_shape"]), payload["num_classes"])
        model.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit model {payload['model']!r}: {exc}") from exc
    return model.to(device).eval()
