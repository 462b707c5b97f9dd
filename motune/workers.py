"""Local worker processes: ``motune run --workers N`` starts, watches and stops them.

Each worker is a ``motune worker`` process of its own (its own torch threads, storage
connection and random stream) on the study's shared storage; this module starts them,
forwards a signal once, reports how each ended, and says whether the study finished.

Start-up: where it is known to be safe (:func:`start_method`), the workers are forked
from the ``run`` process, which has already imported torch and loaded and checked the
data, so a worker starts training within milliseconds instead of paying a fresh
interpreter, the imports and the data again (about 2.5 s each on digits). Elsewhere, or
with ``$MOTUNE_WORKER_START=spawn``, each worker is a fresh ``python -m motune.cli
worker`` process, as before. Either way a worker opens its own storage after it starts
and runs the same ``motune worker`` code with the same arguments.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Protocol

import optuna

from motune.faults import Interrupted, interruptible
from motune.report import TABLE_HEAD, print_new_trials
from motune.study import completed, load_study_config, make_sampler

STORAGE_ENV = "MOTUNE_STORAGE"  # the default --storage; how workers get the URL without showing it in `ps`
PARENT_ENV = "MOTUNE_PARENT"  # set in workers started by `run --workers`: the parent reports interrupts
START_ENV = "MOTUNE_WORKER_START"  # "auto" (default): fork where safe, else spawn; "spawn": always a fresh process
START_SETTINGS = ("auto", "spawn")


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


def start_setting() -> str:
    """``$MOTUNE_WORKER_START`` (``"auto"`` when unset); a ``ValueError`` naming the allowed values otherwise."""
    value = os.environ.get(START_ENV, "").strip().lower() or "auto"
    if value not in START_SETTINGS:
        raise ValueError(f"${START_ENV}: unknown value {value!r}; allowed: {', '.join(START_SETTINGS)} (or unset)")
    return value


def start_method(devices: Sequence[str], threads: int | None, runs_user_code: bool) -> str:
    """``"fork"`` when forking this process is known to be safe for workers on ``devices``, else ``"spawn"``.

    Forking a process that has used torch is safe only under conditions that do not depend
    on what this process did before (``run`` may be called in-process, after training):

    * every worker trains on the CPU (``"cpu"``, or ``"auto"`` on a machine without a
      GPU): CUDA cannot be used in a child forked after the parent touched the driver;
    * every worker keeps one torch thread (``threads == 1``, as ``--workers`` gives when
      there are no more cores than workers): a child that never enters an OpenMP parallel
      region cannot wait on the thread pool that the parent's earlier multi-threaded ops
      may have started and that the fork did not copy (GNU OpenMP deadlocks there). This
      is the rule PyTorch itself follows for forked ``DataLoader`` workers
      (``torch.set_num_threads(1)`` in each);
    * the config names no code of the user's (``import_paths``): their data or model
      code ran in this process during the check and may have started threads, CUDA or
      open handles that a fork would share;
    * this process runs no other Python thread (``run`` called from a thread, or beside
      the caller's own threads): one could hold a lock, e.g. of ``sys.stdout``, that the
      child would wait on forever;
    * Linux: on macOS system frameworks are not fork-safe (Python spawns there too).

    ``$MOTUNE_WORKER_START=spawn`` always gives ``"spawn"`` (fresh processes, the slower
    start-up, never shares anything).
    """
    if start_setting() == "spawn" or not sys.platform.startswith("linux"):
        return "spawn"
    cpu_only = all(d in ("cpu", "auto") for d in devices)  # worker_device keeps "auto" only where there is no GPU
    alone = threading.active_count() == 1
    return "fork" if cpu_only and threads == 1 and not runs_user_code and alone else "spawn"


class WorkerProcess(Protocol):
    """What :func:`run_local_workers` needs of a worker process (``subprocess.Popen`` has it)."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...
    def wait(self, timeout: float | None = None) -> int: ...
    def send_signal(self, sig: int) -> None: ...
    def kill(self) -> None: ...


class ForkedWorker:
    """A worker forked from this process, with the ``subprocess.Popen`` methods the supervisor uses.

    This process is its parent, so :meth:`poll` reaps it (no zombies) and its pid stays
    its own until then (a signal never reaches a recycled pid). ``returncode`` follows
    ``Popen``: the exit code, or ``-N`` when signal N ended it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere (SIGCHLD ignored): its exit status is lost
                self.returncode = 255
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"motune worker (pid {self.pid})", timeout or 0.0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


_BLOCKED = {signal.SIGINT, signal.SIGTERM}


def preload_for_workers() -> None:
    """Import here, once, what each worker would import on its first trial, so forked workers share it.

    ``torch._dynamo`` (``torch.optim`` imports it on the first optimizer) and
    optuna-dashboard (the dashboard callback; it imports scikit-learn) take about 2 s
    each on a 2-core machine: paid by every worker at once, they slowed the first trials
    several-fold, and with continuation a slow first trial holds up the trials that
    continue it. Neither starts a thread (fork stays safe, see :func:`start_method`).
    """
    import torch._dynamo  # noqa: F401

    from motune.dashboard import dashboard_available

    dashboard_available()  # imports optuna_dashboard where it is installed


def fork_worker(argv: Sequence[str], env: dict[str, str]) -> ForkedWorker:
    """Fork a child of this process that runs ``motune ARGV`` with environment ``env``, like a new process would.

    The child starts its own session (as ``start_new_session=True``: a Ctrl-C in the
    terminal reaches the parent only, which forwards it once), drops the parent's signal
    guard (a fresh process has none; ``motune.cli.main`` installs its own), takes ``env``
    as its whole environment, and ends with ``os._exit`` so that nothing of the parent
    (atexit handlers, open storages, pytest when run in-process) runs in it. It opens its
    own storage: the parent's connections are never used in the child. SIGINT and SIGTERM
    are blocked around the fork, so a signal sent between the fork and that reset waits
    for the child's own handlers instead of running the parent's copy.
    """
    from motune import faults

    sys.stdout.flush()  # or the child would write the parent's buffered output again
    sys.stderr.flush()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
    try:
        with warnings.catch_warnings():
            # Python 3.12+ warns about any native thread; those here are BLAS / OpenMP pools,
            # which the one-thread child never uses (start_method), and no Python thread runs.
            warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning)
            pid = os.fork()
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return ForkedWorker(pid)
    code = 1
    try:
        os.setsid()
        faults.reset_in_forked_child()
        os.environ.clear()
        os.environ.update(env)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        from motune.cli import main

        code = main(list(argv))
    except SystemExit as exc:
        code = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:  # a SIGINT before main() installed its handlers
        code = 130
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _dispose_connections(storage: optuna.storages.BaseStorage) -> None:
    """Close this process's pooled database connections before a fork, so no child shares one.

    SQLAlchemy's advice for forking: dispose the engine's pool in the parent; the parent
    reconnects when it next reads. Journal files are opened per call and redis-py resets
    its pool in a new pid, so only RDB storages (possibly wrapped) need this.
    """
    for _ in range(4):  # PatientStorage -> _CachedStorage -> RDBStorage
        if isinstance(storage, optuna.storages.RDBStorage):
            storage.engine.dispose()
            return
        storage = getattr(storage, "storage", None) or getattr(storage, "_backend", None)
        if storage is None:
            return


def run_local_workers(
    study: optuna.Study, url: str, n: int, target: int, worker_options: Sequence[str], quiet: bool, device: str = "auto",
    threads: int | None = None, runs_user_code: bool = False,
) -> int:
    """Start ``n`` ``motune worker`` processes on the study, print their trials, wait for them.

    ``worker_options`` are passed on to each worker (``--artifacts``, ``--threads``, …);
    worker ``i`` gets ``--device`` :func:`worker_device` of ``device`` (the config's or
    ``run --device``), so ``"auto"`` spreads them over this machine's GPUs. ``threads``
    (the workers' ``--threads``) and ``runs_user_code`` (the config names import paths)
    decide with the devices whether the workers are forked from this process or spawned
    fresh (:func:`start_method`). The storage URL reaches the workers through
    ``$MOTUNE_STORAGE`` (not their command lines, which ``ps`` shows). Each runs in its
    own session, so a Ctrl-C reaches this process only and is forwarded exactly once.
    Returns 0 when the study is done (or stopped by --timeout), 1 when the workers ended
    before that.
    """
    argv = ["worker", "--study", study.study_name, "--n-trials", str(target), *worker_options, "--quiet"]
    env = {**os.environ, STORAGE_ENV: url, PARENT_ENV: str(os.getpid())}
    shown = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    n_gpus = local_gpu_count() if device in ("auto", "cuda") else 0  # "cpu" never touches CUDA
    devices = [worker_device(device, i, n_gpus) for i in range(n)]
    method = start_method(devices, threads, runs_user_code)
    if method == "fork":
        _dispose_connections(study._storage)
        preload_for_workers()
    procs: list[WorkerProcess] = []
    try:
        with interruptible():
            for i in range(n):
                own = [*argv, "--worker-index", str(i), "--device", devices[i]]
                if method == "fork":
                    procs.append(fork_worker(own, env))
                else:
                    procs.append(subprocess.Popen([sys.executable, "-m", "motune.cli", *own], env=env,
                                                  start_new_session=True))
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
