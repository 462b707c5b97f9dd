"""Several workers on one study: the pieces in-process, then real worker processes.

End-to-end: ``motune run --workers 3`` on a real PostgreSQL and on Redis (skipped with the
reason when the server is not reachable), and ``--workers 2`` on the default journal
file. Every study here is tiny (digits, 400 samples, 2 front epochs) and uniquely named,
and is deleted afterwards so reruns stay clean.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from servers import REDIS_URL, mysql_url, postgres_url, redis_client

import motune.study
import motune.workers
from motune.config import StudyConfig
from motune.faults import (
    HEARTBEAT_ATTR,
    WORKER_ATTR,
    Interrupted,
    RetryTrial,
    WorkerWatch,
    check_interrupt,
    handle_signals,
    host_name,
    interruptible,
    worker_seed,
)
from motune.sampler import FIDELITY_ATTR, KneeSampler
from motune.storage import mask_secrets, mask_url, open_storage
from motune.study import BudgetReached, _budget_count, _Budgeted, create_or_load_study, load_study_config, make_sampler
from motune.workers import START_ENV, local_gpu_count, run_local_workers, start_method, worker_device

TINY = """
[study]
name = "{name}"
n_trials = {n_trials}
baselines = [{baselines}]

[data]
limit = 400

[train]
epochs = 4
front_epochs = 2
"""



def tiny_config(tmp_path: Path, name: str, n_trials: int = 6, baselines: str = '"smgd"') -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(TINY.format(name=name, n_trials=n_trials, baselines=baselines))
    return path


def journal_study(tmp_path: Path, n_trials: int = 4) -> optuna.Study:
    config = StudyConfig.from_dict({"study": {"name": "w", "n_trials": n_trials, "baselines": []}, "data": {"limit": 400}})
    return create_or_load_study(config, open_storage(f"journal:{tmp_path / 'w.journal'}"), "w")


def assert_study_finished(study: optuna.Study, target: int) -> None:
    """Budgeted COMPLETE = target (unused guesses on top), nothing RUNNING or WAITING, no λ trained twice at one fidelity."""
    trials = study.get_trials()
    states = [t.state for t in trials]
    summary = [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert _budget_count(study, make_sampler(load_study_config(study))) == target, summary
    assert states.count(TrialState.COMPLETE) >= target, summary
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    for fidelity in ("front", "full"):
        lams = sorted(
            t.params["l1_weight"] for t in trials
            if t.state == TrialState.COMPLETE and "l1_weight" in t.params and KneeSampler.fidelity(t) == fidelity
        )
        for a, b in itertools.pairwise(lams):
            assert b - a > 1e-3 * max(abs(a), abs(b)) + 1e-12, f"λ {a} trained twice at {fidelity} fidelity: {lams}"
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("fail_reason"), f"trial {t.number} failed without a reason"


# ----------------------------------------------------------------------------- pieces, in-process


def test_retry_keeps_params_kind_and_fidelity_and_drops_bookkeeping(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    trial = study.ask()
    trial.suggest_float("l1_weight", 0.0, 1.0)
    storage = study._storage
    storage.set_trial_system_attr(trial._trial_id, FIDELITY_ATTR, "full")
    storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "h", "pid": 1})
    trial.set_user_attr("kind", "smgd")
    trial.set_user_attr("fail_reason", "boom")
    study.tell(trial, state=TrialState.FAIL)
    failed = study.trials[-1]
    retry = RetryTrial(max_retry=2)
    assert retry(study, failed)
    again = study.trials[-1]
    assert again.state == TrialState.WAITING and again.params == failed.params
    assert again.user_attrs == {"kind": "smgd"} and KneeSampler.fidelity(again) == "full"
    assert WORKER_ATTR not in again.system_attrs and again.system_attrs["retry_history"] == [failed.number]
    # Retried twice: the third failure is not retried (a trial that keeps killing its worker).
    second = optuna.trial.create_trial(state=TrialState.FAIL, params=again.params, distributions=again.distributions,
                                       system_attrs={**again.system_attrs, "retry_history": [0, 1]})
    assert not retry(study, second)
    assert retry(study, second, limited=False)  # interrupts do not count


def test_watch_fails_and_requeues_a_trial_whose_process_is_gone(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask()
    trial.suggest_float("l1_weight", 0.0, 1.0)
    study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": host_name(), "pid": dead.pid})
    assert WorkerWatch(grace=None).sweep(study) == [trial.number]
    failed, queued = study.trials[trial.number], study.trials[-1]
    assert failed.state == TrialState.FAIL and "is gone" in failed.user_attrs["fail_reason"]
    assert failed.user_attrs["failure"] == "worker_lost"
    assert queued.state == TrialState.WAITING and queued.params == failed.params
    assert WorkerWatch(grace=None).sweep(study) == []  # nothing left to recover


def test_watch_uses_heartbeats_for_other_hosts(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    alive, dead = study.ask(), study.ask()
    for trial in (alive, dead):
        study._storage.set_trial_system_attr(trial._trial_id, WORKER_ATTR, {"host": "elsewhere", "pid": 1})
        study._storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, 1.0)
    watch = WorkerWatch(grace=0.3)
    assert watch.sweep(study) == []  # first sight: nothing is known to be stale
    time.sleep(0.2)
    study._storage.set_trial_system_attr(alive._trial_id, HEARTBEAT_ATTR, 2.0)
    assert watch.sweep(study) == []
    time.sleep(0.25)
    assert watch.sweep(study) == [dead.number]  # its heartbeat has not changed for 0.45 s > grace
    assert study.trials[alive.number].state == TrialState.RUNNING
    assert "no heartbeat" in study.trials[dead.number].user_attrs["fail_reason"]


def test_a_trial_started_past_the_budget_is_not_run(tmp_path: Path) -> None:
    study = journal_study(tmp_path)
    first = study.ask()  # another worker's trial, running
    second = study.ask()
    budget = _Budgeted(lambda trial: (0.0, 0.0), study, target=1, done=lambda: False, sampler=KneeSampler())
    with pytest.raises(BudgetReached):
        budget(second)
    assert second.user_attrs["failure"] == "not_run"
    assert budget(first) == (0.0, 0.0)  # the earlier trial goes ahead


def test_signals_are_deferred_outside_interruptible_blocks() -> None:
    with handle_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # outside: only remembered
        with pytest.raises(Interrupted) as info:
            check_interrupt()
        assert info.value.exit_code == 143 and "SIGTERM" in str(info.value)
    with handle_signals():
        with pytest.raises(Interrupted) as info:
            with interruptible():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # cut short
        assert info.value.exit_code == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_passwords_are_masked_and_worker_seeds_differ() -> None:
    assert mask_url("postgresql://u:s3cret@db:5432/x") == "postgresql://u:***@db:5432/x"
    text = "could not connect: postgresql://u:s3cret@db/x and redis://:pw@h:6379/0"
    assert "s3cret" not in mask_secrets(text) and "pw@" not in mask_secrets(text)
    assert len({worker_seed(0, i) for i in range(8)}) == 8 and worker_seed(0, 1) == worker_seed(0, 1)


# ----------------------------------------------------------------------------- devices (no GPU needed)


def fake_gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Make torch report ``n`` CUDA devices (only for code that counts them, never for training)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.mark.parametrize("device,n_gpus,expected", [
    ("auto", 2, ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]),
    ("cuda", 3, ["cuda:0", "cuda:1", "cuda:2", "cuda:0", "cuda:1"]),
    ("auto", 0, ["auto"] * 5),  # no GPU: auto stays auto (the CPU)
    ("cpu", 4, ["cpu"] * 5),
    ("cuda:1", 4, ["cuda:1"] * 5),  # an explicit device is every worker's
])
def test_worker_device_spreads_auto_and_cuda_over_the_gpus(device: str, n_gpus: int, expected: list[str]) -> None:
    assert [worker_device(device, i, n_gpus) for i in range(5)] == expected


def test_run_local_workers_gives_worker_i_gpu_i_mod_n(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_gpus(monkeypatch, 3)
    assert local_gpu_count() == 3
    commands: list[list[str]] = []

    class Done:  # a worker process that has already exited cleanly
        returncode = 0

        def __init__(self, command: list[str], **_: object) -> None:
            commands.append(command)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(motune.workers.subprocess, "Popen", Done)
    study = journal_study(tmp_path)
    assert run_local_workers(study, "journal:x", 4, 4, ["--threads", "1"], quiet=True, device="cuda") == 0
    devices = [c[c.index("--device") + 1] for c in commands]
    indices = [c[c.index("--worker-index") + 1] for c in commands]
    assert devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"] and indices == ["0", "1", "2", "3"]
    fake_gpus(monkeypatch, 0)
    commands.clear()
    run_local_workers(study, "journal:x", 2, 4, [], quiet=True, device="auto")
    assert [c[c.index("--device") + 1] for c in commands] == ["auto", "auto"]


def test_worker_device_is_a_local_choice_and_bad_devices_exit_2(tmp_path: Path, run_motune,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A study whose stored config names a GPU (created elsewhere) is joined here with --device cpu;
    the stored config keeps its device; bad or absent devices exit 2 with one line, nothing stored."""
    fake_gpus(monkeypatch, 0)
    cfg = tmp_path / "gpu.toml"
    cfg.write_text(TINY.format(name="gpu", n_trials=1, baselines="") + 'device = "cuda:1"\n')
    url = f"journal:{tmp_path / 'gpu.journal'}"
    code, _, err = run_motune(tmp_path, "run", str(cfg), "--storage", url, "--quiet")
    assert code == 2 and err.count("\n") == 1 and "train.device: 'cuda:1' requested but CUDA is not available" in err
    assert not (tmp_path / "gpu.journal").exists()  # refused before the storage was touched
    assert run_motune(tmp_path, "create", str(cfg), "--storage", url).code == 0  # no training: no device needed
    stored = optuna.load_study(study_name="gpu", storage=open_storage(url)).user_attrs["motune:config"]
    for bad, message in (("tpu:0", "--device: unknown device 'tpu:0'"),
                         ("cuda", "--device: 'cuda' requested but CUDA is not available")):
        code, _, err = run_motune(tmp_path, "worker", "--storage", url, "--device", bad, "--quiet")
        assert code == 2 and err.count("\n") == 1 and message in err, err
    code, _, err = run_motune(tmp_path, "worker", "--storage", url, "--quiet")  # the stored cuda:1 is not here
    assert code == 2 and "train.device: 'cuda:1'" in err and "--device" in err
    code, _, err = run_motune(tmp_path, "worker", "--storage", url, "--device", "cpu", "--quiet", "--heartbeat", "0")
    assert code == 0, err
    study = optuna.load_study(study_name="gpu", storage=open_storage(url))
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]
    assert study.user_attrs["motune:config"] == stored and stored["train"]["device"] == "cuda:1"
    # The study's own file with another device is still the study's file (a local choice).
    cfg.write_text(cfg.read_text().replace('device = "cuda:1"', 'device = "cpu"'))
    code, _, err = run_motune(tmp_path, "worker", "--storage", url, "--config", str(cfg), "--quiet", "--heartbeat", "0")
    assert code == 0, err


# ----------------------------------------------------------------------------- worker processes


def test_start_method_forks_only_where_it_is_known_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(START_ENV, raising=False)
    assert start_method(["cpu", "cpu"], 1, runs_user_code=False) == "fork"
    assert start_method(["auto", "auto"], 1, runs_user_code=False) == "fork"  # worker_device keeps "auto" only without GPUs
    assert start_method(["cpu", "cpu"], 2, runs_user_code=False) == "spawn"  # would meet the parent's OpenMP pool
    assert start_method(["cpu", "cpu"], None, runs_user_code=False) == "spawn"  # torch's default threads
    assert start_method(["cuda:0", "cuda:1"], 1, runs_user_code=False) == "spawn"
    assert start_method(["cpu", "cpu"], 1, runs_user_code=True) == "spawn"  # the user's code ran in this process
    release = threading.Event()
    other = threading.Thread(target=release.wait)  # another Python thread could hold a lock the child needs
    other.start()
    try:
        assert start_method(["cpu", "cpu"], 1, runs_user_code=False) == "spawn"
    finally:
        release.set()
        other.join()
    assert start_method(["cpu", "cpu"], 1, runs_user_code=False) == "fork"
    monkeypatch.setattr(motune.workers.sys, "platform", "darwin")
    assert start_method(["cpu", "cpu"], 1, runs_user_code=False) == "spawn"
    monkeypatch.undo()
    monkeypatch.setenv(START_ENV, "spawn")
    assert start_method(["cpu", "cpu"], 1, runs_user_code=False) == "spawn"
    monkeypatch.setenv(START_ENV, "fork-anyway")
    with pytest.raises(ValueError, match=START_ENV):
        start_method(["cpu", "cpu"], 1, runs_user_code=False)


def test_a_bad_worker_start_setting_exits_2_before_anything_is_written(tmp_path: Path, run_motune,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_config(tmp_path, "badstart", n_trials=2, baselines="")
    monkeypatch.setenv(START_ENV, "threads")
    code, _, err = run_motune(tmp_path, "run", str(cfg), "--workers", "2", "--quiet")
    assert code == 2 and err.count("\n") == 1 and START_ENV in err and "'threads'" in err and "spawn" in err, err
    assert not (tmp_path / "badstart.journal").exists()


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_two_local_workers_default_to_a_journal_file(tmp_path: Path, run_motune, monkeypatch: pytest.MonkeyPatch,
                                                     start: str) -> None:
    """Forked from the run process by default (CPU, one thread each), fresh processes with ``spawn``; the same study."""
    monkeypatch.setenv(START_ENV, start)
    forks: list[int] = []
    real_fork = os.fork

    def counting_fork() -> int:
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(motune.workers.os, "fork", counting_fork)
    cfg = tiny_config(tmp_path, "pair", n_trials=3, baselines="")
    code, _, err = run_motune(tmp_path, "run", str(cfg), "--workers", "2", "--threads", "1", "--quiet",
                              "--heartbeat", "1", "--grace", "4")
    assert code == 0, err
    assert (tmp_path / "pair.journal").is_file() and any((tmp_path / "pair-artifacts").iterdir())
    study = optuna.load_study(study_name="pair", storage=open_storage(f"journal:{tmp_path / 'pair.journal'}"))
    assert_study_finished(study, 3)
    # Both workers trained: every completed trial names its worker, and there are two of them.
    workers = {t.system_attrs[WORKER_ATTR]["pid"] for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(workers) == 2, workers
    # (auto forks here: CPU, one thread each, no user code, and no other Python thread in this test process)
    assert workers == set(forks) if start == "auto" else forks == [], (workers, forks, threading.enumerate())


SLOW = """
[study]
name = "{name}"
n_trials = 4
baselines = []
prune = false

[data]
limit = 400

[train]
epochs = 200
front_epochs = 200
"""


def test_sigterm_to_run_stops_its_forked_workers_once_and_requeues_their_trials(tmp_path: Path) -> None:
    """``motune run --workers 2`` (forked workers) gets SIGTERM while both train: each worker's trial is
    FAIL "interrupted by SIGTERM" and queued again, the run exits 143 with one line, no worker is left."""
    name = f"term-{uuid.uuid4().hex[:6]}"
    (tmp_path / "slow.toml").write_text(SLOW.format(name=name))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(START_ENV, None)
    cmd = [sys.executable, "-m", "motune.cli", "run", "slow.toml", "--workers", "2", "--threads", "1", "--quiet",
           "--heartbeat", "1", "--grace", "4"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = open_storage(f"journal:{tmp_path / f'{name}.journal'}")

    def two_training() -> list[optuna.trial.FrozenTrial]:
        if not (tmp_path / f"{name}.journal").exists():
            return []
        try:
            running = optuna.load_study(study_name=name, storage=storage).get_trials(states=(TrialState.RUNNING,))
        except KeyError:
            return []
        training = [t for t in running if HEARTBEAT_ATTR in t.system_attrs]
        return training if len({t.system_attrs[WORKER_ATTR]["pid"] for t in training}) == 2 else []

    try:
        deadline = time.monotonic() + 120
        while not (training := two_training()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
            time.sleep(0.1)
        pids = {t.system_attrs[WORKER_ATTR]["pid"] for t in training}
        for pid in pids:  # forked: children of the run process, running its command line
            status = Path(f"/proc/{pid}/status").read_text()
            assert f"PPid:\t{proc.pid}\n" in status
            assert b"run\0slow.toml" in Path(f"/proc/{pid}/cmdline").read_bytes()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted by SIGTERM" in lines[0] and "stopped 2 workers" in lines[0], err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    trials = {t.number: t for t in optuna.load_study(study_name=name, storage=storage).get_trials()}
    for t in training:
        failed = trials[t.number]
        assert failed.state == TrialState.FAIL and failed.user_attrs["fail_reason"] == "interrupted by SIGTERM"
        again = [u for u in trials.values() if u.state == TrialState.WAITING and u.params == failed.params]
        assert len(again) == 1, [(u.number, u.state.name, u.params) for u in trials.values()]
    assert TrialState.RUNNING not in {t.state for t in trials.values()}


OPENMP_THEN_RUN = """
import os, sys
import torch
torch.set_num_threads(2)
x = torch.randn(4_000_000)
(x * 2).sin().sum()  # a multi-threaded op: GNU OpenMP's thread pool now exists in this process
import motune.workers
from motune.cli import main
forks = []
real_fork = os.fork
def counting_fork():
    pid = real_fork()
    if pid:
        forks.append(pid)
    return pid
motune.workers.os.fork = counting_fork
code = main(["run", "tiny.toml", "--workers", "2", "--threads", "1", "--quiet", "--heartbeat", "1", "--grace", "4"])
print("forks", len(forks))
sys.exit(code)
"""


def test_workers_forked_after_multithreaded_torch_ops_do_not_hang(tmp_path: Path) -> None:
    """In-process ``run --workers 2`` after this process ran OpenMP ops: the one-thread workers it forks finish."""
    (tmp_path / "tiny.toml").write_text(TINY.format(name="omp", n_trials=2, baselines=""))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop(START_ENV, None)
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", OPENMP_THEN_RUN], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)  # a hang would be a deadlock, not a slow machine
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "forks 2"
    study = optuna.load_study(study_name="omp", storage=open_storage(f"journal:{tmp_path / 'omp.journal'}"))
    assert_study_finished(study, 2)


@pytest.fixture(params=["postgresql", "mysql", "redis"])
def shared_server(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """``(storage URL, unique study name)`` on a real server, or skip saying why; the study is removed afterwards."""
    name = f"motune-test-{uuid.uuid4().hex[:12]}"
    if request.param in ("postgresql", "mysql"):
        url = postgres_url() if request.param == "postgresql" else mysql_url()
        yield url, name
        try:
            optuna.delete_study(study_name=name, storage=open_storage(url))
        except KeyError:
            pass
    else:
        client = redis_client()
        yield f"{REDIS_URL}?prefix={name}", name
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)


def test_three_workers_on_a_shared_server(tmp_path: Path, run_motune, shared_server: tuple[str, str]) -> None:
    url, name = shared_server
    cfg = tiny_config(tmp_path, name)
    code, _, err = run_motune(tmp_path, "run", str(cfg), "--workers", "3", "--storage", url, "--quiet",
                              "--artifacts", str(tmp_path / "artifacts"), "--heartbeat", "2", "--grace", "6")
    assert code == 0, err
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    assert_study_finished(study, 6)
    assert study.user_attrs["motune:config"]["study"]["name"] == name


def test_with_continuation_two_workers_run_the_one_worker_search_and_its_knee(tmp_path: Path, run_motune) -> None:
    """Issue 12 with continuation on (the default): the same knee, and the same networks on the search's path.

    A trial's parent and seed follow its λ (``knee:parent_weight``, ``trial_seed``), not which
    trials had finished when it started nor its trial number; one torch thread each, so the
    path's front trials come out bitwise alike.
    """
    studies = {}
    for n in (1, 2):
        cwd = tmp_path / f"w{n}"
        cwd.mkdir()
        cfg = tiny_config(cwd, "same", n_trials=40, baselines="")  # the search converges within (16 trials at 1 worker)
        url = f"journal:{cwd / 'same.journal'}"
        code, _, err = run_motune(cwd, "run", str(cfg), "--workers", str(n), "--threads", "1", "--quiet",
                                  "--storage", url)
        assert code == 0, err
        studies[n] = optuna.load_study(study_name="same", storage=open_storage(url))
    one, two = studies[1], studies[2]
    assert all(t.user_attrs.get("warm_start_from") is not None for t in one.trials
               if t.state == TrialState.COMPLETE and t.params.get("l1_weight", 0.0) > 0.0)  # continuation was on
    path = {(t.params["l1_weight"], KneeSampler.fidelity(t)): t for t in one.trials if t.state == TrialState.COMPLETE}
    for t in two.trials:
        twin = path.get((t.params.get("l1_weight"), KneeSampler.fidelity(t)))
        if t.state == TrialState.COMPLETE and twin is not None:
            assert t.values == pytest.approx(twin.values, rel=1e-5), (t.number, twin.number)
            assert t.user_attrs["seed"] == twin.user_attrs["seed"]
    knee1, knee2 = motune.study.knee_trial(one), motune.study.knee_trial(two)
    assert knee1 is not None and knee2 is not None
    assert knee2.params["l1_weight"] == knee1.params["l1_weight"] and KneeSampler.fidelity(knee2) == "full"
    assert abs(knee2.user_attrs["val_accuracy"] - knee1.user_attrs["val_accuracy"]) <= 0.01
    assert abs(knee2.user_attrs["nonzeros"] - knee1.user_attrs["nonzeros"]) <= 0.1 * knee1.user_attrs["nonzeros"]
