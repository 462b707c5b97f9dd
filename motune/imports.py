"""Import paths: ``"module:callable"`` strings that name a user's model or data factory.

A study config or a :class:`~motune.train.TrainConfig` names a built-in (``"digits"``,
``"lenet5"``) or an import path such as ``"winenets:make"``: the module is imported and
the attribute after the colon (dots allowed: ``"pkg.mod:Class.build"``) is the callable.

Checking an import path's *form* (:func:`is_import_path`, :func:`check_import_path`)
never imports anything, so a config read from a shared database can be validated
without running its code. :func:`resolve` imports; :func:`call` calls with keyword
arguments checked against the callable's signature first. Every failure is an
:class:`ImportPathError` whose message starts with the setting it came from (``model``,
``model_args``, ``dataset``, ``data_args``), so a study can report the config key.

An import path is code: only resolve one that the person running motune wrote or
explicitly trusts (see :func:`motune.load_model`'s ``trust`` and ``motune worker
--trust-study-config``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["ImportPathError", "call", "check_import_path", "is_import_path", "make_importable", "resolve"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_IMPORT_PATH = re.compile(rf"^({_DOTTED}):({_DOTTED})$")


class ImportPathError(ValueError):
    """An import path does not resolve, or its callable fails or returns the wrong thing.

    ``field`` is the setting it came from (``"model"``, ``"model_args"``, ``"dataset"``,
    ``"data_args"``, ``"penalise"``); the message starts with it.
    """

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"{field}: {detail}")
        self.field = field
        self.detail = detail


def is_import_path(value: object) -> bool:
    """Whether ``value`` has the form ``"module:callable"`` (nothing is imported).

    >>> is_import_path("winenets:make"), is_import_path("lenet5"), is_import_path("a:b:c")
    (True, False, False)
    """
    return isinstance(value, str) and _IMPORT_PATH.match(value) is not None


def check_import_path(field: str, value: str) -> None:
    """Raise :class:`ImportPathError` unless ``value`` has the form ``"module:callable"`` (no import)."""
    if not is_import_path(value):
        raise ImportPathError(field, f"{value!r} is not an import path; write it as 'module:callable' (e.g. 'winenets:make')")


def make_importable(directory: str | Path) -> None:
    """Put ``directory`` first on ``sys.path`` (once), as Python does for a script's folder.

    A study config's folder is importable this way, so ``winenets.py`` beside
    ``wine.toml`` is found. Call it only for a folder the user named (a config file
    they passed), never for one read from a shared storage.
    """
    path = str(Path(directory).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)
        importlib.invalidate_caches()


def resolve(field: str, path: str) -> Callable[..., Any]:
    """Import ``"module:attr"`` and return the callable it names.

    Raises :class:`ImportPathError` (starting with ``field``) when the path is malformed,
    the module does not import (saying which module to make importable), the attribute
    is missing, or it is not callable.

    >>> resolve("model", "collections:OrderedDict")
    <class 'collections.OrderedDict'>
    >>> resolve("model", "collections:NoSuchThing")
    Traceback (most recent call last):
    ...
    motune.imports.ImportPathError: model: 'collections:NoSuchThing': module 'collections' has no attribute 'NoSuchThing'
    """
    check_import_path(field, path)
    module_name, attr = path.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or module_name
        raise ImportPathError(
            field,
            f"{path!r}: module {missing!r} is not importable; put it beside the study config, on PYTHONPATH, "
            "or install it (every worker machine needs it too)",
        ) from exc
    except Exception as exc:  # the module itself raised while importing
        raise ImportPathError(field, f"{path!r}: importing module {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(field, f"{path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportPathError(field, f"{path!r} is a {type(obj).__name__}, not a callable")
    return obj


def _parameters(fn: Callable[..., Any]) -> tuple[set[str], bool] | None:
    """Keyword-passable parameter names of ``fn`` and whether it takes ``**kwargs``; None if unknown."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature
        return None
    names = {
        p.name
        for p in signature.parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return names, any(p.kind == inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def call(
    field: str,
    fn: Callable[..., Any],
    args: Mapping[str, Any],
    *,
    args_field: str,
    optional: Mapping[str, Any] | None = None,
    name: str = "",
) -> Any:
    """Call ``fn(**args, **optional)``, passing each ``optional`` argument only if ``fn`` takes it.

    Before calling, every key of ``args`` must be a parameter of ``fn`` (or ``fn`` must
    take ``**kwargs``); otherwise an :class:`ImportPathError` starting with
    ``args_field`` names the key and what ``fn`` takes. An exception inside ``fn``
    becomes an :class:`ImportPathError` starting with ``field``.

    >>> def make(input_shape, hidden=8):
    ...     return (input_shape, hidden)
    >>> call("model", make, {"hidden": 4}, args_field="model_args", optional={"input_shape": (13,), "num_classes": 3})
    ((13,), 4)
    """
    label = name or getattr(fn, "__qualname__", repr(fn))
    optional = dict(optional or {})
    params = _parameters(fn)
    if params is not None:
        names, var_keyword = params
        if not var_keyword:
            unknown = [key for key in args if key not in names]
            if unknown:
                takes = ", ".join(sorted(n for n in names if n not in optional)) or "no arguments"
                raise ImportPathError(args_field, f"{unknown[0]!r} is not an argument of {label} (it takes: {takes})")
            optional = {key: value for key, value in optional.items() if key in names}
    clash = [key for key in args if key in optional]
    if clash:
        raise ImportPathError(args_field, f"{clash[0]!r} is set by motune from the data; remove it")
    try:
        return fn(**args, **optional)
    except Exception as exc:
        raise ImportPathError(field, f"{label} raised {type(exc).__name__}: {exc}") from exc
