"""A restricted unpickler that rebuilds numeric numpy arrays and plain containers, never runs code.

Why it exists: CIFAR-10 ships as Python pickles (``cifar-10-batches-py``), and
``pickle.load`` on a file someone else wrote runs whatever callable the file names
(``os.system`` included). :func:`restricted_loads` decodes such files with an
allow-list instead. Security-critical: widen the allow-list only with a vetted wrapper.

What a pickle may contain:

* the built-in values pickle rebuilds without calling anything: dicts, lists, tuples,
  sets, str, bytes, ints, floats, bools, None;
* numeric numpy arrays and scalars, through vetted wrappers of exactly the callables
  numpy's own pickles use (numpy 1.x ``numpy.core`` and 2.x ``numpy._core`` names):
  ``_reconstruct`` (only an empty placeholder of plain ``ndarray``), ``dtype`` (simple
  specs such as ``"<u1"``, never object or void dtypes, always a fresh copy so a
  pickle's ``__setstate__`` cannot alter numpy's shared dtypes), ``scalar`` (numeric
  kinds), ``_frombuffer`` (protocol 5, C or F order);
* how protocol < 3 pickles spell bytes: ``_codecs.encode(text, "latin1")`` and ``bytes()``.

Anything else (any other global, persistent ids) raises :class:`ForbiddenGlobal` or
:class:`pickle.UnpicklingError` before it is called. The allowed callables are
:class:`_Vetted` objects without ``__dict__``, so a pickle's BUILD opcode cannot
rewire them. Before unpickling, every opcode is walked once with :mod:`pickletools`,
which checks each declared length against the data, so no opcode makes the C
unpickler allocate more than the input holds.
"""

from __future__ import annotations

import importlib
import io
import pickle
import pickletools
import re
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["ForbiddenGlobal", "restricted_loads"]


class ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a global outside the allow-list; the message is ``module.name``."""


class _Vetted:
    """An allow-listed callable handed to the unpickler.

    Immutable and without ``__dict__``, so a pickle's BUILD opcode cannot alter it.
    """

    __slots__ = ("_fn", "_name")

    def __init__(self, name: str, fn: Callable[..., Any] | None) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any) -> Any:
        if self._fn is None:
            raise pickle.UnpicklingError(f"{self._name} is not callable here")
        return self._fn(*args)

    def __setattr__(self, key: str, value: Any) -> None:
        raise pickle.UnpicklingError(f"cannot modify {self._name}")

    def __repr__(self) -> str:
        return f"<vetted {self._name}>"


def _numpy_internal(attr: str, *modules: str) -> Any:
    """Find a numpy internal under its numpy 2 (`numpy._core`) or 1.x (`numpy.core`) home."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
    return None


_np_reconstruct = _numpy_internal("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_np_scalar = _numpy_internal("scalar", "numpy._core.multiarray", "numpy.core.multiarray")

_DTYPE_SPEC = re.compile(r"[<>|=]?[a-zA-Z][0-9]{0,2}")
_NDARRAY = _Vetted("numpy.ndarray", None)  # only usable as _reconstruct's first argument


def _as_str(value: Any, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("latin1")
    if isinstance(value, str):
        return value
    raise pickle.UnpicklingError(f"{what}: expected a string, got {type(value).__name__}")


def _safe_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    # Only simple specs like 'u1' or '<i8'. copy=True always: pickles then call
    # dtype.__setstate__, which must never touch numpy's shared builtin dtypes.
    text = _as_str(spec, "numpy.dtype")
    if not _DTYPE_SPEC.fullmatch(text):
        raise pickle.UnpicklingError(f"numpy.dtype: unsupported spec {text!r}")
    dtype = np.dtype(text, align=bool(align), copy=True)
    if dtype.kind in "OV":  # object arrays hold arbitrary objects; void ones are not numbers
        raise pickle.UnpicklingError(f"numpy.dtype: unsupported kind {text!r}")
    return dtype


def _safe_reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    # numpy pickles always build an empty placeholder and fill it with __setstate__.
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("_reconstruct: only plain numpy.ndarray is allowed")
    if not isinstance(shape, tuple) or not all(type(s) is int for s in shape) or 0 not in shape:
        raise pickle.UnpicklingError("_reconstruct: expected an empty placeholder shape")
    return _np_reconstruct(np.ndarray, shape, _as_str(dtype, "_reconstruct").encode("latin1"))


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "biuf" or not isinstance(data, bytes):
        raise pickle.UnpicklingError("scalar: only numeric numpy scalars are allowed")
    return _np_scalar(dtype, data)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any, axis_order: Any = None) -> np.ndarray:
    # Protocol-5 numpy pickles; a plain frombuffer + reshape checks sizes itself.
    if not isinstance(buf, (bytes, bytearray)) or not isinstance(dtype, np.dtype) or dtype.kind == "O":
        raise pickle.UnpicklingError("_frombuffer: unsupported arguments")
    if order not in ("C", "F") or axis_order is not None:
        raise pickle.UnpicklingError("_frombuffer: unsupported memory order")
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=order)


def _latin1_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    # How protocol <3 pickles spell bytes: _codecs.encode(str, 'latin1').
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode: only latin1 text is allowed")
    return text.encode("latin1")


def _safe_bytes(*args: Any) -> bytes:
    # Protocol <3 pickles spell b"" as bytes(); anything else could allocate at will.
    if args:
        raise pickle.UnpicklingError("bytes: only the empty call is allowed")
    return b""


def _allow(modules: tuple[str, ...], name: str, fn: Callable[..., Any]) -> dict[tuple[str, str], _Vetted]:
    vetted = _Vetted(f"{modules[0]}.{name}", fn)
    return {(m, name): vetted for m in modules}


_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")
_NUMERIC = ("numpy._core.numeric", "numpy.core.numeric")
_ALLOWED_GLOBALS: dict[tuple[str, str], _Vetted] = {
    **_allow(_MULTIARRAY, "_reconstruct", _safe_reconstruct),
    **_allow(_MULTIARRAY, "scalar", _safe_scalar),
    **_allow(_NUMERIC, "_frombuffer", _safe_frombuffer),
    **_allow(("numpy",), "dtype", _safe_dtype),
    ("numpy", "ndarray"): _NDARRAY,
    **_allow(("_codecs",), "encode", _latin1_encode),
    **_allow(("builtins", "__builtin__"), "bytes", _safe_bytes),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only rebuild numpy arrays, lists, dicts, bytes and numbers."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def restricted_loads(data: bytes) -> Any:
    """Unpickle ``data`` allowing only what the module docstring lists (bytes keys stay bytes).

    Raises:
        ForbiddenGlobal: the pickle names a callable outside the allow-list.
        Exception: any decoding error of a corrupt or foreign pickle (``UnpicklingError``,
            ``ValueError``, ``EOFError``, ...); callers turn these into their own errors.
    """
    for _ in pickletools.genops(data):  # validates every declared length first
        pass
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
