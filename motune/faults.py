"""Surviving faults: signals, worker liveness, heartbeats and retries.

A trial whose worker dies is failed and queued again with the same ``λ``, fidelity and
kind (:class:`RetryTrial`) by the next worker that notices (:class:`WorkerWatch`): its
process is gone (same host), or its heartbeat stopped (a ``motune:heartbeat`` system
attribute rewritten every few seconds by :class:`TrialHeartbeat`; one mechanism for
every storage). SIGINT / SIGTERM (:func:`handle_signals`) stop the running trial at any
point as FAIL with ``fail_reason`` and queue it again, so running again resumes; only a
storage call in flight (:func:`deferred`) finishes first. Storage outages are ridden out
by :mod:`motune.patience`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

WORKER_ATTR = "motune:worker"  # system attr of a running trial: {"host": ..., "pid": ...}
HEARTBEAT_ATTR = "motune:heartbeat"  # system attr rewritten every heartbeat interval
HOST_ENV = "MOTUNE_HOST"  # overrides the host name recorded with running trials
DEFAULT_HEARTBEAT = 10  # seconds between heartbeats
DEFAULT_GRACE = 30  # seconds without a heartbeat before a trial's worker counts as dead
MAX_RETRY = 3  # a trial whose worker died is run again at most this many times

_log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- interrupts


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (a ``KeyboardInterrupt``, so Optuna fails the running trial).

    ``exit_code`` is the shell convention ``128 + signal number`` (130 for SIGINT, 143 for
    SIGTERM); ``note`` says what happened to the running trial.
    """

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        self.signame = signal.Signals(signum).name
        self.note = ""
        super().__init__(f"interrupted by {self.signame}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """Turns SIGINT / SIGTERM into :class:`Interrupted`, raised only where stopping is safe.

    Inside :func:`interruptible` blocks (training, waiting for other workers) it is raised
    at once. Elsewhere (storage writes, checkpoint uploads, Optuna's ``tell``) the signal is
    remembered and raised at the next :func:`check_interrupt` or interruptible block, so
    no write is cut in half. Further signals are ignored: the first already stops the run.
    """

    def __init__(self) -> None:
        self.pending: int | None = None
        self.armed = False

    def handle(self, signum: int, _frame: Any) -> None:
        if self.pending is not None:
            return
        self.pending = signum
        if self.armed:
            self.armed = False
            raise Interrupted(signum)

    def check(self) -> None:
        if self.pending is not None:
            raise Interrupted(self.pending)


_GUARD: SignalGuard | None = None


@contextlib.contextmanager
def handle_signals() -> Iterator[SignalGuard | None]:
    """Install the :class:`SignalGuard` for SIGINT and SIGTERM for the duration of the block.

    Only the main thread can own signal handlers; elsewhere this does nothing (and Python's
    default ``KeyboardInterrupt`` still fails the running trial cleanly).
    """
    global _GUARD
    if threading.current_thread() is not threading.main_thread() or _GUARD is not None:
        yield _GUARD
        return
    guard = SignalGuard()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _GUARD = guard
    try:
        for sig in previous:
            signal.signal(sig, guard.handle)
        yield guard
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _GUARD = None


def reset_in_forked_child() -> None:
    """In a process forked inside :func:`handle_signals`: start with no guard and the signal
    handlers of a fresh Python process (the parent's guard, and any signal it holds, are the
    parent's). Then ``handle_signals`` installs the child's own."""
    global _GUARD
    _GUARD = None
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """A block that a signal may cut short at any point (training, sleeping)."""
    guard = _GUARD
    if guard is None:
        yield
        return
    was = guard.armed
    guard.armed = True
    try:
        guard.check()  # a signal that came just before arming
        yield
    finally:
        guard.armed = was


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """A block a signal must not cut in half (a storage call): a signal is held until it ends.

    Only the main thread receives signals, so elsewhere (heartbeat threads) this does
    nothing. When the block ends inside an :func:`interruptible` one, a signal that came
    meanwhile is raised there.
    """
    guard = _GUARD
    if guard is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    was = guard.armed
    guard.armed = False
    try:
        yield
    finally:
        guard.armed = was
    if was:
        guard.check()


def interrupt_pending() -> bool:
    """Whether SIGINT / SIGTERM arrived and the run is stopping (storage retries then give up)."""
    return _GUARD is not None and _GUARD.pending is not None


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a signal arrived outside an interruptible block."""
    if _GUARD is not None:
        _GUARD.check()


def interrupt_reason(exc: BaseException) -> str:
    return f"interrupted by {exc.signame}" if isinstance(exc, Interrupted) else "interrupted (KeyboardInterrupt)"


# ----------------------------------------------------------------------------- worker liveness


def host_name() -> str:
    """This machine's name as recorded with running trials (``$MOTUNE_HOST`` overrides it)."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


def _pid_space() -> str | None:
    """This boot's id and this process's PID namespace (Linux), or None.

    Two containers may share a host name; their process ids only mean the same thing
    when this matches too.
    """
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        return f"{boot}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def worker_identity() -> dict[str, Any]:
    """``{"host", "pid", "pid_space"}`` of this process: who is running a trial."""
    return {"host": host_name(), "pid": os.getpid(), "pid_space": _pid_space()}


def _same_pid_space(worker: dict[str, Any]) -> bool:
    """Whether ``worker``'s pid can be checked here: same host name and, where known, same PID namespace."""
    if worker.get("host") != host_name() or not isinstance(worker.get("pid"), int):
        return False
    theirs, ours = worker.get("pid_space"), _pid_space()
    return theirs is None or ours is None or theirs == ours


def worker_seed(seed: int, index: int) -> int:
    """An independent random stream per worker: ``SeedSequence([seed, index])``."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index)]).generate_state(1)[0])


def default_worker_index() -> int:
    """A worker index for a worker that was given none: derived from host and pid."""
    return zlib.crc32(f"{host_name()}:{os.getpid()}".encode())


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (killed, not yet reaped by its parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except (OverflowError, ValueError):
        return False
    try:  # Linux: the state is the field after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class TrialHeartbeat:
    """Marks a running trial as alive: who runs it, and a value rewritten every ``interval`` s.

    On entry the trial gets system attributes ``motune:worker`` (host, pid) and
    ``motune:heartbeat``; a daemon thread rewrites the heartbeat until exit. Works on
    every storage (Optuna's own heartbeat only exists for RDB). ``interval=None``
    records the worker only.
    """

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval: float | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        self.storage.set_trial_system_attr(self.trial_id, HEARTBEAT_ATTR, time.time())

    def _run(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                self._beat()  # a PatientStorage retries through outages here
            except UpdateFinishedTrialError:  # failed elsewhere: the worker finds out when it records the result
                return
            except Exception:  # the storage stayed away past its patience: the main thread reports that
                return

    def __enter__(self) -> TrialHeartbeat:
        self.storage.set_trial_system_attr(self.trial_id, WORKER_ATTR, worker_identity())
        if self.interval:
            self._beat()
            self._thread = threading.Thread(target=self._run, name=f"motune-heartbeat-{self.trial_id}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class RetryTrial:
    """Queue a failed trial again: same params, fidelity, kind (Optuna's retry callback, made for motune).

    Like :class:`optuna.storages.RetryHeartbeatStaleTrialCallback` (usable as an RDB
    storage's ``heartbeat_stale_trial_callback``): the new WAITING trial gets the failed
    one's params, distributions, user and system attributes (so ``kind``, the sampler's
    planned ``knee:l1_weight`` and ``knee:fidelity`` survive) plus ``failed_trial`` and
    ``retry_history``. Unlike it, motune's own bookkeeping (``fail_reason``, ``failure``,
    the worker and heartbeat attributes) is not copied, and ``limited=False`` requeues
    without counting against ``max_retry`` (an interrupt is not the trial's fault).
    """

    _DROP_USER = ("fail_reason", "failure")
    _DROP_SYSTEM = (WORKER_ATTR, HEARTBEAT_ATTR)

    def __init__(self, max_retry: int | None = MAX_RETRY) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial, *, limited: bool = True) -> bool:
        system = {k: v for k, v in trial.system_attrs.items() if k not in self._DROP_SYSTEM}
        history = [*system.get("retry_history", []), trial.number]
        if limited and self.max_retry is not None and len(history) > self.max_retry:
            _log.warning("trial %d failed %d times; not retried again", trial.number, len(history))
            return False
        system.update(failed_trial=system.get("failed_trial", trial.number), retry_history=history)
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=trial.params,
                distributions=trial.distributions,
                user_attrs={k: v for k, v in trial.user_attrs.items() if k not in self._DROP_USER},
                system_attrs=system,
            )
        )
        return True


def fail_and_retry(study: optuna.Study, trial: FrozenTrial, reason: str, failure: str, *, limited: bool = True) -> bool:
    """Mark a RUNNING trial FAIL with ``reason`` and queue it again; False if it finished meanwhile.

    Of several workers doing this at once, only the one whose FAIL lands first requeues
    (the storages refuse to update a finished trial).
    """
    storage, tid = study._storage, trial._trial_id
    try:
        storage.set_trial_user_attr(tid, "fail_reason", reason)
        storage.set_trial_user_attr(tid, "failure", failure)
        storage.set_trial_state_values(tid, TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False
    RetryTrial()(study, storage.get_trial(tid), limited=limited)
    return True


class WorkerWatch:
    """Finds RUNNING trials whose worker is gone, fails them and queues them again.

    A trial's worker is gone when

    (a) it ran on this host (same host name and PID namespace) and its process no longer
        exists, or is this very process (an orphan of an interrupted run). A live process
        on this host is never declared dead, whatever its heartbeat says;
    (b) otherwise, with heartbeats on (``grace`` given), its ``motune:heartbeat`` value
        (or, for a trial no worker has claimed, its absence) has not changed for ``grace``
        seconds of *this observer's* reachable time: wall clocks of different machines are
        never compared, and time in which the observer could not reach the storage (a
        :class:`motune.patience.PatientStorage` outage) does not count, since the worker's
        beats could not get through either.

    Call :meth:`sweep` before each trial and while waiting.
    """

    def __init__(self, grace: float | None = DEFAULT_GRACE) -> None:
        self.grace = grace
        self._seen: dict[int, tuple[Any, float]] = {}

    def sweep(self, study: optuna.Study) -> list[int]:
        """Recover dead workers' trials; return their numbers."""
        storage = study._storage
        clock = getattr(storage, "reachable_clock", time.monotonic)
        trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        now, me = clock(), os.getpid()  # read after the storage answered: an outage just ended is not counted
        recovered, running = [], set()
        for t in trials:
            running.add(t._trial_id)
            worker = t.system_attrs.get(WORKER_ATTR) or {}
            who = f"{worker.get('host', '?')}:{worker.get('pid', '?')}"
            reason = None
            if _same_pid_space(worker):
                if worker["pid"] == me or not _pid_alive(worker["pid"]):
                    reason = f"worker {who} is gone"
            elif self.grace is not None and (HEARTBEAT_ATTR in t.system_attrs or not worker):
                # A worker that runs without heartbeats (--heartbeat 0) records itself but no heartbeat:
                # only the process check above applies to it.
                beat = t.system_attrs.get(HEARTBEAT_ATTR)
                seen = self._seen.get(t._trial_id)
                if seen is None or seen[0] != beat:
                    self._seen[t._trial_id] = (beat, now)
                elif now - seen[1] > self.grace:
                    reason = f"worker {who} sent no heartbeat for {self.grace:g} s"
            if reason is not None and fail_and_retry(study, t, reason, "worker_lost"):
                _log.warning("trial %d: %s; failed it and queued it again", t.number, reason)
                recovered.append(t.number)
        self._seen = {k: v for k, v in self._seen.items() if k in running}
        return recovered


def requeue_interrupted(study: optuna.Study, trial_id: int | None, reason: str) -> str:
    """After SIGINT / SIGTERM: this worker's running trial is FAIL with ``reason`` and queued again.

    Returns a note for the user ("" when there was nothing to do). When the storage cannot
    be reached while stopping, the trial stays RUNNING and the next worker that sees it
    does the same (its process is gone).
    """
    if trial_id is None:
        return ""
    try:
        trial = study._storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING or not fail_and_retry(study, trial, reason, "interrupted", limited=False):
            return ""
    except Exception:  # the storage is away (motune.patience gives up at once while stopping)
        return f"trial {trial_id} could not be marked FAIL (storage unreachable); the next worker that sees it queues it again"
    return f"trial {trial.number} marked FAIL and queued to run again"

