"""A study config becomes an Optuna multi-objective study: storages, the trial objective, the runner.

Each trial trains one network with :func:`motune.train` and returns
``(cross_entropy, l1)``; weighted-sum trials take ``λ`` from
``trial.suggest_float("l1_weight", 0, 1)`` (chosen by :class:`~motune.sampler.KneeSampler`),
baseline trials (SMGD, multi-Adam, multi-RMSprop) are enqueued with a ``kind`` user
attribute and take no ``λ``. Every trial's pruned weights are kept as an Optuna artifact
(so optuna-dashboard can offer them), its metrics as user attributes.

Storages (DESIGN.md §7): any Optuna RDB URL (``sqlite:///…``, ``postgresql://…``,
``mysql+pymysql://…``), ``redis://…`` (journal on Redis), or a journal file given as
``journal:PATH`` or a path ending in ``.journal``/``.log``. Default: ``sqlite:///NAME.db``.

Scale out and faults (DESIGN.md §7). Any number of processes, on any machines, run
:func:`run_study` on one storage; the sampler coordinates through the storage alone.
:func:`run_study` counts COMPLETE trials of the whole study and starts a trial only while
``completed + running < n_trials``, so a study asked for N completed trials ends with N,
whoever trained them. A trial whose worker dies is failed and queued again with the same
``λ``, fidelity and kind (:class:`RetryTrial`) by the next worker that notices
(:class:`WorkerWatch`): its process is gone (same host), its heartbeat stopped (a
``motune:heartbeat`` system attribute every few seconds, any storage), or Optuna's RDB
heartbeat went stale. SIGINT / SIGTERM (:func:`handle_signals`) stop the running trial
as FAIL with ``fail_reason`` and queue it again, so running again resumes the budget.

Every FAIL trial motune makes carries user attributes ``fail_reason`` (for people) and
``failure`` (``diverged``, ``interrupted``, ``worker_lost``, ``not_run``).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import socket
import tempfile
import threading
import time
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import FrozenTrial, TrialState

from motune.checkpoint import save_checkpoint
from motune.config import StudyConfig
from motune.data import Dataset, load_dataset
from motune.sampler import KneeSampler
from motune.train import DivergenceError, EpochRecord, TrainResult, train

METRIC_NAMES = ["cross_entropy", "l1"]
CONFIG_ATTR = "motune:config"
PARAM = "l1_weight"

WORKER_ATTR = "motune:worker"  # system attr of a running trial: {"host": ..., "pid": ...}
HEARTBEAT_ATTR = "motune:heartbeat"  # system attr rewritten every heartbeat interval
HOST_ENV = "MOTUNE_HOST"  # overrides the host name recorded with running trials
DEFAULT_HEARTBEAT = 10  # seconds between heartbeats
DEFAULT_GRACE = 30  # seconds without a heartbeat before a trial's worker counts as dead
MAX_RETRY = 3  # a trial whose worker died is run again at most this many times

_log = logging.getLogger(__name__)


class StudyError(ValueError):
    """A study cannot be created, opened or resumed as asked (bad storage, config mismatch…)."""


# ----------------------------------------------------------------------------- storages


def default_storage_url(study_name: str, directory: str | os.PathLike[str] = ".") -> str:
    """``sqlite:///<directory>/<study_name>.db``: one SQLite file per study, what optuna-dashboard opens."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    return f"sqlite:///{Path(directory, safe + '.db').as_posix()}"


def default_journal_url(study_name: str, directory: str | os.PathLike[str] = ".") -> str:
    """``journal:<directory>/<study_name>.journal``: the default for several local worker processes."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in study_name)
    return f"journal:{Path(directory, safe + '.journal').as_posix()}"


def is_journal_file(url: str) -> bool:
    """Whether ``url`` names a journal file (``journal:PATH`` or a ``.journal``/``.log`` path)."""
    return url.startswith("journal:") or ("://" not in url and url.endswith((".journal", ".log")))


def mask_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return mask_secrets(url)
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


_SECRET = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]+)@")


def mask_secrets(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` URL in it replaced by ``***``.

    Driver error messages may quote the URL they failed on; everything motune prints about
    a storage goes through this.
    """
    return _SECRET.sub(lambda m: f"{m['head']}***@", text)


CONNECT_TIMEOUT = 10  # seconds: an unreachable database server is an error, not a hang


def _redis_backend(url: str) -> optuna.storages.journal.JournalRedisBackend:
    """Journal on Redis; ``?prefix=NAME`` in the URL keeps the journal's keys apart from others'."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    prefix = query.pop("prefix", "")
    query.setdefault("socket_connect_timeout", str(CONNECT_TIMEOUT))
    clean = urlunsplit(parts._replace(query=urlencode(query)))
    return optuna.storages.journal.JournalRedisBackend(clean, prefix=prefix)


_DRIVERS = {  # scheme -> (module, SQLAlchemy driver name), preferred first
    "postgresql": (("psycopg", "psycopg"), ("psycopg2", "psycopg2")),
    "mysql": (("MySQLdb", "mysqldb"), ("pymysql", "pymysql")),
}


def with_installed_driver(url: str) -> str:
    """``postgresql://`` / ``mysql://`` URLs with the driver that is installed (SQLAlchemy's default may not be).

    SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3 and ``mysql://`` as mysqlclient;
    motune's extras install psycopg2 and PyMySQL. A URL naming its driver is left alone;
    ``postgres://`` (Heroku style) is read as ``postgresql://``.
    """
    import importlib.util

    scheme, sep, rest = url.partition("://")
    if not sep or "+" in scheme:
        return url
    scheme = "postgresql" if scheme == "postgres" else scheme
    for module, driver in _DRIVERS.get(scheme, ()):
        if importlib.util.find_spec(module) is not None:
            return f"{scheme}+{driver}://{rest}"
    return f"{scheme}://{rest}"


def open_storage(
    url: str, *, heartbeat_interval: int | None = None, grace_period: int | None = None
) -> optuna.storages.BaseStorage:
    """Open any storage motune supports; raise :class:`StudyError` with the URL (masked) when it fails.

    RDB storages get Optuna's heartbeat when ``heartbeat_interval`` is given, with
    :class:`RetryTrial` as the stale-trial callback so a dead worker's trial is retried
    with the same weight, fidelity and kind. Journal storages (file, Redis) have no
    heartbeat in Optuna; motune's own (:class:`TrialHeartbeat`, :class:`WorkerWatch`)
    covers every storage. Database servers get a connect timeout of ``CONNECT_TIMEOUT``.
    """
    shown = mask_url(url)
    try:
        if is_journal_file(url):
            path = url.removeprefix("journal:")
            if not path:
                raise StudyError(f"storage {shown!r}: journal:PATH needs a file name")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
        if url.startswith(("redis://", "rediss://", "unix://")):
            return optuna.storages.JournalStorage(_redis_backend(url))
        if "://" not in url:
            raise StudyError(
                f"storage {shown!r}: not a storage URL; use sqlite:///FILE.db, postgresql://…, "
                "mysql+pymysql://…, redis://HOST:PORT, or journal:FILE"
            )
        kwargs: dict[str, Any] = {}
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        elif url.startswith(("postgresql", "postgres", "mysql")):
            url = with_installed_driver(url)
            kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
        if heartbeat_interval is not None:
            kwargs.update(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=RetryTrial(),
            )
        with warnings.catch_warnings():  # heartbeat_interval is "experimental" since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, **kwargs)
    except StudyError:
        raise
    except Exception as exc:  # drivers raise many types; the message is what matters
        detail = mask_secrets(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        raise StudyError(f"storage {shown!r}: cannot open ({type(exc).__name__}: {detail})") from None


def default_artifact_dir(url: str, study_name: str) -> Path:
    """Where checkpoints go unless ``--artifacts`` says otherwise: beside a file storage, else ``./artifacts/NAME``."""
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        return db.with_name(db.stem + "-artifacts")
    if is_journal_file(url):
        path = Path(url.removeprefix("journal:"))
        return path.with_name(path.stem + "-artifacts")
    return Path("artifacts", study_name)


# ----------------------------------------------------------------------------- study


def make_sampler(config: StudyConfig, seed: int | None = None) -> KneeSampler:
    """The study's :class:`KneeSampler` from the ``[study]`` table."""
    s = config.study
    return KneeSampler(start_weights=s.start_weights, knee=s.knee, full_fidelity=s.full_fidelity, seed=seed)


def create_or_load_study(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage | str,
    study_name: str | None = None,
    *,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study (directions, metric names, config, baseline trials) or resume it.

    Resuming checks that the stored config equals ``config``: a study's trials are only
    comparable under one config, so a mismatch is a :class:`StudyError` and nothing is
    written. The config is stored last, as the mark of a finished setup, so a setup cut
    short (Ctrl-C, a crash) is completed on the next run rather than left half-made.
    """
    name = study_name or config.study.name
    sampler = sampler or make_sampler(config)
    try:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
    except KeyError:
        study = optuna.create_study(
            study_name=name, storage=storage, sampler=sampler, directions=["minimize", "minimize"], load_if_exists=True
        )
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is not None:
        if StudyConfig.from_dict(stored) != config:
            raise StudyError(
                f"study {name!r} exists in this storage with a different config; "
                "resume it with the config it was created with, or pass --study NEWNAME"
            )
        return study
    trials = study.get_trials(deepcopy=False)
    queued = [t for t in trials if t.state == TrialState.WAITING and "kind" in t.user_attrs]
    if len(study.directions) != 2 or len(queued) != len(trials):
        raise StudyError(f"study {name!r} exists in this storage and was not created by motune; pass --study NEWNAME")
    have = [trial_kind(t) for t in queued]
    for kind in config.study.baselines:
        if kind in have:
            have.remove(kind)
        else:
            study.enqueue_trial({}, user_attrs={"kind": kind}, skip_if_exists=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(METRIC_NAMES)
    study.set_user_attr(CONFIG_ATTR, config.to_dict())
    return study


def load_existing_study(
    storage: optuna.storages.BaseStorage | str, study_name: str, *, sampler: optuna.samplers.BaseSampler | None = None
) -> optuna.Study:
    """Open a study motune created, never creating one (what a joining worker does)."""
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=sampler)
    except KeyError:
        raise StudyError(f"study {study_name!r} not found in this storage; create it first with `motune create CONFIG`") from None
    load_study_config(study)  # raises StudyError if motune did not set it up
    return study


def load_study_config(study: optuna.Study) -> StudyConfig:
    """The config a study was created with (stored as a user attribute)."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        raise StudyError(f"study {study.study_name!r} was not created by motune (no stored config)")
    return StudyConfig.from_dict(stored)


def trial_kind(trial: optuna.trial.BaseTrial) -> str:
    """``weighted_sum`` unless the trial was enqueued as a baseline."""
    return str(trial.user_attrs.get("kind", "weighted_sum"))


_DATA_CACHE: dict[tuple[Any, ...], Dataset] = {}


def cached_dataset(config: StudyConfig) -> Dataset:
    """Load the study's data once per process (trials share it)."""
    d = config.data
    key = (d.dataset, d.data_dir, d.image_size, d.limit)
    if key not in _DATA_CACHE:
        _DATA_CACHE[key] = load_dataset(d.dataset, d.data_dir, image_size=d.image_size, limit=d.limit)
    return _DATA_CACHE[key]


def result_attrs(result: TrainResult, kind: str, fidelity: str) -> dict[str, Any]:
    """The user attributes every completed trial carries (the export/plot schema)."""
    return {
        "kind": kind,
        "fidelity": fidelity,
        "val_accuracy": result.val_accuracy,
        "test_accuracy": result.test_accuracy,
        "nonzeros": result.nonzeros,
        "penalised_size": result.penalised_size,
        "fraction_kept": result.fraction_kept,
        "nonzeros_per_layer": result.nonzeros_per_layer,
        "epochs": result.epochs,
        "seconds": round(result.seconds, 3),
        "seed": result.config.seed,
        "alpha_mean": result.alpha_mean,
        "history": [
            {
                "epoch": r.epoch,
                "nonzeros": r.nonzeros,
                "nonzeros_per_layer": r.nonzeros_per_layer,
                "l1": r.l1,
                "val_accuracy": r.val_accuracy,
                "val_cross_entropy": r.val_cross_entropy,
                "alpha_mean": r.alpha_mean,
            }
            for r in result.history
        ],
    }


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


def check_interrupt() -> None:
    """Raise :class:`Interrupted` if a signal arrived outside an interruptible block."""
    if _GUARD is not None:
        _GUARD.check()


def _interrupt_reason(exc: BaseException) -> str:
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
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except (OverflowError, ValueError):
        return False
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
                self._beat()
            except Exception:  # the trial was finished elsewhere, or the storage is gone: stop quietly
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

    A trial's worker is gone when (a) it ran on this host (same host name and PID
    namespace) and its process no longer exists, or is this very process (an orphan of
    an interrupted ``ask``); (b) with heartbeats on (``grace`` given), its
    ``motune:heartbeat`` value (or, for a trial no worker has claimed, its absence) has
    not changed for ``grace`` seconds as seen by this process: wall clocks of different
    machines are never compared; or (c) on RDB storage, Optuna's heartbeat is older than
    the storage's grace period. Call :meth:`sweep` before each trial and while waiting.
    """

    def __init__(self, grace: float | None = DEFAULT_GRACE) -> None:
        self.grace = grace
        self._seen: dict[int, tuple[Any, float]] = {}

    def sweep(self, study: optuna.Study) -> list[int]:
        """Recover dead workers' trials; return their numbers."""
        storage = study._storage
        stale_rdb: set[int] = set()
        if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
            stale_rdb = set(storage._get_stale_trial_ids(study._study_id))
        now, me = time.monotonic(), os.getpid()
        recovered, running = [], set()
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            running.add(t._trial_id)
            worker = t.system_attrs.get(WORKER_ATTR) or {}
            who = f"{worker.get('host', '?')}:{worker.get('pid', '?')}"
            reason = None
            if _same_pid_space(worker) and (worker["pid"] == me or not _pid_alive(worker["pid"])):
                reason = f"worker {who} is gone"
            elif t._trial_id in stale_rdb:
                reason = f"worker {who} stopped its heartbeat (Optuna RDB heartbeat)"
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


# ----------------------------------------------------------------------------- objective


EpochHook = Callable[[optuna.Trial, EpochRecord, int], None]


@dataclass
class Objective:
    """The trial objective: train one network, keep its checkpoint, return ``(f1, f2)``.

    Picklable (a plain dataclass) so worker processes can receive it. While a trial runs
    it is marked alive (:class:`TrialHeartbeat`, every ``heartbeat_interval`` seconds;
    ``None``: the worker is recorded, no heartbeat). A diverging trial (NaN/inf loss) and
    an interrupted one end as FAIL with ``fail_reason``; only training can be
    interrupted, so a checkpoint is either stored whole or not at all.
    """

    config: StudyConfig
    artifact_dir: str
    on_epoch: EpochHook | None = None
    on_start: Callable[[optuna.Trial, str, float | None, int], None] | None = None
    heartbeat_interval: float | None = DEFAULT_HEARTBEAT

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        with TrialHeartbeat(trial.storage, trial._trial_id, self.heartbeat_interval):
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> tuple[float, float]:
        kind = trial_kind(trial)
        fidelity = KneeSampler.fidelity(trial) if kind == "weighted_sum" else "full"
        lam = trial.suggest_float(PARAM, 0.0, 1.0) if kind == "weighted_sum" else None
        seed = self.config.study.seed + trial.number
        cfg = self.config.train_config(kind, l1_weight=lam or 0.0, full=fidelity == "full", seed=seed)
        if self.on_start is not None:
            self.on_start(trial, kind, lam, cfg.epochs)
        hook = (lambda record: self.on_epoch(trial, record, cfg.epochs)) if self.on_epoch else None
        try:
            with interruptible():
                result = train(cfg, data=cached_dataset(self.config), callback=hook)
        except DivergenceError as exc:
            trial.set_user_attr("kind", kind)
            trial.set_user_attr("fail_reason", str(exc))
            trial.set_user_attr("failure", "diverged")
            raise
        except KeyboardInterrupt as exc:
            trial.set_user_attr("fail_reason", _interrupt_reason(exc))
            trial.set_user_attr("failure", "interrupted")
            raise
        for key, value in result_attrs(result, kind, fidelity).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("checkpoint", self._store_checkpoint(trial, result, kind, lam))
        return result.cross_entropy, result.l1

    def _store_checkpoint(self, trial: optuna.Trial, result: TrainResult, kind: str, lam: float | None) -> str:
        store = FileSystemArtifactStore(self.artifact_dir)
        Path(self.artifact_dir).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="motune-ckpt-") as tmp:
            path = save_checkpoint(
                Path(tmp, f"trial-{trial.number:04d}.pt"),
                model=result.config.model,
                input_shape=result.input_shape,
                num_classes=result.num_classes,
                state_dict=result.state_dict,
                metadata={"trial": trial.number, "kind": kind, "l1_weight": lam, "val_accuracy": result.val_accuracy},
            )
            return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=trial)


# ----------------------------------------------------------------------------- queries


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """COMPLETE trials with two finite values."""
    return [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.values is not None and len(t.values) == 2 and all(math.isfinite(v) for v in t.values)
    ]


def knee_trial(study: optuna.Study, config: StudyConfig | None = None) -> FrozenTrial | None:
    """The knee of the weighted-sum front (the full-fidelity retrain when there is one)."""
    config = config or load_study_config(study)
    return make_sampler(config).knee_trial(study)


def hypervolume_normalised(trials: Sequence[FrozenTrial], bounds: tuple[Sequence[float], Sequence[float]] | None = None) -> float:
    """Hypervolume of ``trials``' values in objectives normalised to [0, 1] by ideal/nadir, reference (1.1, 1.1)."""
    from motune.pareto import hypervolume, normalise

    if not trials:
        return 0.0
    points = np.array([t.values for t in trials], dtype=float)
    ideal, nadir = (points.min(axis=0), points.max(axis=0)) if bounds is None else (np.asarray(bounds[0]), np.asarray(bounds[1]))
    return float(hypervolume(normalise(points, ideal, nadir), np.array([1.1, 1.1])))


@dataclass
class StudySummary:
    """What ``motune status`` and the end of ``motune run`` print."""

    study_name: str
    states: dict[str, int]
    front_size: int
    knee: FrozenTrial | None
    hypervolume: float
    converged: bool
    pareto: list[FrozenTrial] = field(default_factory=list)


def summarize(study: optuna.Study, config: StudyConfig | None = None) -> StudySummary:
    """Trials by state, the Pareto set, the knee, and the hypervolume of the front."""
    from motune.pareto import nondominated_mask

    config = config or load_study_config(study)
    trials = study.get_trials(deepcopy=False)
    states = {state.name: 0 for state in TrialState}
    for t in trials:
        states[t.state.name] += 1
    done = completed(study)
    pareto: list[FrozenTrial] = []
    if done:
        mask = nondominated_mask(np.array([t.values for t in done], dtype=float))
        pareto = sorted((t for t, keep in zip(done, mask) if keep), key=lambda t: t.values[0])
    return StudySummary(
        study_name=study.study_name,
        states={k: v for k, v in states.items() if v},
        front_size=len(pareto),
        knee=knee_trial(study, config),
        hypervolume=hypervolume_normalised(done),
        converged=make_sampler(config).is_converged(study),
        pareto=pareto,
    )


class BudgetReached(Exception):
    """A trial was started after other workers had already filled the study's budget."""


def _queued(trial: FrozenTrial) -> bool:
    """Whether a trial came from the queue (a baseline or a retry), not from the sampler alone."""
    return "kind" in trial.user_attrs or "retry_history" in trial.system_attrs or "fixed_params" in trial.system_attrs


@dataclass
class _Budgeted:
    """Wraps the objective: refuses to train past the budget, remembers the running trial."""

    objective: Callable[[optuna.Trial], Any]
    study: optuna.Study
    target: int
    done: Callable[[], bool]
    trial_id: int | None = None

    def __call__(self, trial: optuna.Trial) -> Any:
        self.trial_id = trial._trial_id
        # Trials started before this one by other workers count: with them the budget may be full.
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number < trial.number]
        if len(completed(self.study)) + len(ahead) >= self.target or self.done():
            frozen = self.study._storage.get_trial(trial._trial_id)
            if _queued(frozen):  # a baseline or retry popped from the queue: put it back
                RetryTrial()(self.study, frozen, limited=False)
            trial.set_user_attr("fail_reason", f"not run: other workers reached the budget of {self.target} completed trials")
            trial.set_user_attr("failure", "not_run")
            raise BudgetReached()
        return self.objective(trial)


def _requeue_interrupted(study: optuna.Study, trial_id: int | None) -> str:
    """After an interrupt: the running trial is FAIL (with its reason) and queued again."""
    if trial_id is None:
        return ""
    trial = study._storage.get_trial(trial_id)
    if trial.state == TrialState.RUNNING:  # interrupted outside the objective (e.g. during tell)
        fail_and_retry(study, trial, "interrupted", "interrupted", limited=False)
    elif trial.state == TrialState.FAIL and trial.user_attrs.get("failure") not in ("diverged", "not_run"):
        RetryTrial()(study, trial, limited=False)
    else:
        return ""
    return f"trial {trial.number} marked FAIL and queued to run again"


def run_study(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage | str,
    *,
    study_name: str | None = None,
    n_trials: int | None = None,
    timeout: float | None = None,
    artifact_dir: str | os.PathLike[str] | None = None,
    objective: Objective | None = None,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    seed: int | None = None,
    join: bool = False,
    grace_period: float | None = DEFAULT_GRACE,
    poll_interval: float = 0.5,
) -> optuna.Study:
    """Run (or resume, or join) a study until it has ``n_trials`` completed trials, converges, or times out.

    ``n_trials`` counts COMPLETE trials of the whole study, not of this call, so running
    again after an interruption finishes the same budget, and any number of processes
    can run this on one storage: a trial is started only while ``completed + running <
    n_trials``; otherwise the process waits for the others (and takes over a trial
    whose worker died, see :class:`WorkerWatch` with ``grace_period``). Diverging trials
    end as FAIL with their reason and the study goes on. ``join=True`` opens an existing
    study and never creates one (``config`` is then the stored config, possibly with a
    local ``data_dir``). ``seed`` seeds the sampler's own random stream: give each
    worker a different one (:func:`worker_seed`). On SIGINT / SIGTERM (see
    :func:`handle_signals`) the running trial ends as FAIL, is queued again, and
    :class:`Interrupted` propagates.
    """
    sampler = make_sampler(config, seed=seed)
    if join:
        study = load_existing_study(storage, study_name or config.study.name, sampler=sampler)
    else:
        study = create_or_load_study(config, storage, study_name, sampler=sampler)
    target = n_trials or config.study.n_trials
    url_dir = artifact_dir or default_artifact_dir(storage if isinstance(storage, str) else "", study.study_name)
    objective = objective or Objective(config, str(url_dir))
    timeout = timeout if timeout is not None else config.study.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    watch = WorkerWatch(grace_period)

    def diverged() -> int:
        fails = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        return sum(1 for t in fails if t.user_attrs.get("failure") == "diverged")

    def done() -> bool:
        # The budget, convergence, or trials that keep diverging (a broken setup).
        return len(completed(study)) >= target or sampler.is_converged(study) or diverged() >= max(5, target)

    budgeted = _Budgeted(objective, study, target, done)
    while True:
        check_interrupt()
        watch.sweep(study)
        if done() or (deadline is not None and time.monotonic() >= deadline):
            break
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if len(completed(study)) + running >= target:
            with interruptible():  # the rest of the budget is in other workers' hands: wait
                time.sleep(poll_interval)
            continue
        budgeted.trial_id = None
        try:
            study.optimize(
                budgeted, n_trials=1, callbacks=list(callbacks), catch=(DivergenceError, BudgetReached), gc_after_trial=False
            )
        except KeyboardInterrupt as exc:
            note = _requeue_interrupted(study, budgeted.trial_id)
            if isinstance(exc, Interrupted):
                exc.note = note
            raise
        except UpdateFinishedTrialError:
            # Another worker took this one for dead (no heartbeat for the grace period) and
            # queued it again; the result is dropped, the retry runs.
            _log.warning("trial was failed by another worker (missed heartbeats); its retry will run")
        if budgeted.trial_id is not None and study._storage.get_trial(budgeted.trial_id).user_attrs.get("failure") == "not_run":
            with interruptible():
                time.sleep(poll_interval)
    return study
