"""Storage outages and trials failed elsewhere: no traceback, no lost result, no false death.

Outages are injected by :class:`FlakyStorage`, a storage whose calls fail with the error
Optuna's RDB storage raises when the database server goes away, for as many calls as a
test says: what happens is decided by counts, never by how fast this machine is. A real
PostgreSQL restart is exercised by ``bench/chaos.py``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from sqlalchemy.exc import OperationalError

import motune.cli
from motune.config import StudyConfig
from motune.faults import HEARTBEAT_ATTR, WORKER_ATTR, WorkerWatch, fail_and_retry, worker_identity
from motune.patience import PatientStorage, StorageUnavailable, is_transient
from motune.storage import open_storage
from motune.study import ORPHAN_ATTR_PREFIX, Objective, run_study


class FlakyStorage:
    """Passes every call to ``storage``, except that while down each call fails as a lost connection would.

    ``fail(n)`` makes the next ``n`` calls fail; ``fail(None)`` fails every call until ``up()``.
    ``main_thread_only`` counts only failures of the main thread towards ``n`` (heartbeat
    threads then fail too while it is down, without ending the outage).
    """

    def __init__(self, storage: optuna.storages.BaseStorage) -> None:
        self.storage = storage
        self.remaining: int | None = 0
        self.main_thread_only = False
        self.failures = 0
        self._lock = threading.Lock()

    def fail(self, n: int | None, main_thread_only: bool = False) -> None:
        with self._lock:
            self.remaining, self.main_thread_only = n, main_thread_only

    def up(self) -> None:
        self.fail(0)

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.storage, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                down = self.remaining is None or self.remaining > 0
                counts = not self.main_thread_only or threading.current_thread() is threading.main_thread()
                if down:
                    self.failures += 1
                    if self.remaining is not None and counts:
                        self.remaining -= 1
            if down:
                cause = OperationalError("SELECT 1", {}, Exception("server closed the connection unexpectedly"))
                raise StorageInternalError("An exception is raised during the commit.") from cause
            return target(*args, **kwargs)

        return call


CONFIG = {
    "study": {"name": "outage", "n_trials": 3, "baselines": [], "prune": False,  # every trial runs its full length
              "continuation": False},
    "data": {"limit": 400},
    "train": {"epochs": 3, "front_epochs": 3},
}


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def flaky_storage(tmp_path: Path, patience: float = 60.0) -> tuple[PatientStorage, FlakyStorage]:
    flaky = FlakyStorage(optuna.storages.get_storage(open_storage(f"sqlite:///{tmp_path / 'flaky.db'}")))
    return PatientStorage(flaky, patience=patience), flaky  # type: ignore[arg-type]


def test_transient_errors_are_told_apart_from_real_ones() -> None:
    cause = OperationalError("SELECT 1", {}, Exception("connection refused"))
    try:
        raise StorageInternalError("commit failed") from cause
    except StorageInternalError as exc:
        assert is_transient(exc)
    assert is_transient(ConnectionResetError())
    assert not is_transient(StorageInternalError("value too long"))
    assert not is_transient(optuna.exceptions.UpdateFinishedTrialError("finished"))
    assert not is_transient(KeyError("no such study"))


def test_a_worker_rides_out_an_outage_while_it_trains_and_loses_nothing(tmp_path: Path, caplog, one_thread) -> None:
    """The storage goes away mid-training of trial 1 and stays away through its first three writes."""
    storage, flaky = flaky_storage(tmp_path)
    config = StudyConfig.from_dict(CONFIG)

    def on_epoch(trial: optuna.Trial, record: Any, epochs: int) -> None:
        if trial.number == 1 and record.epoch == 1:
            flaky.fail(3, main_thread_only=True)  # heartbeats fail meanwhile; the result's writes retry

    objective = Objective(config, str(tmp_path / "art"), on_epoch=on_epoch, heartbeat_interval=0.05)
    with caplog.at_level(logging.INFO, logger="motune"):
        study = run_study(config, storage, artifact_dir=tmp_path / "art", objective=objective)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [(t.number, t.state.name, t.user_attrs) for t in trials]
    assert flaky.failures >= 3
    assert all((tmp_path / "art" / t.user_attrs["checkpoint"]).is_file() for t in trials)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "storage unreachable" in warnings[0].getMessage(), [r.getMessage() for r in warnings]
    assert "server closed the connection" in warnings[0].getMessage() and not warnings[0].exc_info
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_past_its_patience_a_worker_stops_with_one_line_and_exit_1(tmp_path: Path, capsys, monkeypatch) -> None:
    """The storage goes away for good during a trial: exit 1, no traceback, the trial left for others to requeue."""
    flaky = FlakyStorage(optuna.storages.get_storage(open_storage(f"sqlite:///{tmp_path / 'gone.db'}")))
    monkeypatch.setattr(motune.cli, "open_storage", lambda url: flaky)
    real_train = motune.study.train

    def train(cfg: Any, **kwargs: Any) -> Any:
        result = real_train(cfg, **kwargs)
        flaky.fail(None)  # gone for good, right after training
        return result

    monkeypatch.setattr(motune.study, "train", train)
    toml = '[study]\nname = "gone"\nbaselines = []\n[data]\nlimit = 400\n[train]\nepochs = 2\nfront_epochs = 2\n'
    (tmp_path / "gone.toml").write_text(toml)
    old = os.getcwd()
    os.chdir(tmp_path)
    try:
        code = motune.cli.main(["run", "gone.toml", "--quiet", "--threads", "1", "--storage", "sqlite:///ignored.db",
                                "--storage-patience", "1"])
    finally:
        os.chdir(old)
    _, err = capsys.readouterr()
    assert code == 1, err
    assert "Traceback" not in err and "--storage-patience 1" in err and "queued again" in err, err
    flaky.up()
    trials = optuna.load_study(study_name="gone", storage=flaky.storage).get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING]  # not lost: the next worker that sees it requeues it
    assert trials[0].system_attrs[WORKER_ATTR]["pid"] == os.getpid()


def test_reachable_clock_stands_still_during_an_outage(tmp_path: Path) -> None:
    storage, flaky = flaky_storage(tmp_path)
    study = optuna.create_study(storage=storage, directions=["minimize", "minimize"])
    wall, reachable = time.monotonic(), storage.reachable_clock()
    flaky.fail(4)  # retried after 0.2 + 0.4 + 0.8 + 1.6 s of backoff at least
    assert study.get_trials() == []
    outage = (time.monotonic() - wall) - (storage.reachable_clock() - reachable)
    assert outage >= 3.0 and not storage.in_outage


def test_a_live_trial_is_not_declared_dead_because_the_storage_was_away(tmp_path: Path) -> None:
    storage, flaky = flaky_storage(tmp_path)
    study = optuna.create_study(storage=storage, directions=["minimize", "minimize"])
    trial = study.ask()
    storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "elsewhere", "pid": 1})
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, 1.0)
    watch = WorkerWatch(grace=1.0)
    assert watch.sweep(study) == []  # first sight
    flaky.fail(4)  # at least 3 s away: longer than the grace period, but the observer could not see beats either
    assert watch.sweep(study) == []
    assert study.trials[trial.number].state == TrialState.RUNNING


def test_a_live_process_on_this_host_wins_over_a_silent_heartbeat(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 'live.db'}"), directions=["minimize"] * 2)
    trial = study.ask()
    alive = {**worker_identity(), "pid": os.getppid()}  # a process of this host that is alive (pytest's parent)
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, alive)
    study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, 1.0)
    watch = WorkerWatch(grace=0.01)
    assert watch.sweep(study) == []
    time.sleep(0.05)  # well past the grace period: only the live process keeps the trial
    assert watch.sweep(study) == []
    assert study.trials[trial.number].state == TrialState.RUNNING


def _failing_hook(storage: optuna.storages.BaseStorage, also_take_the_retry: bool):
    """An epoch hook that, in trial 1's second epoch, fails trial 1 as another worker (or a person) would."""

    def on_epoch(trial: optuna.Trial, record: Any, epochs: int) -> None:
        if trial.number != 1 or record.epoch != 2:
            return
        outside = optuna.load_study(study_name=trial.study.study_name, storage=storage)
        fail_and_retry(outside, storage.get_trial(trial._trial_id), "failed by a person", "worker_lost")
        if also_take_the_retry:  # another worker starts the retry and finishes it first
            retry = outside.get_trials(states=(TrialState.WAITING,))[0]
            assert storage.set_trial_state_values(retry._trial_id, TrialState.RUNNING)
            outside.tell(retry.number, [1.0, 1.0])

    return on_epoch


@pytest.mark.parametrize("retry_taken", [False, True])
def test_a_trial_failed_elsewhere_keeps_its_result_and_the_worker_goes_on(
    tmp_path: Path, caplog, one_thread, retry_taken: bool
) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'elsewhere.db'}")
    config = StudyConfig.from_dict(CONFIG)
    objective = Objective(config, str(tmp_path / "art"), on_epoch=_failing_hook(storage, retry_taken), heartbeat_interval=None)
    with caplog.at_level(logging.WARNING, logger="motune"):
        study = run_study(config, storage, artifact_dir=tmp_path / "art", objective=objective)
    trials = study.get_trials()
    failed = trials[1]
    assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "failed by a person"
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 3
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    lines = [r.getMessage() for r in caplog.records if "failed elsewhere" in r.getMessage()]
    assert len(lines) == 1 and not [r for r in caplog.records if r.exc_info], lines
    if not retry_taken:  # the result completes the retry: same λ, kind and fidelity
        retry = trials[2]
        assert retry.state == TrialState.COMPLETE and retry.params == failed.params
        assert retry.system_attrs["retry_history"] == [1] and retry.user_attrs["kind"] == "weighted_sum"
        assert retry.values != [1.0, 1.0] and (tmp_path / "art" / retry.user_attrs["checkpoint"]).is_file()
    else:  # the retry was someone else's: the result is kept beside the study
        kept = study.user_attrs[f"{ORPHAN_ATTR_PREFIX}1"]
        assert len(kept["values"]) == 2 and kept["val_accuracy"] > 0 and kept["nonzeros"] > 0
        assert (tmp_path / "art" / kept["checkpoint"]).is_file()
        assert "retry is already taken" in lines[0]


def test_a_failed_storage_call_is_not_retried_when_it_is_not_transient(tmp_path: Path) -> None:
    storage, _ = flaky_storage(tmp_path)
    with pytest.raises(KeyError):
        storage.get_study_id_from_name("no such study")
    assert not storage.in_outage


def test_patient_storage_gives_up_after_its_patience(tmp_path: Path) -> None:
    storage, flaky = flaky_storage(tmp_path, patience=0.5)
    flaky.fail(None)
    with pytest.raises(StorageUnavailable, match="storage-patience"):
        storage.get_all_studies()
    flaky.up()
    assert storage.get_all_studies() == [] and not storage.in_outage


def test_a_killed_worker_not_yet_reaped_counts_as_gone(tmp_path: Path) -> None:
    """A SIGKILLed child stays a zombie until its parent reaps it; ``kill(pid, 0)`` still succeeds on it."""
    import signal
    import subprocess

    from motune.faults import _pid_alive

    child = subprocess.Popen(["sleep", "600"])
    try:
        assert _pid_alive(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        stat = Path(f"/proc/{child.pid}/stat")
        deadline = time.monotonic() + 60
        while stat.read_text().rpartition(")")[2].split()[0] != "Z":  # wait for the state, not for seconds
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.01)
        assert not _pid_alive(child.pid)
    finally:
        child.kill()
        child.wait()
