"""A Redis that saves nothing to disk loses the study journal at its restart: motune says so, once.

The local test server (127.0.0.1:6379) runs with ``--save "" --appendonly no``. These
tests only read its configuration (``CONFIG GET``); other tests share the server, so
nothing here changes it. Branches a live server cannot show (persistence on, CONFIG
forbidden, unreachable) run against a stand-in client.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from servers import REDIS_URL, redis_client

from motune import storage as storage_module
from motune.storage import open_storage, warn_if_redis_forgets

LOGGER = "motune.storage"


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a new process would: no server checked yet, not a child worker."""
    monkeypatch.setattr(storage_module, "_REDIS_CHECKED", set())
    monkeypatch.delenv("MOTUNE_PARENT", raising=False)


def persistence_off(client: Any) -> bool:
    try:
        config = {**client.config_get("appendonly"), **client.config_get("save")}
    except Exception as exc:  # CONFIG disabled on this server
        pytest.skip(f"CONFIG GET is not allowed on {REDIS_URL} ({exc})")
    return config.get("appendonly") != "yes" and not str(config.get("save", "")).strip()


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


def test_open_storage_warns_once_per_server(caplog: pytest.LogCaptureFixture) -> None:
    client = redis_client()
    if not persistence_off(client):
        pytest.skip(f"the Redis at {REDIS_URL} persists (appendonly or save is set): nothing to warn about")
    prefix = f"motune-test-{uuid.uuid4().hex}"
    caplog.set_level(logging.WARNING, logger=LOGGER)
    open_storage(f"{REDIS_URL}?prefix={prefix}")
    (message,) = warnings_of(caplog)
    assert "127.0.0.1:6379" in message and "saves nothing to disk" in message
    assert "appendonly yes" in message and "save" in message and "\n" not in message
    # The same server again (another database, another prefix): no second warning.
    open_storage(f"redis://127.0.0.1:6379/1?prefix={prefix}-b")
    assert len(warnings_of(caplog)) == 1
    assert client.keys(f"{prefix}*") == []  # opening wrote nothing
    assert persistence_off(client)  # and the server's settings are as they were


def test_cli_shows_the_warning_as_one_line(tmp_path: Path) -> None:
    """Through the command: one clean line on stderr, then the command's own answer."""
    client = redis_client()
    if not persistence_off(client):
        pytest.skip(f"the Redis at {REDIS_URL} persists (appendonly or save is set): nothing to warn about")
    prefix = f"motune-test-{uuid.uuid4().hex}"
    env = {k: v for k, v in os.environ.items() if k not in ("MOTUNE_PARENT", "MOTUNE_STORAGE")}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "motune.cli", "status", "--storage", f"{REDIS_URL}?prefix={prefix}", "--study", "nope"],
            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
        )
    finally:
        keys = client.keys(f"{prefix}*")
        if keys:
            client.delete(*keys)
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr
    warned = [line for line in lines if "saves nothing to disk" in line]
    assert len(warned) == 1, proc.stderr
    assert warned[0].startswith("motune: warning: ") and "appendonly yes" in warned[0]
    assert proc.returncode == 2 and "nope" in lines[-1]  # the study does not exist: the usual answer


class FakeRedis:
    """Stands in for ``redis.Redis``: answers CONFIG GET from a dict, or raises."""

    calls = 0

    def __init__(self, config: dict[str, str] | None = None, error: Exception | None = None) -> None:
        self.config, self.error = config or {}, error

    def config_get(self, name: str) -> dict[str, str]:
        FakeRedis.calls += 1
        if self.error is not None:
            raise self.error
        return {name: self.config[name]} if name in self.config else {}

    def close(self) -> None:
        pass


def use_fake(monkeypatch: pytest.MonkeyPatch, fake: FakeRedis) -> None:
    redis = pytest.importorskip("redis", reason="redis is not installed (pip install 'motune[redis]')")
    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(lambda *args, **kwargs: fake))
    FakeRedis.calls = 0


@pytest.mark.parametrize(
    ("config", "warns"),
    [
        ({"appendonly": "no", "save": ""}, True),
        ({"appendonly": "yes", "save": ""}, False),
        ({"appendonly": "no", "save": "3600 1 300 100 60 10000"}, False),
        ({}, False),  # a Redis-compatible server without these settings: unknown, say nothing
    ],
)
def test_what_counts_as_persistent(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, config: dict[str, str], warns: bool
) -> None:
    use_fake(monkeypatch, FakeRedis(config))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert warn_if_redis_forgets("redis://db.example.org:6380/0?prefix=x") is warns
    assert len(warnings_of(caplog)) == int(warns)
    if warns:
        assert "redis://db.example.org:6380" in warnings_of(caplog)[0]


def test_config_forbidden_or_server_unreachable_says_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    redis = pytest.importorskip("redis", reason="redis is not installed (pip install 'motune[redis]')")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for i, error in enumerate(
        [
            redis.exceptions.ResponseError("unknown command 'CONFIG'"),
            redis.exceptions.NoPermissionError("this user has no permissions to run the 'config' command"),
            redis.exceptions.ConnectionError("Connection refused"),
        ]
    ):
        use_fake(monkeypatch, FakeRedis(error=error))
        assert warn_if_redis_forgets(f"redis://:s3cret@host{i}.example.org:6379/0") is False
    assert warnings_of(caplog) == []


def test_asked_once_per_server_and_not_by_child_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeRedis({"appendonly": "no", "save": ""})
    use_fake(monkeypatch, fake)
    assert warn_if_redis_forgets("redis://:pw@a.example.org:6379/0")
    assert not warn_if_redis_forgets("redis://a.example.org:6379/3?prefix=other")  # same server
    assert FakeRedis.calls == 2  # appendonly and save, asked once
    assert warn_if_redis_forgets("redis://b.example.org:6379/0")  # another server
    monkeypatch.setenv("MOTUNE_PARENT", "1234")
    assert not warn_if_redis_forgets("redis://c.example.org:6379/0")  # the parent process warns
    assert FakeRedis.calls == 4


def test_password_never_shown(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    use_fake(monkeypatch, FakeRedis({"appendonly": "no", "save": ""}))
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert warn_if_redis_forgets("redis://user:s3cret@db.example.org:6379/0")
    (message,) = warnings_of(caplog)
    assert "s3cret" not in message and "user" not in message
