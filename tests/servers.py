"""The local database servers the tests use where they run, or a skip saying why (imported by test modules).

PostgreSQL, MariaDB / MySQL and Redis on 127.0.0.1 (the CI machine runs all three); a
test that needs one calls its helper and is skipped, with the reason, where it is absent.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

PG_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")
MYSQL_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
REDIS_URL = "redis://127.0.0.1:6379/0"


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def postgres_url() -> str:
    """A working PostgreSQL URL, or skip the test saying why."""
    if not port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    psycopg2 = pytest.importorskip("psycopg2", reason="psycopg2 is not installed (pip install 'motune[postgres]')")
    for url in PG_URLS:
        try:
            psycopg2.connect(url, connect_timeout=2).close()
            return url
        except psycopg2.Error:
            continue
    pytest.skip(f"PostgreSQL at 127.0.0.1:5432 refuses {', '.join(PG_URLS)}")


def mysql_url() -> str:
    """A working MySQL / MariaDB URL, or skip the test saying why."""
    if not port_open("127.0.0.1", 3306):
        pytest.skip("MySQL / MariaDB is not reachable at 127.0.0.1:3306")
    pymysql = pytest.importorskip("pymysql", reason="pymysql is not installed (pip install 'motune[mysql]')")
    try:
        pymysql.connect(host="127.0.0.1", port=3306, user="root", database="test", connect_timeout=2).close()
    except pymysql.Error as exc:
        pytest.skip(f"MySQL / MariaDB at 127.0.0.1:3306 refuses {MYSQL_URL}: {exc}")
    return MYSQL_URL


def redis_client() -> Any:
    """A Redis client on 127.0.0.1:6379, or skip the test saying why."""
    redis = pytest.importorskip("redis", reason="redis is not installed (pip install 'motune[redis]')")
    if not port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable at 127.0.0.1:6379")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at 127.0.0.1:6379 does not answer: {exc}")
    return client


def server_url(backend: str) -> str:
    """The URL of the local ``postgresql``, ``mysql`` or ``redis`` server, or skip the test saying why."""
    if backend == "postgresql":
        return postgres_url()
    if backend == "mysql":
        return mysql_url()
    redis_client().close()
    return REDIS_URL
