"""Queue-test wiring over ``zoomq.localstack``: skip (saying why) where redis-server is missing,
and run workers with a fast heartbeat and stale time so failures are noticed in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoomq.localstack import RedisServer as _RedisServer
from zoomq.localstack import WorkerProcess, redis_server_binary, wait_for

__all__ = ["RedisServer", "Worker", "wait_for"]


def RedisServer(folder: Path, appendonly: bool = False) -> _RedisServer:
    if redis_server_binary() is None:
        pytest.skip("redis-server is not installed (make test installs it: apt-get install redis-server)")
    return _RedisServer(folder, appendonly=appendonly)


def Worker(name: str, redis_url: str, models: list[Path], log_dir: Path, env: dict | None = None,
           **options) -> WorkerProcess:
    fast = {"ZOOMQ_HEARTBEAT": "1", "ZOOMQ_STALE_AFTER": "8"}
    return WorkerProcess(name, redis_url, models, log_dir, threads=1, env={**fast, **(env or {})}, **options)
