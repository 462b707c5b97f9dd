"""A lock that workers on several machines share through the study's database server.

KneeSampler's workers plan one trial at a time (:class:`motune.sampler.KneeSampler`,
``planning_lock``), so that workers woken by the same result do not all plan the same
weight. Workers on one machine lock a file (:class:`motune.filelock.FileLock`); workers on
several machines share only the database, so this lock lives on its server:

* PostgreSQL: a session-level advisory lock (``pg_advisory_lock``);
* MySQL / MariaDB: a named lock (``GET_LOCK``);
* Redis (a journal on Redis): redis-py's ``Lock``, which expires after :data:`LEASE`.

The first two are freed by the server when the holder's connection closes, so a worker
that dies does not keep it. The lock only spares workers duplicate plans: KneeSampler
still checks, after storing each weight, that no other worker stored the same one. So it
never stops a worker: when the server cannot be reached or does not grant the lock within
``timeout`` seconds, :meth:`DatabaseLock.acquire` returns ``False`` and the worker plans
without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

_log = logging.getLogger(__name__)

TIMEOUT = 10.0  # seconds a worker waits for the lock before it plans without it
# ... and after it gave up once, until it gets the lock again: a holder that hangs (a stopped
# process keeps its session) costs the others this much per plan, not TIMEOUT.
RETRY_TIMEOUT = 0.2
LEASE = 10.0  # seconds a Redis lock lives if its holder dies (a plan takes milliseconds)
_PG_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a lock wait past lock_timeout
_INHERITED: list[Any] = []  # a forked child's copies of its parent's connections: never closed (they are the parent's)


def lock_key(name: str) -> int:
    """A signed 64-bit key for ``name`` (PostgreSQL advisory locks are numbered).

    >>> lock_key("motune-plan:digits") == lock_key("motune-plan:digits") != lock_key("motune-plan:wine")
    True
    """
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def supports(url: str) -> bool:
    """Whether :class:`DatabaseLock` can lock on the server of ``url`` (PostgreSQL, MySQL / MariaDB, Redis).

    >>> supports("postgresql://localhost/test"), supports("mysql+pymysql://root@localhost/test")
    (True, True)
    >>> supports("redis://localhost:6379"), supports("sqlite:///study.db")
    (True, False)
    """
    return _backend(url) is not None


def _backend(url: str) -> str | None:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    try:
        dialect = make_url(url).get_backend_name()
    except Exception:  # not a database URL (a journal file, say)
        return None
    return {"postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}.get(dialect)


class DatabaseLock:
    """An exclusive lock named ``name`` on the database server at ``url``, one connection per process.

    ``acquire()`` blocks until this process holds the lock and returns ``True``, or returns
    ``False`` after ``timeout`` seconds or when the server cannot be reached (the caller
    goes on without it); ``release()`` after a ``True``. Not re-entrant and not a thread
    lock: callers pair it with one. Safe across ``fork`` (a child opens its own
    connection and leaves the parent's alone) and pickling (the connection is not sent).

    Example (needs a PostgreSQL server; another session cannot take the lock meanwhile):

    .. code-block:: python

        from motune.dblock import DatabaseLock

        url = "postgresql://postgres@127.0.0.1/test"
        lock, other = DatabaseLock(url, "motune-plan:digits"), DatabaseLock(url, "motune-plan:digits", timeout=0.1)
        assert lock.acquire()
        assert not other.acquire()  # held: the other gives up after its timeout
        lock.release()
        assert other.acquire()
        other.release()
    """

    def __init__(self, url: str, name: str, timeout: float = TIMEOUT) -> None:
        backend = _backend(url)
        if backend is None:
            raise ValueError(f"no server-side lock for {make_url(url).get_backend_name() if '://' in url else url!r}")
        self.url, self.name, self.timeout, self.backend = url, name, timeout, backend
        self._open: tuple[int, Any] | None = None  # (pid, connection or redis lock)
        self._gave_up = False  # the last acquire timed out: wait only RETRY_TIMEOUT until one succeeds
        self._lock_timeout: float | None = None  # PostgreSQL: the connection's lock_timeout
        self._warned = False

    def acquire(self) -> bool:
        """Hold the lock (``True``), or give up after ``timeout`` or on a connection error (``False``)."""
        timeout = self.wait_limit()
        try:
            session = self._session()
            if self.backend == "redis":
                got = bool(session.acquire(blocking=True, blocking_timeout=timeout))
            elif self.backend == "postgresql":  # waits at most lock_timeout, then raises
                if self._lock_timeout != timeout:  # a setting of the connection: sent when it changes
                    session.execute(text(f"SET lock_timeout = {max(int(timeout * 1000), 1)}"))
                    self._lock_timeout = timeout
                session.execute(text("SELECT pg_advisory_lock(:key)"), {"key": lock_key(self.name)})
                got = True
            else:
                got = session.execute(text("SELECT GET_LOCK(:name, :timeout)"),
                                      {"name": self._mysql_name(), "timeout": timeout}).scalar() == 1
        except Exception as exc:  # timed out (PostgreSQL), or the server is away: plan without it, reconnect next time
            timed_out = getattr(getattr(exc, "orig", None), "pgcode", None) == _PG_LOCK_NOT_AVAILABLE
            _log.debug("planning lock %r not taken: %s", self.name, exc)
            self._drop()
            got = False
        else:
            timed_out = not got
        if timed_out and not self._gave_up and not self._warned:
            self._warned = True  # once per process: the storage's own outage messages cover a server that is away
            _log.warning("planning lock %r not granted within %g s (another worker holds it: stopped, or hung?); "
                         "planning without it until it is free", self.name, timeout)
        self._gave_up = not got
        return got

    def wait_limit(self) -> float:
        """Seconds the next :meth:`acquire` waits: ``timeout``, or :data:`RETRY_TIMEOUT` after one gave up."""
        return min(self.timeout, RETRY_TIMEOUT) if self._gave_up else self.timeout

    def release(self) -> None:
        """Let the next waiting worker have it (a connection lost meanwhile has freed it already)."""
        try:
            session = self._session()
            if self.backend == "redis":
                session.release()
            elif self.backend == "postgresql":
                session.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": lock_key(self.name)})
            else:
                session.execute(text("SELECT RELEASE_LOCK(:name)"), {"name": self._mysql_name()})
        except Exception as exc:  # expired (Redis) or the connection is gone: the server has let go of it
            _log.debug("planning lock %r released by the server: %s", self.name, exc)
            self._drop()

    def _mysql_name(self) -> str:
        return f"motune-{lock_key(self.name) & (2**64 - 1):016x}"  # GET_LOCK names are at most 64 characters

    def _session(self) -> Any:
        """This process's connection (or Redis lock object), opened at first use and after a fork."""
        if self._open is not None and self._open[0] == os.getpid():
            return self._open[1]
        if self._open is not None:  # a forked child: the parent's socket is not ours to use or to close
            _INHERITED.append(self._open[1])
        from motune.storage import CONNECT_TIMEOUT, redis_client_url, with_installed_driver

        if self.backend == "redis":
            import redis

            client = redis.Redis.from_url(redis_client_url(self.url, socket_timeout=True))
            session: Any = client.lock(f"motune:{self.name}", timeout=LEASE, sleep=0.002)
        else:
            engine = create_engine(with_installed_driver(self.url), poolclass=NullPool,
                                   connect_args={"connect_timeout": CONNECT_TIMEOUT})
            session = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self._open, self._lock_timeout = (os.getpid(), session), None
        return session

    def _drop(self) -> None:
        if self._open is not None and self._open[0] == os.getpid() and self.backend != "redis":
            with contextlib.suppress(Exception):
                self._open[1].close()
        self._open = None

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "name": self.name, "timeout": self.timeout}  # a connection means nothing elsewhere

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["name"], state["timeout"])
