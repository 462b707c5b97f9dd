"""The examples in motune's docstrings run, so they cannot go stale unnoticed.

Every public class, function and method of every ``motune`` module is searched for

* ``.. testcode::`` blocks (the Sphinx doctest directive): the indented block below the
  directive is executed as a script, and it passes if it raises nothing (use
  ``assert`` in the example to check a result);
* ``>>>`` examples: run by :mod:`doctest`, output compared (ELLIPSIS and
  NORMALIZE_WHITESPACE on).

Plain literal blocks (``Example::``) are illustrations and are not run; write an
example as one of the two forms above to make it a test. Each example runs in its
own temporary working directory, so one that writes files leaves nothing behind.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import motune

_TESTCODE = re.compile(r"^(?P<indent>[ \t]*)\.\. testcode::[ \t]*$")
_OPTION = re.compile(r"^[ \t]*:[\w-]+:")  # a directive option such as ``:hide:``


def motune_modules() -> list[ModuleType]:
    """The package and each of its modules."""
    names = sorted(m.name for m in pkgutil.iter_modules(motune.__path__) if not m.name.startswith("_"))
    return [motune, *(importlib.import_module(f"motune.{name}") for name in names)]


def documented(module: ModuleType) -> Iterator[tuple[str, Any]]:
    """``(qualified name, object)`` for the public classes, functions and methods defined in ``module``."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, member in vars(obj).items():
                member = getattr(member, "__func__", getattr(member, "fget", member))  # static/class methods, properties
                if not attr.startswith("_") and inspect.isfunction(member):
                    yield f"{module.__name__}.{name}.{attr}", member


def find_testcode(doc: str) -> list[str]:
    """The source of each ``.. testcode::`` block in a docstring, dedented."""
    lines = inspect.cleandoc(doc).splitlines()
    blocks = []
    for i, line in enumerate(lines):
        match = _TESTCODE.match(line)
        if not match:
            continue
        indent = len(match.group("indent").expandtabs())
        body: list[str] = []
        for later in lines[i + 1 :]:
            if later.strip() and len(later) - len(later.lstrip()) <= indent:
                break  # back at the directive's level: the block has ended
            body.append(later)
        while body and (not body[0].strip() or _OPTION.match(body[0])):
            body.pop(0)
        blocks.append(textwrap.dedent("\n".join(body)).strip("\n"))
    return blocks


def run_testcode(name: str, source: str) -> None:
    exec(compile(source, f"<example in {name}>", "exec"), {"__name__": "__example__"})


def run_doctest(test: doctest.DocTest) -> None:
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    result = runner.run(test, out=report.append)
    assert result.failed == 0, "".join(report)


def collect_examples() -> dict[str, Callable[[], None]]:
    """Every runnable docstring example, by an id naming where it is."""
    examples: dict[str, Callable[[], None]] = {}
    finder = doctest.DocTestFinder(exclude_empty=True)
    for module in motune_modules():
        for name, obj in documented(module):
            for k, source in enumerate(find_testcode(inspect.getdoc(obj) or "")):
                examples[f"{name}[testcode {k}]"] = lambda name=name, source=source: run_testcode(name, source)
        for test in finder.find(module):
            if test.examples:
                examples[f"{test.name}[doctest]"] = lambda test=test: run_doctest(test)
    return examples


EXAMPLES = collect_examples()


def test_the_runnable_examples_are_found() -> None:
    # A parser that silently found nothing would make every example "pass".
    assert "motune.sampler.KneeSampler[testcode 0]" in EXAMPLES


def test_testcode_block_extraction() -> None:
    doc = """Summary.

    Example:

        .. testcode::
            :hide:

            x = 1
            if x:
                y = 2

    Args:
        x: not code.
    """
    assert find_testcode(doc) == ["x = 1\nif x:\n    y = 2"]


@pytest.mark.parametrize("where", sorted(EXAMPLES))
def test_docstring_example_runs(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    EXAMPLES[where]()
