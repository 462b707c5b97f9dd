"""Riding out storage outages: every storage call retried with bounded backoff.

A database restart, a dropped connection or a Redis failover makes a storage call fail
for a while and then work again. :class:`PatientStorage` wraps any Optuna storage and
retries each call that fails with a *transient* error (a connection-level error of the
database driver, Redis or the OS) with exponential backoff, for up to ``patience``
seconds counted from the start of the outage. Everything motune does with a storage
goes through it (heartbeats, ask / tell, attribute writes, artifact bookkeeping, the
liveness sweep), so a worker rides out an outage with one log line instead of a
traceback. Past ``patience`` it raises :class:`StorageUnavailable`, which the CLI turns
into exit code 1 and one line; the trial the worker held stays RUNNING in the storage
and is failed and queued again by whichever worker sees it next.

Two more things depend on knowing when the storage was away:

- :meth:`PatientStorage.reachable_clock` is a monotonic clock that stands still during
  outages. :class:`motune.faults.WorkerWatch` measures heartbeat silence with it, so a
  live worker is never declared dead because the *observer* could not read its beats.
- A signal (SIGINT / SIGTERM) never cuts a storage call in half: each call runs with
  signals deferred (:func:`motune.faults.deferred`), and a pending signal ends the
  retrying at once instead of waiting out the outage.

Errors that are not transient (a trial already finished, a missing study, bad values)
pass through at once.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import optuna
from optuna.storages import BaseStorage

from motune.faults import deferred, interrupt_pending
from motune.storage import mask_secrets

DEFAULT_PATIENCE = 120.0  # seconds a worker keeps retrying before it gives up (``--storage-patience``)
FIRST_BACKOFF = 0.2  # seconds before the first retry; doubled each time ...
MAX_BACKOFF = 2.0  # ... up to this, so a worker notices the storage is back within seconds

_log = logging.getLogger(__name__)


class StorageUnavailable(RuntimeError):
    """The storage stayed unreachable for longer than the patience (CLI: exit 1, one line)."""


def _transient_types() -> tuple[type[BaseException], ...]:
    """Connection-level error types of the drivers that are installed."""
    types: list[type[BaseException]] = [ConnectionError, TimeoutError]
    try:
        from sqlalchemy import exc as sa

        types += [sa.OperationalError, sa.InterfaceError, sa.DisconnectionError, sa.TimeoutError]
    except ImportError:  # pragma: no cover - SQLAlchemy comes with Optuna's RDB storage
        pass
    try:
        from redis import exceptions as rx

        types += [rx.ConnectionError, rx.TimeoutError, rx.BusyLoadingError]
    except ImportError:
        pass
    return tuple(types)


_TRANSIENT = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) is a connection-level error worth retrying.

    Optuna's RDB storage wraps driver errors in ``StorageInternalError``; the cause
    chain says whether the connection was the problem.
    """
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 8:
        if isinstance(current, _TRANSIENT):
            return True
        current = current.__cause__ or current.__context__
        seen += 1
    return False


def _describe(exc: BaseException) -> str:
    """The first line of the root cause, passwords masked: what the outage line shows."""
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip().splitlines()[0] if str(root).strip() else ""
    return mask_secrets(f"{type(root).__name__}: {text}" if text else type(root).__name__)


class PatientStorage(BaseStorage):
    """Any Optuna storage, with each call retried through outages of up to ``patience`` seconds.

    Example::

        import optuna
        from motune.patience import PatientStorage

        storage = PatientStorage(optuna.storages.RDBStorage("sqlite:///example.db"), patience=60)
        study = optuna.create_study(storage=storage, directions=["minimize", "minimize"])

    An outage starts with the first failing call and ends with the first call that
    succeeds; all threads share it, so a heartbeat thread and the main thread print one
    line between them. Attributes the wrapper does not define (``engine``, ``url``, …)
    are the wrapped storage's.
    """

    def __init__(self, storage: BaseStorage, patience: float = DEFAULT_PATIENCE) -> None:
        self.storage = storage
        self.patience = float(patience)
        self._lock = threading.Lock()
        self._outage_start: float | None = None  # monotonic time of the first failure of the current outage
        self._outage_total = 0.0  # seconds spent in finished outages

    def __getattr__(self, name: str) -> Any:
        if name == "storage":  # not set yet (unpickling): avoid recursion
            raise AttributeError(name)
        return getattr(self.storage, name)

    def __getstate__(self) -> dict[str, Any]:
        return {"storage": self.storage, "patience": self.patience}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["storage"], state["patience"])  # type: ignore[misc]

    # ------------------------------------------------------------------ outage bookkeeping

    def reachable_clock(self) -> float:
        """Monotonic seconds, not counting time in outages (finished or going on)."""
        with self._lock:
            now = time.monotonic()
            ongoing = now - self._outage_start if self._outage_start is not None else 0.0
            return now - self._outage_total - ongoing

    @property
    def in_outage(self) -> bool:
        """Whether the last call failed and none has succeeded since."""
        return self._outage_start is not None

    def _failed(self, exc: BaseException) -> float:
        """Record a failed call; return seconds since the outage began."""
        with self._lock:
            now = time.monotonic()
            if self._outage_start is None:
                self._outage_start = now
                _log.warning(
                    "motune: storage unreachable (%s); retrying for up to %g s", _describe(exc), self.patience
                )
            return now - self._outage_start

    def _succeeded(self) -> None:
        if self._outage_start is None:  # the common case: no lock, no clock
            return
        with self._lock:
            if self._outage_start is not None:
                lasted = time.monotonic() - self._outage_start
                self._outage_total += lasted
                self._outage_start = None
                _log.info("motune: storage reachable again after %.1f s", lasted)  # the outage's one line was the warning

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (a storage call), retrying transient failures."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                with deferred():  # a signal never cuts a storage call in half
                    result = fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                waited = self._failed(exc)
                if interrupt_pending():
                    raise StorageUnavailable(f"storage unreachable while stopping ({_describe(exc)})") from None
                if waited >= self.patience:
                    raise StorageUnavailable(
                        f"storage unreachable for {waited:.0f} s ({_describe(exc)}); gave up after "
                        f"--storage-patience {self.patience:g} s. The running trial is failed and queued again "
                        "by the next worker that sees it; run the same command again once the storage is back"
                    ) from None
                time.sleep(min(backoff, max(self.patience - waited, 0.0) + 0.01))
                backoff = min(backoff * 2, MAX_BACKOFF)
                continue
            self._succeeded()
            return result


def _patient_method(name: str) -> Callable[..., Any]:
    def method(self: PatientStorage, *args: Any, **kwargs: Any) -> Any:
        return self.call(getattr(self.storage, name), *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = getattr(BaseStorage, name).__doc__
    return method


# Every public storage method goes through ``call``: the abstract ones and the ones BaseStorage
# implements on top of them (the wrapped storage may have faster versions of those).
_METHODS = sorted({*BaseStorage.__abstractmethods__, "get_n_trials", "get_best_trial", "get_trial_id_from_study_id_trial_number",
                   "get_trial_number_from_id", "get_trial_param", "get_trial_params", "get_trial_user_attrs",
                   "get_trial_system_attrs", "check_trial_is_updatable"})
for _name in _METHODS:
    setattr(PatientStorage, _name, _patient_method(_name))
abc.update_abstractmethods(PatientStorage)


def patient(storage: BaseStorage | str, patience: float = DEFAULT_PATIENCE) -> PatientStorage:
    """``storage`` (a storage or a URL) wrapped in a :class:`PatientStorage` (an existing one gets ``patience``).

    RDB storages get Optuna's cache of finished trials first, as ``optuna.load_study`` would.
    """
    if isinstance(storage, PatientStorage):
        storage.patience = float(patience)
        return storage
    if isinstance(storage, str):
        from motune.storage import open_storage

        storage = open_storage(storage)
    return PatientStorage(optuna.storages.get_storage(storage), patience)
