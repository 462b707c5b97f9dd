"""Pruned checkpoints: save a trained network with what is needed to rebuild it.

A checkpoint is a plain ``torch.save`` dict (tensors, strings, numbers only) so it loads
with ``weights_only=True``: loading never runs code from the file. Writes go to a
temporary name in the same directory and are renamed into place, so a crash or Ctrl-C
never leaves a half-written checkpoint.

Sparse storage (format version 2): each penalised weight is stored as its nonzero values
plus their positions, a bit mask (one bit per weight) or int32 indices, whichever is
smaller, or densely when that is smaller still; so a checkpoint's size follows its
nonzeros (at 5% kept, the penalised weights take about 8% of their dense bytes).
:func:`load_checkpoint` returns the dense state dict either way, and version 1 (dense)
checkpoints still load.

A checkpoint of a user's network records its import path and arguments. Rebuilding it
imports and calls that code, and a checkpoint is data that anyone may hand you, so
:func:`load_model` does it only when the caller passes the model (or its factory) or
says ``trust=True``.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from motune.imports import ImportPathError, is_import_path
from motune.models import MODELS, build_model

FORMAT = "motune-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted, or not a motune checkpoint."""


def sparse_encode(tensor: torch.Tensor) -> dict[str, Any] | None:
    """The smallest sparse form of ``tensor`` (values + bit mask or int32 indices), or None when dense is smaller.

    >>> w = torch.zeros(64, 64); w[0, :3] = 1.0
    >>> sorted(sparse_encode(w)), torch.equal(sparse_decode(sparse_encode(w)), w)
    (['indices', 'shape', 'values'], True)
    """
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return None
    flat = tensor.detach().cpu().reshape(-1)
    keep = flat != 0
    nnz, n, item = int(keep.sum()), flat.numel(), flat.element_size()
    sizes = {"dense": n * item, "mask": math.ceil(n / 8) + nnz * item, "indices": nnz * (4 + item) if n < 2**31 else math.inf}
    form = min(sizes, key=lambda k: sizes[k])
    if form == "dense":
        return None
    encoded: dict[str, Any] = {"shape": [int(d) for d in tensor.shape], "values": flat[keep].clone()}
    if form == "mask":
        encoded["mask"] = torch.from_numpy(np.packbits(keep.numpy()))
    else:
        encoded["indices"] = keep.nonzero().reshape(-1).to(torch.int32)
    return encoded


def sparse_decode(encoded: Mapping[str, Any]) -> torch.Tensor:
    """The dense tensor of :func:`sparse_encode`'s output; ``ValueError`` when the parts do not fit together."""
    shape, values = encoded.get("shape"), encoded.get("values")
    shape_ok = isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)
    if not shape_ok or not isinstance(values, torch.Tensor):
        raise ValueError("malformed sparse tensor (shape or values)")
    n = math.prod(shape)
    dense = torch.zeros(n, dtype=values.dtype)
    if isinstance(encoded.get("mask"), torch.Tensor):
        mask = encoded["mask"]
        if mask.dtype != torch.uint8 or mask.numel() != math.ceil(n / 8):
            raise ValueError("malformed sparse tensor (mask)")
        keep = torch.from_numpy(np.unpackbits(mask.numpy(), count=n).astype(bool))
        if int(keep.sum()) != values.numel():
            raise ValueError("malformed sparse tensor (mask and values disagree)")
        dense[keep] = values
    elif isinstance(encoded.get("indices"), torch.Tensor):
        indices = encoded["indices"].long()
        if indices.numel() != values.numel() or (indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n)):
            raise ValueError("malformed sparse tensor (indices)")
        dense[indices] = values
    else:
        raise ValueError("malformed sparse tensor (no mask or indices)")
    return dense.reshape(shape)


def save_checkpoint(
    path: str | os.PathLike[str],
    *,
    model: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    state_dict: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
    model_args: Mapping[str, Any] | None = None,
    penalised: Iterable[str] | None = None,
) -> Path:
    """Atomically write a checkpoint of model ``model`` with ``state_dict`` to ``path``.

    ``model`` is a built-in name or the import path of the user's factory, ``model_args``
    its keyword arguments. The ``penalised`` weights (default: every floating tensor of
    two or more dimensions) are stored sparsely where that is smaller.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu() for k, v in state_dict.items()}
    names = set(penalised) if penalised is not None else {k for k, v in tensors.items() if v.dim() >= 2}
    sparse = {}
    for name in sorted(names & tensors.keys()):
        encoded = sparse_encode(tensors[name])
        if encoded is not None:
            sparse[name] = encoded
            del tensors[name]
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model": model,
        "model_args": dict(model_args or {}),
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "state_dict": tensors,
        "sparse": sparse,
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
    """Read and check a checkpoint (``weights_only=True``); raise :class:`CheckpointError` if bad.

    Sparse weights come back dense in ``payload["state_dict"]``; ``payload["model_args"]``
    is ``{}`` for a version 1 checkpoint.
    """
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
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path}: format version {payload.get('version')!r}, this motune reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    missing = [k for k in ("model", "input_shape", "num_classes", "state_dict") if k not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path}: missing fields {', '.join(missing)}")
    sparse = payload.pop("sparse", {})
    if not isinstance(sparse, dict) or not isinstance(payload["state_dict"], dict):
        raise CheckpointError(f"checkpoint {path}: malformed state dict")
    for name, encoded in sparse.items():
        try:
            payload["state_dict"][name] = sparse_decode(encoded if isinstance(encoded, dict) else {})
        except ValueError as exc:
            raise CheckpointError(f"checkpoint {path}: weight {name!r}: {exc}") from None
    payload.setdefault("model_args", {})
    return payload


def load_model(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    *,
    model: nn.Module | Callable[..., nn.Module] | None = None,
    trust: bool = False,
) -> nn.Module:
    """Rebuild a ready-to-use ``nn.Module`` (eval mode) from a motune checkpoint.

    A built-in network is rebuilt by name. A user's network (its import path is in the
    checkpoint) is rebuilt only when you pass ``model``, the module (its weights are
    replaced) or its factory (called with the recorded arguments), or say ``trust=True``:
    then the recorded import path is imported and called, which runs code named by the
    file, so trust only checkpoints you made. Otherwise, and when the module is not
    importable, a :class:`CheckpointError` says what to do.

    .. testcode::

        import tempfile, torch
        from torch import nn
        import motune

        net = nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 3))
        path = motune.save_checkpoint(tempfile.mkdtemp() + "/net.pt", model="torch.nn:Sequential",
                                      input_shape=(13,), num_classes=3, state_dict=net.state_dict())
        again = motune.load_model(path, model=nn.Sequential(nn.Linear(13, 8), nn.ReLU(), nn.Linear(8, 3)))
        x = torch.randn(5, 13)
        assert torch.equal(again(x), net(x))
    """
    payload = load_checkpoint(path)
    name, args = payload["model"], payload["model_args"]
    shape, classes = tuple(payload["input_shape"]), payload["num_classes"]
    if isinstance(model, nn.Module):
        net = model
    elif model is None and not is_import_path(name) and name not in MODELS:
        raise CheckpointError(f"checkpoint {path}: its network {name!r} is neither built in nor an import path; "
                              "pass it: load_model(path, model=your_module_or_factory)")
    elif model is None and is_import_path(name) and not trust:
        raise CheckpointError(
            f"checkpoint {path}: its network is user code ({name!r}) and rebuilding it runs that code; pass the "
            "network: load_model(path, model=your_factory_or_module), or, if you trust this file, load_model(path, trust=True)"
        )
    else:
        try:
            net = build_model(name, shape, classes, args, factory=model)
        except ImportPathError as exc:
            raise CheckpointError(f"checkpoint {path}: cannot rebuild its network: {exc.detail}") from exc
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path}: weights do not fit model {name!r}: {exc}") from exc
    try:
        net.load_state_dict(payload["state_dict"])
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path}: weights do not fit model {name!r}: {exc}") from exc
    return net.to(device).eval()
