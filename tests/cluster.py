"""Real moving parts for queue tests: a private redis-server and zoomq worker processes.

Nothing is shared with the machine's own Redis: each server runs on a free port with its own
directory. Each worker runs in its own process group, so a test can lose a whole "node" at once.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

REDIS_SERVER = "redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


class RedisServer:
    def __init__(self, folder: Path, appendonly: bool = False):
        if subprocess.run(["which", REDIS_SERVER], capture_output=True).returncode:
            pytest.skip("redis-server is not installed (make test installs it: apt-get install redis-server)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
                "--logfile", str(self.folder / "redis.log")]
        self.proc = subprocess.Popen(args)
        wait_for(self._ping, 10, "redis-server to answer")

    def _ping(self) -> bool:
        try:
            return self.client().ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: with AOF on, redis flushes and exits
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


class Worker:
    """``zoomq worker`` as a subprocess (its own process group: a node)."""

    def __init__(self, name: str, redis_url: str, models: list[Path], log_dir: Path, queues: str = "render,encode",
                 concurrency: int = 1, env: dict | None = None):
        self.name = f"{name}@{socket.gethostname()}"
        self.redis_url = redis_url
        self.log = open(Path(log_dir) / f"worker-{name}.log", "ab")
        environment = {**os.environ, "ZOOMQ_REDIS_URL": redis_url, "ZOOMQ_HEARTBEAT": "1",
                       "ZOOMQ_STALE_AFTER": "8", **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zoomq", "worker", "--name", name, "--queues", queues,
             "--concurrency", str(concurrency), "--threads", "1", "--loglevel", "INFO",
             *(["--models", *map(str, models)] if models else [])],
            env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: client.exists(f"zoomq:worker:{self.name}") or self.proc.poll() is not None, 120,
                 f"worker {name} to start")
        assert self.proc.poll() is None, f"worker {name} exited: see {self.log.name}"

    def kill_node(self) -> None:
        """Every process of this worker at once, with SIGKILL: nothing can requeue anything."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
