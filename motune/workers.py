"""Local worker processes: ``motune run --workers N`` starts, watches and stops them.

Each worker is a ``motune worker`` process of its own (its own Python, torch threads
and data copy) on the study's shared storage; this module only supervises them:
forwards a signal once, reports how each ended, and says whether the study finished.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna

from motune.faults import Interrupted, interruptible
from motune.report import TABLE_HEAD, print_new_trials
from motune.study import completed, load_study_config, make_sampler

STORAGE_ENV = "MOTUNE_STORAGE"  # the default --storage; how workers get the URL without showing it in `ps`
PARENT_ENV = "MOTUNE_PARENT"  # set in workers started by `run --workers`: the parent reports interrupts


def worker_device(device: str, index: int, n_gpus: int) -> str:
    """The device of local worker ``index`` when the config (or ``--device``) says ``device``.

    ``"auto"`` or ``"cuda"`` on a machine with ``n_gpus`` GPUs spreads the workers over
    them round robin, ``cuda:(index mod n_gpus)``; anything else (``"cpu"``, an explicit
    ``"cuda:N"``, ``"auto"`` without a GPU) is every worker's device as it is.

    >>> [worker_device("auto", i, 2) for i in range(3)], worker_device("cuda:1", 0, 2), worker_device("auto", 0, 0)
    (['cuda:0', 'cuda:1', 'cuda:0'], 'cuda:1', 'auto')
    """
    if device in ("auto", "cuda") and n_gpus > 0:
        return f"cuda:{index % n_gpus}"
    return device


def local_gpu_count() -> int:
    """CUDA devices this process can use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_local_workers(
    study: optuna.Study, url: str, n: int, target: int, worker_options: Sequence[str], quiet: bool, device: str = "auto"
) -> int:
    """Start ``n`` ``motune worker`` processes on the study, print their trials, wait for them.

    ``worker_options`` are passed on to each worker (``--artifacts``, ``--heartbeat``, …);
    worker ``i`` gets ``--device`` :func:`worker_device` of ``device`` (the config's or
    ``run --device``), so ``"auto"`` spreads them over this machine's GPUs.
    The storage URL reaches the workers through ``$MOTUNE_STORAGE`` (not their command
    lines, which ``ps`` shows). Each runs in its own session, so a Ctrl-C reaches this
    process only and is forwarded exactly once. Returns 0 when the study is done (or
    stopped by --timeout), 1 when the workers ended before that.
    """
    command = [sys.executable, "-m", "motune.cli", "worker", "--study", study.study_name, "--n-trials", str(target),
               *worker_options, "--quiet"]
    env = {**os.environ, STORAGE_ENV: url, PARENT_ENV: str(os.getpid())}
    shown = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    n_gpus = local_gpu_count()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with interruptible():
            for i in range(n):
                own = ["--worker-index", str(i), "--device", worker_device(device, i, n_gpus)]
                procs.append(subprocess.Popen([*command, *own], env=env, start_new_session=True))
        if not quiet:
            print(TABLE_HEAD, flush=True)
        while True:
            running = [p.poll() is None for p in procs]  # poll every one: it reaps the dead (no zombies)
            if not quiet:
                print_new_trials(study, shown)
            if not any(running):
                break
            with interruptible():
                time.sleep(0.25)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # stuck (e.g. a storage that does not answer)
                proc.kill()  # its trial is recovered by the next run (process gone on this host)
                proc.wait()
        if isinstance(exc, Interrupted):
            exc.note = f"stopped {len(procs)} workers; their running trials are marked FAIL and queued again"
        raise
    codes = [p.returncode for p in procs]
    for i, code in enumerate(codes):
        if code:
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            print(f"motune: worker {i} ended with {how}", file=sys.stderr, flush=True)
    config = load_study_config(study)
    finished = len(completed(study)) >= target or make_sampler(config).is_converged(study)
    if not finished and any(codes):
        print(f"motune: run failed: the workers stopped before the study had {target} completed trials; "
              "run the same command again to resume", file=sys.stderr)
        return 1
    return 0
