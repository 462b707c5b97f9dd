"""The planning lock on a database server (motune.dblock): exclusion across connections and processes,
freed when its holder dies, never in a worker's way; and KneeSampler's workers in several processes on
one PostgreSQL or SQLite study planning in turn (issue 12: workers on several machines share only the database;
workers added to a SQLite study share a file lock).

Each test runs where its server is (the CI machine has PostgreSQL, MariaDB and Redis) and is skipped,
saying why, where it is not."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from servers import postgres_url, server_url

from motune.dblock import RETRY_TIMEOUT, DatabaseLock, supports
from motune.sampler import KneeSampler
from motune.storage import local_lock_dir, open_storage, planning_lock_for

FORK = multiprocessing.get_context("fork")


@pytest.fixture(params=["postgresql", "mysql", "redis"])
def url(request: pytest.FixtureRequest) -> str:
    return server_url(request.param)


def _name() -> str:
    return f"motune-test-{uuid.uuid4().hex[:12]}"


def test_one_holder_at_a_time_and_the_next_gets_it_on_release(url: str) -> None:
    name = _name()
    holder, other = DatabaseLock(url, name), DatabaseLock(url, name, timeout=0.2)
    assert holder.acquire()
    assert other.acquire() is False  # held elsewhere: gives up after its timeout, without raising
    assert DatabaseLock(url, _name(), timeout=0.2).acquire()  # another study's lock is another lock
    holder.release()
    assert other.acquire()
    other.release()


def _count_in_turn(url: str, name: str, path: str, rounds: int, start: object) -> None:
    lock = DatabaseLock(url, name, timeout=60.0)
    start.wait()  # type: ignore[attr-defined]
    for _ in range(rounds):
        assert lock.acquire()
        try:  # read, then write: two holders at once would lose an increment
            value = int(Path(path).read_text())
            os.sched_yield()
            Path(path).write_text(str(value + 1))
        finally:
            lock.release()


def test_processes_take_turns(url: str, tmp_path: Path) -> None:
    counter, name, rounds = tmp_path / "counter", _name(), 40
    counter.write_text("0")
    start = FORK.Barrier(4)
    procs = [FORK.Process(target=_count_in_turn, args=(url, name, str(counter), rounds, start)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    assert int(counter.read_text()) == 4 * rounds


def _hold_and_die(url: str, name: str) -> None:
    assert DatabaseLock(url, name).acquire()
    os._exit(0)  # no release: the server frees a dead holder's session lock


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_a_dead_holder_does_not_keep_the_lock(backend: str) -> None:
    url, name = server_url(backend), _name()
    child = FORK.Process(target=_hold_and_die, args=(url, name))
    child.start()
    child.join()
    assert child.exitcode == 0
    lock = DatabaseLock(url, name, timeout=30.0)  # the server notices the closed connection at once, not in 30 s
    assert lock.acquire()
    lock.release()


def _acquire_release(lock: DatabaseLock) -> None:
    assert lock.acquire()
    lock.release()


def test_a_forked_child_uses_its_own_connection_and_leaves_the_parents_alone(url: str) -> None:
    lock = DatabaseLock(url, _name())
    _acquire_release(lock)  # the parent's connection is open now
    child = FORK.Process(target=_acquire_release, args=(lock,))
    child.start()
    child.join()
    assert child.exitcode == 0
    assert lock.acquire()  # still the parent's working connection: not closed by the child
    other = DatabaseLock(url, lock.name, timeout=0.2)
    assert other.acquire() is False
    lock.release()
    copy = pickle.loads(pickle.dumps(lock))  # no connection travels; the copy opens its own
    _acquire_release(copy)


def test_an_unreachable_server_never_stops_a_worker() -> None:
    lock = DatabaseLock("postgresql://nobody@127.0.0.1:1/none", "motune-plan:x")
    assert lock.acquire() is False  # the worker plans without it (KneeSampler's check after storing keeps them apart)
    lock.release()  # harmless


def test_storages_get_the_lock_that_suits_them() -> None:
    assert isinstance(planning_lock_for("postgresql://h/db", "digits"), DatabaseLock)
    assert isinstance(planning_lock_for("mysql+pymysql://h/db", "digits"), DatabaseLock)
    assert isinstance(planning_lock_for("redis://h:6379?prefix=p", "digits"), DatabaseLock)
    assert planning_lock_for("journal:/tmp/d.journal", "digits") == "/tmp/d.journal.plan"
    lock = Path(planning_lock_for("sqlite:///d.db", "digits"))
    assert lock.parent == local_lock_dir() and lock.name.startswith("d.db-")  # not beside the database
    assert planning_lock_for(f"sqlite:///{Path('d.db').resolve()}", "digits") == str(lock)  # one database, one lock
    assert planning_lock_for("sqlite:///other/d.db", "digits") != str(lock)
    assert planning_lock_for("sqlite:///:memory:", "digits") is None
    assert len(Path(planning_lock_for(f"sqlite:///{'x' * 250}.db", "digits")).name) < 100  # within NAME_MAX
    assert not supports("journal:/tmp/d.journal") and not supports("sqlite:///d.db")
    with pytest.raises(ValueError, match="no server-side lock"):
        DatabaseLock("sqlite:///d.db", "x")


def test_sqlite_lock_directory_is_private_or_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock directory is made private; where none can be made, no lock, and no error."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert Path(planning_lock_for("sqlite:///d.db", "digits")).parent == tmp_path / f"motune-{os.getuid()}"
    assert (tmp_path / f"motune-{os.getuid()}").stat().st_mode & 0o777 == 0o700  # private
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_directory))
    assert local_lock_dir() is None and planning_lock_for("sqlite:///d.db", "digits") is None


def test_another_users_lock_directory_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory of that name that another user made could hold a lock forever (or be swapped): no lock."""
    if os.getuid() != 0:
        pytest.skip("only root can make a directory that belongs to another user")
    theirs = tmp_path / "shared"
    (theirs / f"motune-{os.getuid()}").mkdir(parents=True)
    os.chown(theirs / f"motune-{os.getuid()}", os.getuid() + 1, -1)
    monkeypatch.setattr(tempfile, "tempdir", str(theirs))
    assert local_lock_dir() is None and planning_lock_for("sqlite:///d.db", "digits") is None


# ----------------------------------------------------------------------------- the sampler's workers


@pytest.fixture(params=["postgresql", "sqlite"])
def shared_study(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    url = postgres_url() if request.param == "postgresql" else f"sqlite:///{tmp_path / 'study.db'}"
    name = _name()
    optuna.create_study(study_name=name, storage=open_storage(url), directions=["minimize", "minimize"])
    yield url, name
    optuna.delete_study(study_name=name, storage=open_storage(url))


def _ask_in_turn(url: str, name: str, start: object) -> None:
    sampler = KneeSampler(planning_lock=planning_lock_for(url, name))
    study = optuna.load_study(study_name=name, storage=open_storage(url), sampler=sampler)
    start.wait()  # type: ignore[attr-defined]
    with sampler.planning_turn(study, timeout=0.0) as ready:
        if ready:
            study.ask().suggest_float("l1_weight", 0.0, 1.0)


def test_worker_processes_on_one_database_plan_in_turn(shared_study: tuple[str, str]) -> None:
    """Eight processes pass the check at once: the three weights ready go to three of them, the others get none.

    Without the database lock the processes raced between the check and the ask, and the
    losers got gap-filling weights (bench/same_knee.py on PostgreSQL: 19 trials at 8 workers).
    """
    url, name = shared_study
    start = FORK.Barrier(8)
    procs = [FORK.Process(target=_ask_in_turn, args=(url, name, start)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert [p.exitcode for p in procs] == [0] * 8
    trials = optuna.load_study(study_name=name, storage=open_storage(url)).trials
    assert sorted(t.params["l1_weight"] for t in trials) == [0.0, 0.1, 1.0]  # nobody else created a trial


def test_after_giving_up_it_waits_briefly_until_it_gets_the_lock_again(url: str, caplog: pytest.LogCaptureFixture) -> None:
    """A holder that hangs (a stopped worker keeps its session) costs the others RETRY_TIMEOUT per plan, not TIMEOUT."""
    name = _name()
    stuck, other = DatabaseLock(url, name), DatabaseLock(url, name, timeout=1.0)
    assert stuck.acquire()
    with caplog.at_level(logging.WARNING, logger="motune.dblock"):
        assert other.wait_limit() == 1.0 and other.acquire() is False
    warned = [r.getMessage() for r in caplog.records if r.name == "motune.dblock"]
    assert len(warned) == 1 and "not granted within 1 s" in warned[0]  # said once, and why
    assert other.wait_limit() == RETRY_TIMEOUT and other.acquire() is False
    stuck.release()
    assert other.acquire()
    assert other.wait_limit() == 1.0  # the full timeout is back once it has had the lock
    other.release()


def test_a_lock_file_that_cannot_be_opened_never_stops_a_worker(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """E.g. the lock directory was removed after the worker started: it plans without the lock, saying so once."""
    sampler = KneeSampler(planning_lock=str(tmp_path / "gone" / "d.db.plan"))
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    with caplog.at_level(logging.WARNING, logger="motune.sampler"):
        for _ in range(3):
            trial = study.ask()
            lam = trial.suggest_float("l1_weight", 0.0, 1.0)
            study.tell(trial, (1.0 + lam, 1.0 - lam))
    assert sorted(t.params["l1_weight"] for t in study.trials) == [0.0, 0.1, 1.0]  # the search went on as usual
    assert sum("planning without the shared planning lock" in r.getMessage() for r in caplog.records) == 1
