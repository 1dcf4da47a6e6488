"""A whole zoomq stack on this machine: a private redis-server, worker processes, the web server.

Used by the benchmarks and the tests, and the base of the one-machine deployment. Each server runs
on a free port with its own directory, never touching a Redis that is already there; each worker
runs in its own process group, so it can be stopped — or lost — as a whole node.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, TypeVar

import redis

from zoomq.errors import ZoomqError

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    """``redis-server`` on a free loopback port, keeping its files in ``folder``."""

    def __init__(self, folder: Path, appendonly: bool = False, port: int | None = None):
        binary = redis_server_binary()
        if binary is None:
            raise ZoomqError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def start(self) -> None:
        self.proc = subprocess.Popen([
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always",
            "--logfile", str(self.folder / "redis.log"),
        ])
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


class WorkerProcess:
    """``zoomq worker`` as a subprocess in its own process group (a node)."""

    def __init__(self, name: str, redis_url: str, models: list[Path], log_dir: Path, queues: str = "render,encode",
                 concurrency: int = 1, threads: int | None = None, env: dict | None = None,
                 start_timeout: float = 120):
        self.name = f"{name}@{socket.gethostname()}"
        self.log = open(Path(log_dir) / f"worker-{name}.log", "ab")
        environment = {**os.environ, "ZOOMQ_REDIS_URL": redis_url, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zoomq", "worker", "--name", name, "--queues", queues,
             "--concurrency", str(concurrency), "--loglevel", "INFO",
             *(["--threads", str(threads)] if threads else []),
             *(["--models", *map(str, models)] if models else [])],
            env=environment, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        client = redis.Redis.from_url(redis_url)
        wait_for(lambda: client.exists(f"zoomq:worker:{self.name}") or self.proc.poll() is not None,
                 start_timeout, f"worker {name} to start")
        if self.proc.poll() is not None:
            raise ZoomqError(f"worker {name} exited at start; see {self.log.name}")

    def kill_node(self) -> None:
        """Every process of this worker at once, with SIGKILL: nothing can requeue anything."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        _stop_group(self.proc)
        self.log.close()


class WebProcess:
    """The web front end as a subprocess: ``zoomq web`` (Flask's server) or, with
    ``gunicorn=True``, the production server; ready once ``/api/health`` answers."""

    def __init__(self, redis_url: str, log_dir: Path, host: str = "127.0.0.1", port: int | None = None,
                 gunicorn: bool = False, env: dict | None = None, start_timeout: float = 60):
        self.port = port or free_port()
        self.url = f"http://{host}:{self.port}"
        self.log = open(Path(log_dir) / f"web-{self.port}.log", "ab")
        environment = {**os.environ, "ZOOMQ_REDIS_URL": redis_url, **(env or {})}
        command = ([sys.executable, "-m", "gunicorn", "--bind", f"{host}:{self.port}", "--workers", "2",
                    "--threads", "4", "zoomq.web.wsgi:app"] if gunicorn else
                   [sys.executable, "-m", "zoomq", "web", "--host", host, "--port", str(self.port)])
        self.proc = subprocess.Popen(command, env=environment, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        wait_for(lambda: self._answers() or self.proc.poll() is not None, start_timeout, "the web server to start")
        if self.proc.poll() is not None:
            raise ZoomqError(f"the web server exited at start; see {self.log.name}")

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/api/health", timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered (503: Redis down), so it is up
        except OSError:
            return False

    def stop(self) -> None:
        _stop_group(self.proc)
        self.log.close()


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (a worker's pool, gunicorn's workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
