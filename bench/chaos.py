"""Chaos: kill, stop and cut off workers mid-study on a real storage; does the study lose anything?

N ``motune worker`` processes (default 3; each its own Python, one torch thread,
heartbeat every 1 s, grace 4 s; stdout and stderr to one log file per worker) run a
small digits study on a real storage: by default the local PostgreSQL; ``--storage``
takes a Redis journal (``redis://HOST:PORT/DB?prefix=NAME``) or a journal file. Every
run makes a fresh study (``motune create``). By default each worker records a host name
of its own (``MOTUNE_HOST=chaos-wI``), as if each ran on another machine: peers then
learn of a death from heartbeats alone, never from a pid (``--same-host`` keeps the
real host name, so a dead pid on this host is noticed at once). The harness then, in
order, waiting for each state by polling the storage (never by sleeping):

1. SIGKILL: once an original worker is mid-trial (a RUNNING trial whose system attribute
   ``motune:worker`` names its pid and that has a ``motune:heartbeat``), ``kill -9`` it,
   and start a replacement worker;
2. SIGTERM: once another original worker is mid-trial, ``kill -TERM`` it, watch the
   storage every 0.05 s until its trial is FAIL and a retry of it is queued, wait for the
   process to exit, and start a replacement;
3. restart the database server, once every live worker is mid-trial (or at least one,
   after 60 s): PostgreSQL when it is local and ``pg_ctlcluster`` can restart it
   (``pg_ctlcluster --skip-systemctl-redirect VERSION CLUSTER restart``, the cluster
   found by its port with ``pg_lsclusters``); Redis when it is local, as
   ``SHUTDOWN SAVE`` and a fresh ``redis-server`` that loads that snapshot (a Redis that
   saves nothing to disk loses the journal at any restart, which is no test of motune;
   the snapshot file is removed again once loaded when there was none before). A journal
   file has no server: skipped, and said so. During the restart the storage is read
   every 0.1 s until reads work again and every training worker has written again;
4. waits until every worker has exited (the study has ``n_trials`` COMPLETE trials or has
   converged), or the global timeout passes: then the harness reports failure, stops the
   workers (SIGTERM, then SIGKILL) and counts them as crashed.

Figures, all read after the end from the storage, the exit codes and the logs (targets 0):

- ``trials_lost``: FAIL trials with ``failure`` ``worker_lost`` or ``interrupted`` whose
  number is in no trial's ``retry_history`` and that have no study user attribute
  ``motune:result_of_trial_N`` (a result kept there counts as kept), plus trials still
  RUNNING at the end, plus retries (trials with a ``retry_history``) still WAITING at
  the end; the three parts are printed. A queued baseline that never started is not a
  result and is listed, not counted.
- ``duplicate_lambdas``: COMPLETE weighted-sum trials at front fidelity (system attribute
  ``knee:fidelity`` ``"front"`` or absent) sharing a value of the parameter
  ``l1_weight`` with an earlier one: the extra trials are counted.
- ``worker_crashes``: workers whose exit code differs from the intended one (-9 for the
  SIGKILLed worker, 143 for the SIGTERMed one, 0 for all others), hung ones included.
- ``tracebacks``: occurrences of "Traceback" in all worker logs.
- ``false_deaths`` (extra, target 0): FAIL ``worker_lost`` trials whose recorded worker
  pid is neither the SIGKILLed nor the SIGTERMed one: a live worker's trial declared dead.

Seconds (wall clock of this machine; the storage's trial timestamps are written by the
workers' clocks, on this same machine):

- SIGKILL recovery: from the ``kill`` to the killed trial's retry becoming RUNNING (the
  retry's ``datetime_start``); also to the killed trial being FAIL (``datetime_complete``),
  i.e. detection, which takes the grace period plus up to about two of a peer's trials
  (workers look for dead peers only between their trials).
- SIGTERM recovery: from the signal to the trial's retry becoming RUNNING (as above);
  also SIGTERM to "FAIL and re-queued" (the issue's target: within 2 s), the first
  storage poll (every 0.05 s) that shows the trial FAIL and a trial whose
  ``retry_history`` names it, and to the process's exit.
- restart recovery: from the start of the restart command to the moment every worker
  that was mid-trial at the restart has written to the storage again: a heartbeat made
  after the outage began (the harness's first failed read), or its trial's end after
  that. During the restart the harness reads the storage every 0.1 s without retrying,
  which also says when reads failed and when they worked again (the server's
  downtime as a client sees it, within 0.1 s), and when the first worker wrote again.

The trial of a signalled worker is the one it held when the signal landed (read again
afterwards). The harness exits 0 when a target is missed (it is a benchmark) and prints
MISSED. At the end it deletes the study from the storage (with a Redis prefix of its own
making: that prefix's keys) and the checkpoints, unless ``--keep``; the logs stay under
``bench/results/chaos/STUDY/``.

    python bench/chaos.py --quick     # 3 workers, 12 trials of 100 epochs, PostgreSQL
    python bench/chaos.py             # 3 workers, 24 trials of 150 epochs
    python bench/chaos.py --quick --storage 'redis://127.0.0.1:6379/0?prefix=chaos'
    python bench/chaos.py --quick --storage journal:/tmp/chaos.journal
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import optuna
from _common import RESULTS, load_average, machine_info, table, write_json
from optuna.trial import FrozenTrial, TrialState

from motune.faults import HEARTBEAT_ATTR, HOST_ENV, WORKER_ATTR
from motune.patience import patient
from motune.sampler import FIDELITY_ATTR, FRONT
from motune.storage import is_journal_file, mask_url, open_storage
from motune.study import completed, load_study_config, make_sampler
from motune.trials import FAIL_REASON, FAILURE, ORPHAN_ATTR_PREFIX, PARAM, RETRY_HISTORY, Failure

# ----------------------------------------------------------------------------- config

CONFIG = """
[study]
name = "{name}"
n_trials = {n_trials}
baselines = ["smgd"]  # a queued baseline is one more kind of trial to lose
full_fidelity = true

[data]
dataset = "digits"
limit = {limit}

[train]
epochs = {epochs}
front_epochs = {epochs}  # every trial the same length: a couple of seconds here
device = "cpu"
"""
SETTINGS = {  # per mode: study size, epochs per trial, global safety timeout (s)
    "quick": {"n_trials": 12, "epochs": 100, "limit": 400, "timeout": 420},
    "full": {"n_trials": 24, "epochs": 150, "limit": 400, "timeout": 900},
}
DEFAULT_STORAGE = "postgresql://postgres@127.0.0.1:5432/test"
HEARTBEAT, GRACE, PATIENCE, THREADS = 1, 4, 120, 1  # worker options: --heartbeat --grace --storage-patience --threads
POLL = 0.1  # seconds between storage reads while waiting for a state
TERM_POLL = 0.05  # ... while timing SIGTERM -> FAIL + re-queued
TERM_TARGET = 2.0  # seconds: the target for SIGTERM -> FAIL + re-queued
STATE_TIMEOUT = 120  # seconds to wait for one state (a victim mid-trial, a retry queued, the server up)
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "{port}", "--save", "",
               "--appendonly", "no", "--dir", "{dir}", "--logfile", "/var/log/redis/ci.log"]
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1", "")


# ----------------------------------------------------------------------------- helpers


def now() -> float:
    return time.time()


def seconds_since(t0: float, when: datetime | float | None) -> float | None:
    if when is None:
        return None
    stamp = when.timestamp() if isinstance(when, datetime) else float(when)
    return round(stamp - t0, 3)


def storage_kind(url: str) -> str:
    if is_journal_file(url):
        return "journal file"
    scheme = urlsplit(url).scheme.split("+")[0]
    return {"postgresql": "postgresql", "postgres": "postgresql", "redis": "redis", "rediss": "redis"}.get(scheme, scheme)


def with_prefix(url: str, stamp: str) -> str:
    """A Redis URL with a ``prefix`` of its own (kept if given)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("prefix", f"chaos-{stamp}")
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    log: Path
    role: str  # "original" or "replacement"
    started: float
    fault: str | None = None  # "SIGKILL" / "SIGTERM": what the harness did to it
    hung: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def expected(self) -> int:
        return {"SIGKILL": -signal.SIGKILL, "SIGTERM": 128 + signal.SIGTERM}.get(self.fault or "", 0)


@dataclass
class Run:
    """One chaos run: the study, its workers, the faults and what was seen."""

    url: str
    name: str
    n_trials: int
    workers_n: int
    same_host: bool
    directory: Path
    deadline: float
    t0: float = field(default_factory=now)
    workers: list[Worker] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    study: optuna.Study | None = None

    # ---------------------------------------------------------------- processes

    def log(self, text: str) -> None:
        print(f"[{now() - self.t0:7.1f} s] {text}", flush=True)

    def start_worker(self, role: str) -> Worker:
        index = len(self.workers)
        log = self.directory / f"worker-{index}.log"
        env = {**os.environ, "MOTUNE_STORAGE": self.url, "PYTHONUNBUFFERED": "1"}
        if not self.same_host:
            env[HOST_ENV] = f"chaos-w{index}"
        command = [sys.executable, "-m", "motune.cli", "worker", "--study", self.name, "--quiet",
                   "--heartbeat", str(HEARTBEAT), "--grace", str(GRACE), "--threads", str(THREADS),
                   "--storage-patience", str(PATIENCE), "--artifacts", str(self.directory / "artifacts"),
                   "--worker-index", str(index)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        worker = Worker(index, proc, log, role, now())
        self.workers.append(worker)
        self.log(f"started worker {index} ({role}), pid {proc.pid}")
        return worker

    def live(self) -> list[Worker]:
        return [w for w in self.workers if w.proc.poll() is None]

    # ---------------------------------------------------------------- storage

    def trials(self) -> list[FrozenTrial]:
        assert self.study is not None
        return self.study.get_trials(deepcopy=False)

    def mid_trial(self) -> dict[int, FrozenTrial]:
        """pid -> the RUNNING trial that pid trains and that has a heartbeat."""
        out = {}
        for t in self.trials():
            worker = t.system_attrs.get(WORKER_ATTR) or {}
            if t.state == TrialState.RUNNING and HEARTBEAT_ATTR in t.system_attrs and isinstance(worker.get("pid"), int):
                out[worker["pid"]] = t
        return out

    def wait_for(self, what: str, check: Any, timeout: float = STATE_TIMEOUT, poll: float = POLL) -> Any:
        """Poll ``check()`` until it returns something truthy; None after ``timeout``, the deadline, or no live worker."""
        end = min(now() + timeout, self.deadline)
        while now() < end:
            value = check()
            if value:
                return value
            if not self.live():
                self.log(f"gave up waiting for {what}: no worker is running")
                return None
            time.sleep(poll)
        self.log(f"gave up waiting for {what}: {timeout:g} s passed" if now() < self.deadline else
                 f"gave up waiting for {what}: global timeout")
        return None

    def pick_victim(self, fault: str) -> tuple[Worker, FrozenTrial] | None:
        """Wait for an original, not yet faulted worker to be mid-trial."""
        candidates = [w for w in self.workers if w.role == "original" and w.fault is None]

        def check() -> tuple[Worker, FrozenTrial] | None:
            running = self.mid_trial()
            for w in candidates:
                if w.proc.poll() is None and w.pid in running:
                    return w, running[w.pid]
            return None

        return self.wait_for(f"a worker mid-trial to {fault}", check)

    def retry_of(self, number: int) -> FrozenTrial | None:
        """The first trial whose ``retry_history`` names trial ``number``."""
        for t in self.trials():
            if number in t.system_attrs.get(RETRY_HISTORY, []):
                return t
        return None

    # ---------------------------------------------------------------- faults

    def held_by(self, pid: int) -> list[FrozenTrial]:
        """Trials that worker ``pid`` claimed (its ``motune:worker`` attribute; retries do not copy it)."""
        return [t for t in self.trials() if (t.system_attrs.get(WORKER_ATTR) or {}).get("pid") == pid]

    def sigkill(self) -> None:
        picked = self.pick_victim("SIGKILL")
        if picked is None:
            self.faults.append({"fault": "SIGKILL", "injected": False, "why": "no worker was mid-trial"})
            return
        worker, trial = picked
        worker.fault = "SIGKILL"
        at = now()
        os.kill(worker.pid, signal.SIGKILL)
        worker.proc.wait()
        # The trial it held when the signal landed (the one picked, unless that one finished just before).
        held = [t for t in self.held_by(worker.pid) if t.state == TrialState.RUNNING]
        number = held[0].number if held else None
        self.log(f"SIGKILL worker {worker.index} (pid {worker.pid}) training trial {number}" if held else
                 f"SIGKILL worker {worker.index} (pid {worker.pid}): it held no trial (trial {trial.number} ended first)")
        self.faults.append({"fault": "SIGKILL", "injected": True, "worker": worker.index, "pid": worker.pid,
                            "trial": number, "picked_trial": trial.number, "at": at, "at_s": round(at - self.t0, 3)})
        self.start_worker("replacement")

    def sigterm(self) -> None:
        picked = self.pick_victim("SIGTERM")
        if picked is None:
            self.faults.append({"fault": "SIGTERM", "injected": False, "why": "no worker was mid-trial"})
            return
        worker, trial = picked
        worker.fault = "SIGTERM"
        at = now()
        worker.proc.send_signal(signal.SIGTERM)
        self.log(f"SIGTERM worker {worker.index} (pid {worker.pid}) training trial {trial.number}")

        def requeued() -> FrozenTrial | str | None:
            """The worker's trial once it is FAIL and a retry of it is queued ("none" if it exited holding none)."""
            exited = worker.proc.poll() is not None
            mine = [t for t in self.held_by(worker.pid) if t.state in (TrialState.RUNNING, TrialState.FAIL)
                    and t.user_attrs.get(FAILURE) in (None, Failure.INTERRUPTED.value)]
            for t in mine:
                if t.state == TrialState.FAIL and self.retry_of(t.number):
                    return t
            return "none" if exited and not [t for t in mine if t.state == TrialState.RUNNING] else None

        seen = self.wait_for("the SIGTERMed worker's trial FAIL and re-queued", requeued, timeout=30, poll=TERM_POLL)
        seen_at = now() if isinstance(seen, FrozenTrial) else None
        try:
            worker.proc.wait(timeout=60)
            exited = now()
        except subprocess.TimeoutExpired:
            exited = None
        number = seen.number if isinstance(seen, FrozenTrial) else None
        self.log(f"trial {number} FAIL and re-queued {seen_at - at:.2f} s after SIGTERM" if seen_at else
                 f"no trial of worker {worker.index} was FAIL and re-queued within 30 s of SIGTERM")
        self.faults.append({"fault": "SIGTERM", "injected": True, "worker": worker.index, "pid": worker.pid,
                            "trial": number, "picked_trial": trial.number, "at": at, "at_s": round(at - self.t0, 3),
                            "fail_and_requeued_seen_s": None if seen_at is None else round(seen_at - at, 3),
                            "exit_s": None if exited is None else round(exited - at, 3)})
        self.start_worker("replacement")

    def restart(self, enabled: bool) -> None:
        server = Server.for_url(self.url, enabled)
        if server.skip:
            self.log(f"database restart skipped: {server.skip}")
            self.faults.append({"fault": "restart", "injected": False, "why": server.skip})
            return

        def all_mid_trial() -> dict[int, FrozenTrial] | None:
            running = self.mid_trial()
            mine = {w.pid: running[w.pid] for w in self.live() if w.pid in running}
            return mine if mine and len(mine) == len(self.live()) else None

        mine = self.wait_for("every live worker mid-trial", all_mid_trial, timeout=60)
        if mine is None:
            running = self.mid_trial()
            mine = {w.pid: running[w.pid] for w in self.live() if w.pid in running}
        if not mine:
            self.faults.append({"fault": "restart", "injected": False, "why": "no worker was mid-trial"})
            return
        trials_before = len(self.trials())
        raw = optuna.load_study(study_name=self.name, storage=open_storage(self.url))  # no patience: a failed read is "down"
        ids = {t._trial_id: t.number for t in mine.values()}
        result: dict[str, Any] = {}
        at = now()
        self.log(f"restarting {server.describe} while {len(mine)} worker(s) train trials {sorted(ids.values())}")
        thread = threading.Thread(target=lambda: result.update(server.restart()), daemon=True)
        thread.start()
        # Watch while the command runs: when reads fail (down), when they work again (up), and when each
        # trial that trained through it is written again: a heartbeat made after the outage began, or its end.
        down_at = up_at = done_at = None
        back: dict[int, float] = {}
        idle: set[int] = set()  # ended before the outage: not training through it
        end = min(at + STATE_TIMEOUT, self.deadline)
        while now() < end:
            seen = now()
            if done_at is None and not thread.is_alive():
                done_at = seen
            try:
                frozen = {tid: raw._storage.get_trial(tid) for tid in ids}
            except Exception:
                down_at = down_at or seen
                time.sleep(POLL)
                continue
            if up_at is None and (down_at is not None or done_at is not None):
                up_at = seen
            ref = down_at or done_at  # a write made after this came after the outage began
            if up_at is not None and ref is not None:
                for tid, t in frozen.items():
                    number, beat = ids[tid], t.system_attrs.get(HEARTBEAT_ATTR)
                    if number in back or number in idle:
                        continue
                    if t.state != TrialState.RUNNING:
                        if t.datetime_complete is not None and t.datetime_complete.timestamp() > ref:
                            back[number] = seen
                        else:
                            idle.add(number)
                    elif isinstance(beat, (int, float)) and beat > ref:
                        back[number] = seen
                if done_at is not None and len(back) + len(idle) == len(ids):
                    break
            time.sleep(POLL)
        thread.join(timeout=STATE_TIMEOUT)
        self.log(f"server answered again {up_at - at:.2f} s after the restart began; "
                 f"{len(back)} of {len(ids) - len(idle)} training workers wrote again" if up_at else "server did not come back")

        def since(t: float | None) -> float | None:
            return None if t is None else round(t - at, 3)

        record: dict[str, Any] = {
            "fault": "restart", "injected": True, "server": server.describe, **result, "at": at, "at_s": round(at - self.t0, 3),
            "trials": sorted(ids.values()), "ended_before_outage": sorted(idle),
            "command_s": since(done_at), "reads_failed_from_s": since(down_at), "server_up_s": since(up_at),
            "first_write_s": since(min(back.values())) if back else None,
            "all_back_s": since(max(back.values())) if back and len(back) + len(idle) == len(ids) else None,
            "back_s": {str(n): since(v) for n, v in sorted(back.items())},
        }
        if up_at is not None:
            server.after_up()
            record["trials_before"] = trials_before
            record["trials_readable_after"] = len(self.trials())
        self.faults.append(record)

    # ---------------------------------------------------------------- end

    def wait_all(self) -> bool:
        """Wait for every worker to exit; at the deadline stop the rest. True if all exited by themselves."""
        while self.live() and now() < self.deadline:
            time.sleep(0.5)
        hung = self.live()
        for w in hung:
            w.hung = True
            self.log(f"global timeout: worker {w.index} (pid {w.pid}) still running; SIGTERM")
            w.proc.send_signal(signal.SIGTERM)
        for w in hung:
            try:
                w.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
        return not hung

    def stop_all(self) -> None:
        for w in self.live():
            w.proc.kill()
            w.proc.wait()


class Server:
    """The database server behind a storage URL, and how (or whether) to restart it."""

    def __init__(self, url: str, kind: str, skip: str = "", describe: str = "") -> None:
        self.url, self.kind, self.skip, self.describe = url, kind, skip, describe
        self.host, self.port = "", 0
        self.cluster: tuple[str, str] | None = None
        self.redis_dump: Path | None = None
        self.redis_dump_existed = True

    @classmethod
    def for_url(cls, url: str, enabled: bool) -> Server:
        kind = storage_kind(url)
        if kind == "journal file":
            return cls(url, kind, skip="a journal file has no server to restart")
        if kind not in ("postgresql", "redis"):
            return cls(url, kind, skip=f"restarting a {kind} server is not supported")
        parts = urlsplit(url)
        server = cls(url, kind)
        server.host, server.port = parts.hostname or "", parts.port or (5432 if kind == "postgresql" else 6379)
        if not enabled:
            server.skip = "--no-restart"
        elif server.host not in LOCAL_HOSTS:
            server.skip = f"{kind} server {server.host} is not on this machine"
        elif kind == "postgresql":
            server.cluster = pg_cluster(server.port)
            if server.cluster is None:
                server.skip = f"no local PostgreSQL cluster online on port {server.port} (pg_lsclusters)"
            elif shutil.which("pg_ctlcluster") is None:
                server.skip = "pg_ctlcluster not found"
            else:
                server.describe = f"PostgreSQL {server.cluster[0]}/{server.cluster[1]} (port {server.port})"
        elif shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            server.skip = "redis-server / redis-cli not found"
        else:
            server.describe = f"Redis on port {server.port} (SHUTDOWN SAVE, restart, snapshot loaded)"
        return server

    def restart(self) -> dict[str, Any]:
        if self.kind == "postgresql":
            assert self.cluster is not None
            command = ["pg_ctlcluster", "--skip-systemctl-redirect", *self.cluster, "restart"]
            done = subprocess.run(command, capture_output=True, text=True, timeout=STATE_TIMEOUT)
            return {"command": " ".join(command), "rc": done.returncode, "output": (done.stdout + done.stderr).strip()}
        cli = ["redis-cli", "-h", self.host or "127.0.0.1", "-p", str(self.port)]
        directory = subprocess.run([*cli, "--raw", "CONFIG", "GET", "dir"], capture_output=True, text=True).stdout.split()
        name = subprocess.run([*cli, "--raw", "CONFIG", "GET", "dbfilename"], capture_output=True, text=True).stdout.split()
        folder = directory[1] if len(directory) > 1 else "/var/lib/redis"
        self.redis_dump = Path(folder, name[1] if len(name) > 1 else "dump.rdb")
        self.redis_dump_existed = self.redis_dump.exists()
        stop = subprocess.run([*cli, "SHUTDOWN", "SAVE"], capture_output=True, text=True)
        for _ in range(100):  # the port is free once the old server is gone
            if subprocess.run([*cli, "PING"], capture_output=True, text=True).returncode != 0:
                break
            time.sleep(0.1)
        start = [part.format(port=self.port, dir=folder) for part in REDIS_START]
        began = subprocess.run(start, capture_output=True, text=True)
        command = f"{' '.join(cli)} SHUTDOWN SAVE; {' '.join(repr(p) if not p else p for p in start)}"
        return {"command": command, "rc": began.returncode,
                "output": (stop.stdout + stop.stderr + began.stdout + began.stderr).strip()}

    def after_up(self) -> None:
        """Leave the Redis machine as found: no snapshot file where there was none."""
        if self.kind == "redis" and self.redis_dump is not None and not self.redis_dump_existed:
            self.redis_dump.unlink(missing_ok=True)


def pg_cluster(port: int) -> tuple[str, str] | None:
    """(version, cluster name) of the online local PostgreSQL cluster on ``port``."""
    try:
        out = subprocess.run(["pg_lsclusters", "-h"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    for line in out.splitlines():
        cols = line.split()
        if len(cols) >= 4 and cols[2] == str(port) and cols[3].startswith("online"):
            return cols[0], cols[1]
    return None


# ----------------------------------------------------------------------------- accounting


def account(run: Run, finished: bool) -> dict[str, Any]:
    """The figures, from the storage, the exit codes and the logs."""
    assert run.study is not None
    study = run.study
    trials = run.trials()
    user_attrs = study.user_attrs
    kept = sorted(int(k.removeprefix(ORPHAN_ATTR_PREFIX)) for k in user_attrs if k.startswith(ORPHAN_ATTR_PREFIX))
    retried = {n for t in trials for n in t.system_attrs.get(RETRY_HISTORY, [])}
    requeuable = (Failure.WORKER_LOST.value, Failure.INTERRUPTED.value)
    fail_lost = [t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(FAILURE) in requeuable
                 and t.number not in retried and t.number not in kept]
    running_left = [t.number for t in trials if t.state == TrialState.RUNNING]
    waiting_retries = [t.number for t in trials if t.state == TrialState.WAITING and RETRY_HISTORY in t.system_attrs]
    waiting_never_started = [t.number for t in trials if t.state == TrialState.WAITING and RETRY_HISTORY not in t.system_attrs]

    by_lambda: dict[float, list[int]] = {}
    for t in trials:
        if t.state == TrialState.COMPLETE and PARAM in t.params and t.system_attrs.get(FIDELITY_ATTR, FRONT) == FRONT:
            by_lambda.setdefault(float(t.params[PARAM]), []).append(t.number)
    duplicates = {repr(lam): numbers for lam, numbers in by_lambda.items() if len(numbers) > 1}

    killed = {f["pid"] for f in run.faults if f["fault"] in ("SIGKILL", "SIGTERM") and f.get("injected")}
    false_deaths = [t.number for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(FAILURE) == Failure.WORKER_LOST
                    and (t.system_attrs.get(WORKER_ATTR) or {}).get("pid") not in killed]

    workers = []
    for w in run.workers:
        text = w.log.read_text(errors="replace")
        code = w.proc.returncode
        workers.append({
            "index": w.index, "pid": w.pid, "role": w.role, "fault": w.fault, "exit_code": code, "expected": w.expected,
            "crashed": w.hung or code != w.expected, "hung": w.hung, "tracebacks": text.count("Traceback"),
            "outage_lines": text.count("storage unreachable"), "failed_elsewhere_lines": text.count("failed elsewhere"),
            "log": str(w.log), "last_lines": text.strip().splitlines()[-3:],
        })

    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    config = load_study_config(study)
    done = len(completed(study))
    converged = make_sampler(config).is_converged(study)
    fails = [{"trial": t.number, "failure": t.user_attrs.get(FAILURE), "reason": t.user_attrs.get(FAIL_REASON),
              "worker": t.system_attrs.get(WORKER_ATTR), "retried_by": [r.number for r in trials
                                                                          if t.number in r.system_attrs.get(RETRY_HISTORY, [])]}
             for t in trials if t.state == TrialState.FAIL]

    recovery = []
    for f in run.faults:
        row = dict(f)
        if f["fault"] in ("SIGKILL", "SIGTERM") and f.get("injected") and f["trial"] is None:  # it held no trial
            row.update(final_state=None, failure=None, fail_reason=None, fail_s=None, retry_trial=None,
                       retry_running_s=None, retry_state=None)
        elif f["fault"] in ("SIGKILL", "SIGTERM") and f.get("injected"):
            number = f["trial"]
            trial = next(t for t in trials if t.number == number)
            retries = [t for t in trials if number in t.system_attrs.get(RETRY_HISTORY, []) and t.datetime_start]
            first = min(retries, key=lambda t: t.datetime_start) if retries else None
            row.update(final_state=trial.state.name, failure=trial.user_attrs.get(FAILURE),
                       fail_reason=trial.user_attrs.get(FAIL_REASON),
                       fail_s=seconds_since(f["at"], trial.datetime_complete) if trial.state == TrialState.FAIL else None,
                       retry_trial=first.number if first else None,
                       retry_running_s=seconds_since(f["at"], first.datetime_start) if first else None,
                       retry_state=first.state.name if first else None)
        if f["fault"] == "restart" and f.get("injected"):
            after = [t.datetime_complete for t in trials if t.state == TrialState.COMPLETE and t.datetime_complete
                     and t.datetime_complete.timestamp() > f["at"] + (f.get("server_up_s") or 0)]
            row["next_complete_s"] = seconds_since(f["at"], min(after)) if after else None
        recovery.append(row)

    return {
        "finished": finished,
        "states": states,
        "completed": done,
        "n_trials": run.n_trials,
        "converged": converged,
        "study_done": done >= run.n_trials or converged,
        "trials_lost": len(fail_lost) + len(running_left) + len(waiting_retries),
        "lost_parts": {"fail_without_retry_or_kept_result": fail_lost, "running_at_end": running_left,
                       "retries_waiting_at_end": waiting_retries},
        "queued_never_started": waiting_never_started,
        "results_kept_in_study_attrs": kept,
        "duplicate_lambdas": sum(len(v) - 1 for v in duplicates.values()),
        "duplicates": duplicates,
        "worker_crashes": sum(1 for w in workers if w["crashed"]),
        "tracebacks": sum(w["tracebacks"] for w in workers),
        "false_deaths": len(false_deaths),
        "false_death_trials": false_deaths,
        "fail_trials": fails,
        "trials": [{"number": t.number, "state": t.state.name, "kind": t.user_attrs.get("kind", "weighted_sum"),
                    PARAM: t.params.get(PARAM), "fidelity": t.system_attrs.get(FIDELITY_ATTR),
                    "retry_history": t.system_attrs.get(RETRY_HISTORY), "worker": t.system_attrs.get(WORKER_ATTR),
                    "start_s": seconds_since(run.t0, t.datetime_start), "end_s": seconds_since(run.t0, t.datetime_complete)}
                   for t in trials],
        "workers": workers,
        "faults": recovery,
    }


# ----------------------------------------------------------------------------- report


def report(result: dict[str, Any], settings: dict[str, Any]) -> list[str]:
    """Print the tables; return the missed targets."""
    faults = {f["fault"]: f for f in result["faults"]}
    term = faults.get("SIGTERM", {})
    term_latency = term.get("fail_and_requeued_seen_s")
    figures = [
        ("trials_lost", result["trials_lost"], 0),
        ("duplicate_lambdas", result["duplicate_lambdas"], 0),
        ("worker_crashes", result["worker_crashes"], 0),
        ("tracebacks", result["tracebacks"], 0),
        ("false_deaths (extra)", result["false_deaths"], 0),
    ]
    missed = [f"{name}={value} (target {target})" for name, value, target in figures if value != target]
    if term.get("injected") and (term_latency is None or term_latency > TERM_TARGET):
        missed.append(f"SIGTERM -> FAIL + re-queued {term_latency} s (target <= {TERM_TARGET:g} s)")
    if not result["finished"]:
        missed.append("global timeout: workers still running at the deadline")
    if not result["study_done"]:
        missed.append(f"study not done: {result['completed']} of {result['n_trials']} COMPLETE, not converged")
    skipped = [f["fault"] for f in result["faults"] if not f.get("injected")]

    rows = [[name, value, target, "ok" if value == target else "MISSED"] for name, value, target in figures]
    print()
    print(f"chaos on {settings['storage_kind']} ({settings['storage']}), study {settings['study']!r}: "
          f"{settings['workers']} workers, {settings['n_trials']} trials of {settings['epochs']} epochs on "
          f"{settings['limit']} digits; heartbeat {HEARTBEAT} s, grace {GRACE} s, "
          f"{'one host name' if settings['same_host'] else 'a host name per worker'}; "
          f"end states {result['states']}, {result['completed']} COMPLETE, converged {result['converged']}")
    print(table(rows, ["figure", "value", "target", "verdict"]))
    print()

    def s(value: Any) -> Any:
        return "never" if value is None else value

    fault_rows = []
    for f in result["faults"]:
        if not f.get("injected"):
            fault_rows.append([f["fault"], "-", "-", "-", "-", f"skipped: {f['why']}"])
        elif f["fault"] in ("SIGKILL", "SIGTERM") and f["trial"] is None:
            fault_rows.append([f["fault"], "-", f["at_s"], "-", "-", f"held no trial (trial {f['picked_trial']} ended first)"])
        elif f["fault"] == "SIGKILL":
            fault_rows.append(["SIGKILL", f["trial"], f["at_s"], s(f["fail_s"]), s(f["retry_running_s"]),
                               f"FAIL ({f['failure']}) / retry {s(f['retry_trial'])} RUNNING"])
        elif f["fault"] == "SIGTERM":
            fault_rows.append(["SIGTERM", f["trial"], f["at_s"], s(f["fail_and_requeued_seen_s"]), s(f["retry_running_s"]),
                               f"FAIL + re-queued (target <= {TERM_TARGET:g} s) / retry {s(f['retry_trial'])} RUNNING; "
                               f"exited after {s(f['exit_s'])} s"])
        else:
            fault_rows.append(["restart", ",".join(map(str, f["trials"])), f["at_s"], s(f.get("server_up_s")),
                               s(f.get("all_back_s")),
                               f"reads fail {s(f.get('reads_failed_from_s'))} s, work {s(f.get('server_up_s'))} s / all "
                               f"{len(f['trials']) - len(f['ended_before_outage'])} back; first {s(f.get('first_write_s'))} s, "
                               f"next COMPLETE {s(f.get('next_complete_s'))} s"])
    print(table(fault_rows, ["fault", "trial(s)", "at s", "detected s", "recovery s", "detected / recovery"]))
    print()
    print("where the figures come from:")
    parts = result["lost_parts"]
    print(f"  trials_lost = FAIL worker_lost/interrupted trials in no retry_history and not kept "
          f"{parts['fail_without_retry_or_kept_result']} + RUNNING at the end {parts['running_at_end']} + retries WAITING at "
          f"the end {parts['retries_waiting_at_end']} (final storage); kept in motune:result_of_trial_N: "
          f"{result['results_kept_in_study_attrs']}; queued, never started: {result['queued_never_started']}")
    print(f"  duplicate_lambdas = extra COMPLETE front trials per l1_weight (final storage): {result['duplicates'] or 'none'}")
    codes = ", ".join(f"w{w['index']} {w['exit_code']}" + ("*" if w["crashed"] else "") for w in result["workers"])
    print(f"  worker_crashes = exit code != intended (-9 SIGKILLed, 143 SIGTERMed, 0 others; * = crash): {codes}")
    print(f"  tracebacks = 'Traceback' in the worker logs ({Path(result['workers'][0]['log']).parent}/worker-*.log); "
          f"outage lines per worker: {[w['outage_lines'] for w in result['workers']]}")
    print(f"  false_deaths = FAIL worker_lost trials whose worker was not a signalled one: {result['false_death_trials']}")
    for f in result["fail_trials"]:
        print(f"    FAIL trial {f['trial']}: {f['failure']}, '{f['reason']}', retried by {f['retried_by'] or 'none'}")
    print("  seconds from the fault ('at s': since the harness started). recovery s: SIGKILL / SIGTERM = signal -> the "
          "trial's retry RUNNING (the retry's datetime_start in the storage); restart = restart command -> every worker "
          "that trained during it wrote again (a heartbeat made after reads began to fail, or its end; polled every 0.1 s)")
    print("  detected s: SIGKILL = signal -> trial FAIL (its datetime_complete); SIGTERM = signal -> the storage shows it "
          "FAIL and a retry queued (polled every 0.05 s); restart = restart command -> a read works again after reads failed")
    for w in result["workers"]:
        if w["crashed"] or w["tracebacks"]:
            print(f"  worker {w['index']} ({w['log']}): exit {w['exit_code']}, expected {w['expected']}; last lines:")
            for line in w["last_lines"]:
                print(f"      {line}")
    print()
    if skipped:
        print(f"not injected: {', '.join(skipped)} (see the table)")
    if missed:
        print("MISSED: " + "; ".join(missed))
    else:
        print("all targets met: 0 lost, 0 duplicate λ, 0 crashes, 0 tracebacks, SIGTERM -> FAIL + re-queued within "
              f"{TERM_TARGET:g} s")
    return missed


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 trials of 100 epochs (default: 24 of 150)")
    parser.add_argument("--workers", type=int, default=3, help="worker processes at a time (default 3, at least 2)")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, metavar="URL",
                        help=f"PostgreSQL, redis://...?prefix=NAME, or journal:FILE (default {DEFAULT_STORAGE})")
    parser.add_argument("--same-host", action="store_true", help="all workers record this host's name (pid checks apply)")
    parser.add_argument("--no-restart", action="store_true", help="do not restart the database server")
    parser.add_argument("--timeout", type=float, default=None, help="global safety timeout in seconds (default 420 / 900)")
    parser.add_argument("--keep", action="store_true", help="keep the study and the checkpoints (logs are kept anyway)")
    parser.add_argument("--json", default=str(RESULTS / "chaos.json"), help="where to write the JSON results")
    args = parser.parse_args()
    if args.workers < 2:
        parser.error("--workers: at least 2 (one is SIGKILLed, another SIGTERMed)")
    mode = SETTINGS["quick" if args.quick else "full"]
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    name = f"chaos-{stamp}"
    url = with_prefix(args.storage, stamp) if storage_kind(args.storage) == "redis" else args.storage
    directory = RESULTS / "chaos" / name
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "chaos.toml"
    config.write_text(CONFIG.format(name=name, n_trials=mode["n_trials"], epochs=mode["epochs"], limit=mode["limit"]))
    info = machine_info()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = {"storage": mask_url(url), "storage_kind": storage_kind(url), "study": name, "workers": args.workers,
                "n_trials": mode["n_trials"], "epochs": mode["epochs"], "limit": mode["limit"], "quick": args.quick,
                "heartbeat": HEARTBEAT, "grace": GRACE, "storage_patience": PATIENCE, "threads_per_worker": THREADS,
                "same_host": args.same_host, "timeout": args.timeout or mode["timeout"], "logs": str(directory)}
    print(f"chaos: study {name!r} on {mask_url(url)}; logs in {directory}", flush=True)

    created = subprocess.run([sys.executable, "-m", "motune.cli", "create", str(config), "--storage", url, "--study", name],
                             capture_output=True, text=True)
    if created.returncode != 0:
        raise SystemExit(f"motune create failed ({created.returncode}):\n{created.stdout}{created.stderr}")
    run = Run(url, name, mode["n_trials"], args.workers, args.same_host, directory,
              deadline=now() + settings["timeout"])
    run.study = optuna.load_study(study_name=name, storage=patient(open_storage(url), PATIENCE))
    finished = False
    try:
        for _ in range(args.workers):
            run.start_worker("original")
        run.sigkill()
        run.sigterm()
        run.restart(enabled=not args.no_restart)
        finished = run.wait_all()
        run.log("all workers exited" if finished else "stopped the workers at the global timeout")
    finally:
        run.stop_all()
    result = account(run, finished)
    settings["wall_seconds"] = round(now() - run.t0, 1)
    missed = report(result, settings)
    payload = {"benchmark": "chaos", "machine": info, "load_average_at_end": load_average(), "settings": settings,
               "targets": {"trials_lost": 0, "duplicate_lambdas": 0, "worker_crashes": 0, "tracebacks": 0,
                           "false_deaths": 0, "sigterm_fail_requeued_s": TERM_TARGET},
               "missed": missed, **result}
    print(f"wrote {write_json(args.json, payload)} ({settings['wall_seconds']} s)")
    if not args.keep:  # the logs stay; the checkpoints and the study go
        shutil.rmtree(directory / "artifacts", ignore_errors=True)
        if url != args.storage and storage_kind(url) == "redis":  # a prefix of our own: its keys are this study's
            import redis

            prefix = dict(parse_qsl(urlsplit(url).query))["prefix"]
            client = redis.Redis.from_url(urlunsplit(urlsplit(url)._replace(query="")))
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
        else:
            optuna.delete_study(study_name=name, storage=run.study._storage)


if __name__ == "__main__":
    main()
