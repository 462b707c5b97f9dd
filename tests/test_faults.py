"""Faults: killed workers, Ctrl-C / SIGTERM and resume, diverging trials, bad input.

The process tests use a study whose trials last a second or more (digits, 400 samples,
80-120 epochs) so that a signal lands in the middle of one, and heartbeats of 1 s with a
grace period of 3 s. Recovery is checked through the storage: the killed or interrupted
trial is FAIL with a reason, its λ was trained again by a later COMPLETE trial, and the
study ends with exactly the requested number of COMPLETE trials.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import FrozenTrial, TrialState

import motune.study
from motune.cli import main
from motune.config import StudyConfig
from motune.faults import HEARTBEAT_ATTR, HOST_ENV, WORKER_ATTR
from motune.sampler import KneeSampler
from motune.storage import open_storage
from motune.study import CONFIG_ATTR, create_or_load_study, run_study

SLOW = """
[study]
name = "{name}"
n_trials = {n_trials}
baselines = []
prune = false              # every trial runs its full length (a collapsing one would end PRUNED early)

[data]
limit = 400

[train]
epochs = {epochs}
front_epochs = {epochs}
"""

ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
HEARTBEAT = ["--heartbeat", "1", "--grace", "3"]


def slow_config(tmp_path: Path, name: str, n_trials: int = 3, epochs: int = 80) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SLOW.format(name=name, n_trials=n_trials, epochs=epochs))
    return path


def motune_cmd(*argv: str) -> list[str]:
    return [sys.executable, "-m", "motune.cli", *argv]


def wait_for(predicate: Callable[[], Any], timeout: float = 90.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_trial(storage: optuna.storages.BaseStorage, name: str, host: str | None = None, after: int = 0) -> FrozenTrial | None:
    """A RUNNING trial (number >= after) that is training (its heartbeat is written), optionally on ``host``."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # not created yet
        return None
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.system_attrs.get(WORKER_ATTR) or {}
        if t.number >= after and HEARTBEAT_ATTR in t.system_attrs and (host is None or worker.get("host") == host):
            return t
    return None


def trials_of(storage: optuna.storages.BaseStorage, name: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def assert_recovered(storage: optuna.storages.BaseStorage, name: str, lost: int, target: int, failure: str) -> FrozenTrial:
    """``target`` budgeted COMPLETE (unused guesses on top), nothing RUNNING / WAITING; trial ``lost`` FAIL and retried."""
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    states = [t.state for t in trials]
    summary = [(t.number, t.state.name, t.params, t.user_attrs.get("fail_reason")) for t in trials]
    sampler = motune.study.make_sampler(motune.study.load_study_config(study))
    assert motune.study._budget_count(study, sampler) == target, summary
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states, summary
    dead = by_number[lost]
    assert dead.state == TrialState.FAIL and dead.user_attrs["failure"] == failure and dead.user_attrs["fail_reason"], summary
    retried = [t for t in trials if t.state == TrialState.COMPLETE and lost in t.system_attrs.get("retry_history", [])]
    assert len(retried) == 1, summary
    assert retried[0].params == dead.params and KneeSampler.fidelity(retried[0]) == KneeSampler.fidelity(dead)
    return retried[0]


# ----------------------------------------------------------------------------- SIGKILL


def test_worker_killed_on_another_host_is_recovered_by_heartbeat_on_sqlite(tmp_path: Path) -> None:
    """RDB: the survivor cannot see the dead process (other host), only the missing heartbeats."""
    name = f"kill-{uuid.uuid4().hex[:8]}"
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    config = StudyConfig.load(slow_config(tmp_path, name, n_trials=3))
    storage = open_storage(url)
    create_or_load_study(config, storage, name)
    args = ["worker", "--storage", url, "--study", name, "--quiet", "--threads", "1", "--artifacts", str(tmp_path / "art")]
    args += HEARTBEAT
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    victim = subprocess.Popen(motune_cmd(*args, "--worker-index", "0"), env={**ENV, HOST_ENV: ghost}, stderr=subprocess.PIPE)
    survivor = subprocess.Popen(motune_cmd(*args, "--worker-index", "1"), env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        doomed = wait_for(lambda: running_trial(storage, name, host=ghost), what="the ghost worker to train a trial")
        time.sleep(0.3)
        victim.kill()
        victim.wait()
        _, err = survivor.communicate(timeout=150)
        assert survivor.returncode == 0, err
    finally:
        for proc in (victim, survivor):
            if proc.poll() is None:
                proc.kill()
    retried = assert_recovered(storage, name, doomed.number, 3, "worker_lost")
    assert retried.system_attrs[WORKER_ATTR]["host"] != ghost
    assert "heartbeat" in trials_of(storage, name)[doomed.number].user_attrs["fail_reason"]


def test_worker_killed_under_run_workers_is_recovered_on_the_default_journal(tmp_path: Path) -> None:
    """``motune run --workers 2``: journal file by default; one worker is SIGKILLed mid-trial."""
    name = f"jkill-{uuid.uuid4().hex[:8]}"
    cfg = slow_config(tmp_path, name, n_trials=3)
    result: dict[str, int] = {}
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the default storage is ./NAME.journal; the parent runs in a thread below
    try:
        argv = ["run", str(cfg), "--workers", "2", "--quiet", *HEARTBEAT]
        parent = threading.Thread(target=lambda: result.setdefault("code", main(argv)))
        parent.start()
        journal = tmp_path / f"{name}.journal"
        wait_for(journal.exists, what="the journal file")
        storage = open_storage(f"journal:{journal}")
        doomed = wait_for(lambda: running_trial(storage, name), what="a worker to train a trial")
        time.sleep(0.3)
        os.kill(doomed.system_attrs[WORKER_ATTR]["pid"], signal.SIGKILL)
        parent.join(timeout=150)
        assert not parent.is_alive()
    finally:
        os.chdir(cwd)
    assert result["code"] == 0
    assert_recovered(storage, name, doomed.number, 3, "worker_lost")


# ----------------------------------------------------------------------------- SIGINT / SIGTERM


PHASE_BLOCK = Path(__file__).with_name("phase_block.py")


def blocked_run(tmp_path: Path, phase: str, k: int, *argv: str) -> tuple[subprocess.Popen[str], Path]:
    """``motune ARGV`` in ``tmp_path`` that stops and waits the ``k``-th time it reaches ``phase`` (see phase_block.py)."""
    marker = tmp_path / f"reached-{phase}-{uuid.uuid4().hex[:6]}"
    cmd = [sys.executable, str(PHASE_BLOCK), phase, str(k), str(marker), "--", *argv]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, marker


def signal_when_reached(proc: subprocess.Popen[str], marker: Path, signum: int) -> str:
    """Wait until ``proc`` is parked at its phase, send ``signum``, wait for it to end; its stderr."""
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, what=f"the run to reach {marker.name}")
        assert proc.poll() is None, proc.communicate()[1]
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return err


def test_sigint_then_sigterm_then_resume_loses_nothing(tmp_path: Path) -> None:
    """Ctrl-C in the second trial, SIGTERM in the resumed run's first trial, then resume to the end.

    Each signal is sent while a trial is parked mid-training (phase_block.py), so the test
    does not depend on how fast this machine trains.
    """
    name = "intr"
    cfg = slow_config(tmp_path, name, n_trials=3, epochs=4)
    storage = open_storage(f"sqlite:///{tmp_path / 'intr.db'}")
    run = ["run", str(cfg), "--quiet", "--threads", "1", *HEARTBEAT]

    # Ctrl-C while the second trial trains (the first one completes).
    proc, marker = blocked_run(tmp_path, "train", 2, *run)
    err = signal_when_reached(proc, marker, signal.SIGINT)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGINT" in lines[0] and "Traceback" not in err, err
    before = trials_of(storage, name)
    done = [t for t in before if t.state == TrialState.COMPLETE]
    first = [t for t in before if t.state == TrialState.FAIL]
    assert len(done) == 1 and len(first) == 1 and first[0].user_attrs["fail_reason"] == "interrupted by SIGINT", before
    first = first[0]
    assert [t.state for t in before if t.number > first.number] == [TrialState.WAITING]  # queued again
    checkpoints = {t.number: t.user_attrs["checkpoint"] for t in done}
    assert all((tmp_path / "intr-artifacts" / c).is_file() for c in checkpoints.values())
    assert not list((tmp_path / "intr-artifacts").glob("**/*.tmp"))  # no half-written checkpoint

    # SIGTERM (what a scheduler sends) while the resumed run trains the retry.
    proc, marker = blocked_run(tmp_path, "train", 1, *run)
    err = signal_when_reached(proc, marker, signal.SIGTERM)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    middle = trials_of(storage, name)
    second = [t for t in middle if t.state == TrialState.FAIL and t.number > first.number]
    assert len(second) == 1 and second[0].user_attrs["fail_reason"] == "interrupted by SIGTERM", middle
    second = second[0]

    # Resume to the end.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["run", str(cfg), "--quiet", *HEARTBEAT]) == 0
    finally:
        os.chdir(cwd)
    after = trials_of(storage, name)
    assert_recovered(storage, name, first.number, 3, "interrupted")
    assert after[second.number].state == TrialState.FAIL
    assert after[second.number].user_attrs["fail_reason"] == "interrupted by SIGTERM"
    for number, checkpoint in checkpoints.items():  # earlier results untouched
        assert after[number].state == TrialState.COMPLETE and after[number].values == before[number].values
        assert after[number].user_attrs["checkpoint"] == checkpoint
        assert (tmp_path / "intr-artifacts" / checkpoint).is_file()


@pytest.mark.parametrize(
    "phase,k",
    [
        ("data", 2),  # the trial's data loading (the first call is the run's own check before it opens the storage)
        ("train", 1),  # mid-training
        ("evaluate", 1),  # the final evaluation
        ("upload", 1),  # half-way through copying the checkpoint into the artifact store
    ],
)
def test_sigterm_at_any_point_of_a_trial_fails_and_requeues_it(tmp_path: Path, phase: str, k: int) -> None:
    name = f"term-{phase}"
    cfg = slow_config(tmp_path, name, n_trials=2, epochs=3)
    storage = open_storage(f"sqlite:///{tmp_path / (name + '.db')}")
    proc, marker = blocked_run(tmp_path, phase, k, "run", str(cfg), "--quiet", "--threads", "1", *HEARTBEAT)
    err = signal_when_reached(proc, marker, signal.SIGTERM)
    assert proc.returncode == 143 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "interrupted by SIGTERM" in err and "queued to run again" in err, err
    trials = trials_of(storage, name)
    states = [t.state for t in trials]
    assert states == [TrialState.FAIL, TrialState.WAITING], [(t.number, t.state.name, t.user_attrs) for t in trials]
    dead, retry = trials
    assert dead.user_attrs["fail_reason"] == "interrupted by SIGTERM" and dead.user_attrs["failure"] == "interrupted"
    assert retry.params == dead.params and retry.system_attrs["retry_history"] == [dead.number]
    assert KneeSampler.fidelity(retry) == KneeSampler.fidelity(dead)
    artifacts = tmp_path / f"{name}-artifacts"
    assert not artifacts.exists() or not list(artifacts.iterdir())  # nothing half-written, nothing orphaned


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path: Path, monkeypatch) -> None:
    real_train = motune.study.train

    def train(cfg, **kwargs):  # λ = 0.1 gets an absurd learning rate: the loss becomes NaN
        return real_train(cfg.replace(lr=1e30) if cfg.l1_weight == 0.1 else cfg, **kwargs)

    monkeypatch.setattr(motune.study, "train", train)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = StudyConfig.from_dict({
            "study": {"name": "nan", "n_trials": 4, "baselines": []},
            "data": {"limit": 400}, "train": {"epochs": 4, "front_epochs": 2},
        })
        study = run_study(config, f"sqlite:///{tmp_path / 'nan.db'}", artifact_dir=tmp_path / "art")
    finally:
        torch.set_num_threads(threads)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].params["l1_weight"] == 0.1
    assert failed[0].user_attrs["failure"] == "diverged" and "diverged" in failed[0].user_attrs["fail_reason"]
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 4
    assert not [t for t in trials if t.state == TrialState.WAITING]  # not retried: it would diverge again
    # The sampler ignores it: not on the front, and its λ is never tried again.
    assert all(t.params.get("l1_weight") != 0.1 for t in trials if t.number != failed[0].number)
    assert failed[0].number not in [t.number for t in KneeSampler().supported_trials(study)]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "argv,message",
    [
        (["run", "bad.toml"], "not valid TOML"),
        (["run", "--storage", "redis://:secret@127.0.0.1:1/0"], "cannot open"),
        (["run", "--storage", "mysql+pymysql://u:secret@127.0.0.1:1/x"], "cannot open"),
        (["run", "--storage", "journal:"], "needs a file name"),
        (["run", "--storage", "postgresql://u:secret@[::1/x"], "cannot open"),
        (["run", "--workers", "0"], "--workers"),
        (["run", "--heartbeat", "5", "--grace", "5"], "--grace"),
        (["worker"], "--storage URL is required"),
        (["worker", "--storage", "sqlite:///nothing.db"], "no such database file"),
        (["create", "bad.toml"], "not valid TOML"),
    ],
)
def test_bad_input_exit_2_one_line_nothing_written(
    tmp_path: Path, run_motune, monkeypatch, argv: list[str], message: str
) -> None:
    monkeypatch.delenv("MOTUNE_STORAGE", raising=False)
    (tmp_path / "bad.toml").write_text("[study\nname = ")
    code, _, err = run_motune(tmp_path, *argv)
    assert code == 2 and message in err and "secret" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.toml"]


def test_worker_for_a_missing_study_changes_nothing(tmp_path: Path, run_motune) -> None:
    config = StudyConfig.from_dict({"study": {"name": "there"}})
    url = f"sqlite:///{tmp_path / 's.db'}"
    create_or_load_study(config, open_storage(url), "there")
    before = (tmp_path / "s.db").read_bytes()
    code, _, err = run_motune(tmp_path, "worker", "--storage", url, "--study", "elsewhere")
    assert code == 2 and "'elsewhere' not found" in err
    assert (tmp_path / "s.db").read_bytes() == before


def test_corrupt_data_file_exit_2_before_any_storage(tmp_path: Path, run_motune) -> None:
    data = tmp_path / "fmnist"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (data / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03 not an idx file"))
    (tmp_path / "f.toml").write_text('[study]\nname = "f"\n[data]\ndataset = "fashion-mnist"\n[train]\nmodel = "lenet5"\n')
    code, _, err = run_motune(tmp_path, "run", "f.toml", "--data-dir", str(data))
    assert code == 2 and str(data) in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.db")) and not list(tmp_path.glob("*artifacts"))


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_corrupt_or_foreign_checkpoint_export_exit_2_and_writes_nothing(
    tmp_path: Path, run_motune, tiny_study, damage: str
) -> None:
    study, _, artifact_dir = tiny_study
    db = Path(study.user_attrs["tiny_study"]["storage"].removeprefix("sqlite:///"))
    shutil.copy(db, tmp_path / "copy.db")
    shutil.copytree(artifact_dir, tmp_path / "art")
    copy = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'copy.db'}")
    copy.set_user_attr(CONFIG_ATTR, StudyConfig.from_dict({"data": {"limit": 400}}).to_dict())  # as motune would
    for trial in copy.get_trials(states=(TrialState.COMPLETE,)):  # every checkpoint damaged
        target = tmp_path / "art" / trial.user_attrs["checkpoint"]
        if damage == "truncated":
            target.write_bytes(target.read_bytes()[:100])
        else:
            torch.save({"format": "something-else", "weights": torch.zeros(3)}, target)
    code, _, err = run_motune(tmp_path, "export", "--storage", "sqlite:///copy.db", "--artifacts", "art", "--out", "out")
    assert code == 2 and "trial" in err and "checkpoint" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "pareto.csv").exists() and not (tmp_path / "out" / "checkpoints").exists()
