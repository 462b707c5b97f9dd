"""Optuna storages by URL: open any storage motune supports, mask passwords, choose defaults.

Any Optuna RDB URL (``sqlite:///…``, ``postgresql://…``, ``mysql+pymysql://…``; a URL
that names no driver gets an installed one), ``redis://…`` (journal on Redis, optional
``?prefix=NAME``), or a journal file given as ``journal:PATH`` or a path ending in
``.journal``/``.log``. Default: one SQLite file per study (``sqlite:///NAME.db``), what
optuna-dashboard opens. Failures become :class:`StudyError` with the URL masked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import optuna

from motune import dblock
from motune.dblock import DatabaseLock
from motune.filelock import FileLock


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


def sqlite_file(url: str) -> Path | None:
    """The database file of a ``sqlite:///PATH`` URL; None for other storages and in-memory SQLite.

    >>> sqlite_file("sqlite:///runs/digits.db"), sqlite_file("sqlite:///:memory:"), sqlite_file("journal:d.journal")
    (PosixPath('runs/digits.db'), None, None)
    """
    path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
    return Path(path) if path and path != ":memory:" else None


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


class QueuedJournalLock(optuna.storages.journal.JournalFileSymlinkLock):
    """Optuna's journal file lock, with this machine's writers queued on ``flock`` first.

    Optuna's lock retries a taken lock with an exponential back-off of up to a second, so
    several local workers that write at once (each trial's start, weight and result) wait
    far longer than the write takes. Here a writer first waits its turn on an ``flock`` of
    ``PATH.flock``, which the kernel hands over the moment it is released, and then takes
    Optuna's lock, free by then unless a writer that does not queue (another program on
    the file, or another machine's worker on a shared file system) holds it: those are
    still kept out by Optuna's lock.
    """

    def __init__(self, filepath: str) -> None:
        super().__init__(filepath)
        self._queue = FileLock(filepath + ".flock")

    def acquire(self) -> bool:
        self._queue.acquire()
        try:
            return super().acquire()
        except BaseException:
            self._queue.release()
            raise

    def release(self) -> None:
        try:
            super().release()
        finally:
            self._queue.release()


def journal_file_backend(path: str) -> optuna.storages.journal.JournalFileBackend:
    """Optuna's journal file backend on ``path``, its writers on this machine queued (:class:`QueuedJournalLock`)."""
    return optuna.storages.journal.JournalFileBackend(path, lock_obj=QueuedJournalLock(path))


def planning_lock_path(url: str) -> str | None:
    """The file KneeSampler's workers lock while planning, for storages of one machine; else None.

    ``journal:PATH``: ``PATH.plan`` beside it (journal files are made for several local
    workers, :func:`default_journal_url`). ``sqlite:///PATH``: a file in this user's lock
    directory (:func:`local_lock_dir`) named after the database's absolute path, so that
    the workers ``motune run`` tells you to add (``motune worker --storage
    sqlite:///…``) plan in turn without a file appearing beside every study's database.
    None when that directory cannot be used: the workers then keep apart by checking
    after they store a weight, as without a lock.
    """
    if is_journal_file(url):
        return url.removeprefix("journal:") + ".plan"
    db = sqlite_file(url)
    directory = local_lock_dir() if db is not None else None  # no directory made for a URL that needs none
    if directory is None:
        return None
    key = hashlib.blake2b(str(db.resolve()).encode(), digest_size=8).hexdigest()
    return str(directory / f"{db.name[:64]}-{key}.plan")  # the name for people, the key for uniqueness


def local_lock_dir() -> Path | None:
    """``$TMPDIR/motune-UID``: this user's lock files on this machine (made private), None if unusable.

    Not another user's directory of that name (it could hold a lock forever), and not
    one that cannot be created (the caller goes on without a lock).
    """
    directory = Path(tempfile.gettempdir(), f"motune-{os.getuid()}")
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        return directory if directory.stat().st_uid == os.getuid() else None
    except OSError:
        return None


def planning_lock_for(url: str, study_name: str) -> str | DatabaseLock | None:
    """What the workers of study ``study_name`` on the storage ``url`` lock while planning (``KneeSampler(planning_lock=...)``).

    A journal file or a SQLite database (workers on one machine): a file
    (:func:`planning_lock_path`). A PostgreSQL, MySQL / MariaDB or Redis server: a
    :class:`~motune.dblock.DatabaseLock` on it, one per study (workers on any number of
    machines). Otherwise (memory): None, and processes keep apart by checking after they
    store a weight.

    >>> planning_lock_for("journal:runs/digits.journal", "digits")
    'runs/digits.journal.plan'
    >>> Path(planning_lock_for("sqlite:///digits.db", "digits")).parent == local_lock_dir()
    True
    >>> planning_lock_for("postgresql://postgres@127.0.0.1/test", "digits").name
    'motune-plan:digits'
    """
    if dblock.supports(url):
        return DatabaseLock(url, f"motune-plan:{study_name}")
    return planning_lock_path(url)


def redis_client_url(url: str, socket_timeout: bool = False) -> str:
    """``url`` as redis-py opens it: motune's ``prefix`` left out, a connection timeout (and a socket timeout) set."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.pop("prefix", None)
    query.setdefault("socket_connect_timeout", str(CONNECT_TIMEOUT))
    if socket_timeout:
        query.setdefault("socket_timeout", str(CONNECT_TIMEOUT))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redis_backend(url: str) -> optuna.storages.journal.JournalRedisBackend:
    """Journal on Redis; ``?prefix=NAME`` in the URL keeps the journal's keys apart from others'."""
    prefix = dict(parse_qsl(urlsplit(url).query)).get("prefix", "")
    with warnings.catch_warnings():  # "experimental" since Optuna 3.1; it is the Redis storage Optuna has
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.journal.JournalRedisBackend(redis_client_url(url), prefix=prefix)


_REDIS_CHECKED: set[str] = set()  # servers whose persistence this process has looked at


def warn_if_redis_forgets(url: str) -> bool:
    """Warn (once per process and server) when the Redis at ``url`` keeps nothing on disk.

    A journal on a Redis with neither an append-only file nor ``save`` snapshots is gone
    when that server restarts: every trial of every study on it. The server is asked
    ``CONFIG GET appendonly`` and ``CONFIG GET save``; when both are off, one line on the
    ``motune.storage`` logger (what the CLI prints as one line on stderr) says what to
    set. Where ``CONFIG`` is renamed, disabled or not permitted (managed services), or the
    server cannot be reached, nothing is said: persistence is then unknown, and reaching
    the server is the storage's own business. Each server is asked once per process,
    whatever the answer; workers started by ``motune run --workers`` (``MOTUNE_PARENT``
    set) leave it to their parent, which opened the same storage first. Never raises.
    Returns whether it warned.
    """
    if os.environ.get("MOTUNE_PARENT"):
        return False
    parts = urlsplit(url)
    try:
        server = parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
    except ValueError:  # a malformed port: the storage reports the URL itself
        return False
    if server in _REDIS_CHECKED:
        return False
    _REDIS_CHECKED.add(server)
    try:
        import redis

        client = redis.Redis.from_url(redis_client_url(url, socket_timeout=True))
        try:
            config = {**client.config_get("appendonly"), **client.config_get("save")}
        finally:
            client.close()
    except Exception:  # CONFIG forbidden / renamed, unreachable, no redis module: say nothing
        return False
    if set(config) != {"appendonly", "save"}:
        return False  # a Redis-compatible server without these settings: persistence unknown
    if str(config["appendonly"]).strip().lower() == "yes" or str(config["save"]).strip():
        return False
    shown = f"unix://{server}" if parts.scheme == "unix" else f"{parts.scheme}://{server}"
    logging.getLogger(__name__).warning(
        "motune: warning: the Redis at %s saves nothing to disk (appendonly no, save \"\"), so the study journal "
        "is lost when it restarts; set `appendonly yes` (or a `save` schedule such as `save 60 1`) in its "
        "redis.conf, or now with `redis-cli CONFIG SET appendonly yes`",
        shown,
    )
    return True


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


def open_storage(url: str, *, must_exist: bool = False) -> optuna.storages.BaseStorage:
    """Open any storage motune supports; raise :class:`StudyError` with the URL (masked) when it fails.

    ``must_exist``: a SQLite or journal file that is not there is an error instead of a
    new, empty storage (what commands that only read a study want).

    Database servers get a connect timeout of ``CONNECT_TIMEOUT`` and a connection check
    before use (so a restarted server is reconnected to). Workers' liveness is motune's
    own heartbeat on every storage (:mod:`motune.faults`), not Optuna's RDB-only one; to
    ride out outages wrap the result in :func:`motune.patience.patient`.
    """
    shown = mask_url(url)
    if must_exist and (db := sqlite_file(url)) is not None and not db.exists():
        raise StudyError(f"storage {shown!r}: no such database file; run `motune run` first or pass --storage URL")
    if must_exist and is_journal_file(url) and not Path(url.removeprefix("journal:")).exists():
        raise StudyError(f"storage {shown!r}: no such journal file; pass --storage URL")
    try:
        if is_journal_file(url):
            path = url.removeprefix("journal:")
            if not path:
                raise StudyError(f"storage {shown!r}: journal:PATH needs a file name")
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(journal_file_backend(path))
        if url.startswith(("redis://", "rediss://", "unix://")):
            storage = optuna.storages.JournalStorage(_redis_backend(url))
            warn_if_redis_forgets(url)
            return storage
        if "://" not in url:
            raise StudyError(
                f"storage {shown!r}: not a storage URL; use sqlite:///FILE.db, postgresql://…, "
                "mysql+pymysql://…, redis://HOST:PORT, or journal:FILE"
            )
        kwargs: dict[str, Any] = {}
        if (db := sqlite_file(url)) is not None:
            db.parent.mkdir(parents=True, exist_ok=True)
        elif url.startswith(("postgresql", "postgres", "mysql")):
            url = with_installed_driver(url)
            kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}, "pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, **kwargs)
    except StudyError:
        raise
    except Exception as exc:  # drivers raise many types; the message is what matters
        detail = mask_secrets(str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        raise StudyError(f"storage {shown!r}: cannot open ({type(exc).__name__}: {detail})") from None


def default_artifact_dir(url: str, study_name: str) -> Path:
    """Where checkpoints go unless ``--artifacts`` says otherwise: beside a file storage, else ``./artifacts/NAME``."""
    if (db := sqlite_file(url)) is not None:
        return db.with_name(db.stem + "-artifacts")
    if is_journal_file(url):
        path = Path(url.removeprefix("journal:"))
        return path.with_name(path.stem + "-artifacts")
    return Path("artifacts", study_name)
