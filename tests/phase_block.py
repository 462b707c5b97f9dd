"""Run the ``motune`` CLI with one phase of a trial made to stop and wait, for signal tests.

Usage: ``python phase_block.py PHASE K MARKER -- motune-args...``. The K-th time the
process reaches PHASE it creates the file MARKER and then waits (in an interruptible
sleep) until a signal ends it, so a test can send SIGINT / SIGTERM at a known point of
a trial instead of guessing with sleeps how far a trial has got. Phases:

- ``data``: loading the study's data (``motune.study.cached_dataset``);
- ``train``: the end of the first epoch of a training run (``motune.study.train``);
- ``evaluate``: the final evaluation of a training run (``motune.train.evaluate``);
- ``upload``: copying a checkpoint into the artifact store, after half of its bytes.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any


def main() -> int:
    phase, k, marker, sep, *argv = sys.argv[1:]
    assert sep == "--", "usage: phase_block.py PHASE K MARKER -- ARGS"
    k = int(k)
    calls = {"n": 0}

    def reached() -> bool:
        calls["n"] += 1
        return calls["n"] == k

    def block() -> None:
        Path(marker).touch()
        while True:
            time.sleep(0.05)  # a signal handler raises here

    import importlib

    import motune.study

    train_module = importlib.import_module("motune.train")  # `motune.train` is also the function

    if phase == "data":
        real_data = motune.study.cached_dataset

        def cached_dataset(config: Any) -> Any:
            if reached():
                block()
            return real_data(config)

        motune.study.cached_dataset = cached_dataset
    elif phase == "train":
        real_train = motune.study.train

        def train(cfg: Any, **kwargs: Any) -> Any:
            if not reached():
                return real_train(cfg, **kwargs)
            inner = kwargs.pop("callback", None)

            def callback(record: Any) -> Any:
                out = inner(record) if inner else None
                block()
                return out

            return real_train(cfg, callback=callback, **kwargs)

        motune.study.train = train
    elif phase == "evaluate":
        real_evaluate = train_module.evaluate

        def evaluate(*args: Any, **kwargs: Any) -> Any:
            if reached():
                block()
            return real_evaluate(*args, **kwargs)

        train_module.evaluate = evaluate
    elif phase == "upload":
        real_copy = shutil.copyfileobj

        def copyfileobj(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            if not reached():
                return real_copy(src, dst, *args, **kwargs)
            data = src.read()
            dst.write(data[: len(data) // 2])
            dst.flush()
            block()

        shutil.copyfileobj = copyfileobj
    else:
        raise SystemExit(f"unknown phase {phase!r}")

    from motune.cli import main as motune_main

    return motune_main(argv)


if __name__ == "__main__":
    sys.exit(main())
