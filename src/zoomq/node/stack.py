"""The one-machine stack behind ``zoomq up`` and ``zoomq demo``: an embedded Redis with AOF, the
render workers sized to the node, and the web server on gunicorn — started in that order, watched
(a part that exits on its own is started again), and stopped in reverse.

Everything it keeps lives in one data folder (``ZOOMQ_DATA_DIR``): the Redis data under ``redis/``
(0700, with the Redis's password in a 0600 file: ``zoomq.node.embedded_redis``), each part's log
under ``logs/``, a lock so two stacks never share one AOF, and ``stack.json`` saying what runs where
while it runs. With ``ZOOMQ_REDIS_URL`` set, that Redis is used instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TextIO

import redis

from zoomq.config import Settings
from zoomq.errors import InvalidParameter, ZoomqError
from zoomq.node import embedded_redis, sizing
from zoomq.node.processes import RedisServer, WebProcess, WorkerProcess, free_port, port_is_free
from zoomq.queue import connection

RESTARTS = 3          # a part that exits this often ...
RESTART_WINDOW = 120  # ... within this many seconds stops the stack instead of being started again


@dataclass
class StackOptions:
    models: list[Path]
    data_dir: Path
    redis_url: str | None = None  # a Redis to use; None starts the embedded one
    host: str = "127.0.0.1"
    port: int = 8000
    port_fallback: bool = False   # take a free port when ``port`` is taken (the demo), instead of failing
    processes: int | None = None  # None: auto (zoomq.node.sizing)
    slots: int | None = 1         # render slots in each worker process (--concurrency PxS); None: auto
    threads: int | None = None
    grace: float = 30.0           # seconds running pieces get to finish at a stop before they are requeued
    web_workers: int = 2
    events: bool = False          # task events for Flower
    worker_env: dict = field(default_factory=dict)
    web_env: dict = field(default_factory=dict)  # for the web server alone (ZOOMQ_ALLOW_ANONYMOUS)


class Stack:
    """Start with ``start()``, keep alive with ``watch()``, end with ``stop()`` (or use ``with``)."""

    def __init__(self, options: StackOptions, settings: Settings, say: Callable[[str], None] = print):
        self.options = options
        self.settings = settings
        self.say = say
        self.data = Path(options.data_dir).expanduser().resolve()
        self.logs = self.data / "logs"
        self.redis: RedisServer | None = None
        self.worker: WorkerProcess | None = None
        self.webhooks: WorkerProcess | None = None  # the webhook worker, when ZOOMQ_WEBHOOK_SECRET is set
        self.web: WebProcess | None = None
        self.plan: sizing.Plan | None = None
        self.redis_url = options.redis_url or ""
        self.models = [Path(m).resolve() for m in options.models]
        self._lock_file: TextIO | None = None
        self.port = options.port
        self._exits: dict[str, list[float]] = {}
        # One name per data folder: unique on a shared Redis, the same across restarts of one stack.
        self.worker_name = "up-" + hashlib.sha256(str(self.data).encode()).hexdigest()[:6]

    # -- starting --------------------------------------------------------------------------

    def start(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self.port = self._web_port()  # before anything starts: a taken port fails at once
            self._start_redis()
            self._start_worker()
            if self.settings.webhook_secret:
                self._start_webhooks()
            self._start_web()
            self._write_state()
        except BaseException:
            self.stop()
            raise

    def _lock(self) -> None:
        """One stack per data folder: two redis-servers appending to one AOF would corrupt it."""
        self._lock_file = open(self.data / embedded_redis.LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            running = self.state()
            where = f" (pid {running.get('pid')}, web at {running.get('web_url')})" if running else ""
            raise ZoomqError(f"another zoomq up is running with the data folder {self.data}{where}; stop it "
                             f"first, or give this one its own folder with ZOOMQ_DATA_DIR") from None

    def _start_redis(self) -> None:
        if self.options.redis_url:
            s = replace(self.settings, redis_url=self.redis_url)
            try:
                connection.client(s, socket_connect_timeout=5, socket_timeout=30).ping()
            except redis.RedisError as e:
                raise connection.unavailable(
                    e, s, "start it, or unset ZOOMQ_REDIS_URL to use the embedded one") from None
            self.say(f"redis    ready  {connection.redacted(self.redis_url)} (ZOOMQ_REDIS_URL)")
            return
        folder = embedded_redis.folder(self.data)
        port_file = folder / embedded_redis.PORT_FILE
        # The same port as last time where it is free, so an exported ZOOMQ_REDIS_URL stays good.
        remembered = int(port_file.read_text()) if port_file.is_file() and port_file.read_text().isdigit() else 0
        port = remembered if remembered and port_is_free("127.0.0.1", remembered) else free_port()
        self.redis = embedded_redis.server(self.data, port, die_with_parent=True)  # locked: a password, no CONFIG
        port_file.write_text(str(port))
        self.redis_url = self.redis.url  # with the password: for the stack's own parts, through their environment
        self.say(f"redis    ready  {embedded_redis.plain_url(port)} (embedded; data with AOF in {folder}; "
                 f"password in {folder / embedded_redis.PASSWORD_FILE})")
        from zoomq.worker.recovery import recover

        recovered = recover(replace(self.settings, redis_url=self.redis_url))
        if recovered.jobs or recovered.tasks or recovered.leases:
            self.say(f"resuming {recovered.jobs} job(s) left queued or running "
                     f"({recovered.tasks} task(s) requeued, {recovered.leases} piece(s) released)")

    def _start_worker(self) -> None:
        o = self.options
        if self.worker is not None:
            self.worker.stop()  # what is left of one that exited: its pool, its log
        if self.plan is None:
            self.plan = sizing.for_worker(self.models, self.settings.inference_precision, o.processes, o.threads,
                                          slots=o.slots)
        self.worker = WorkerProcess(self.worker_name, self.redis_url, self.models, self.logs,
                                    concurrency=str(self.plan.concurrency), threads=o.threads, env=o.worker_env,
                                    events=o.events, start_timeout=300, die_with_parent=True)
        names = ", ".join(m.name for m in self.models)
        self.say(f"workers  ready  {self.worker.name}: {self.plan.describe()}; models {names}")

    def _start_webhooks(self) -> None:
        """The light webhook worker (threads, no models): deliveries never hold a render slot."""
        if self.webhooks is not None:
            self.webhooks.stop()
        self.webhooks = WorkerProcess(self.worker_name + "-webhooks", self.redis_url, [], self.logs, queues="webhooks",
                                      concurrency=4, env=self.options.worker_env, die_with_parent=True)
        self.say(f"webhooks ready  {self.webhooks.name}: 4 threads")

    def _web_port(self) -> int:
        o = self.options
        if port_is_free(o.host, o.port):
            return o.port
        if not o.port_fallback:
            raise InvalidParameter("port", o.port, f"is in use on {o.host}; choose another with --port")
        return free_port()

    def _start_web(self) -> None:
        o = self.options
        if self.web is not None:
            self.web.stop()
        self.web = WebProcess(self.redis_url, self.logs, host=o.host, port=self.port, gunicorn=True,
                              workers=o.web_workers, env=o.web_env, die_with_parent=True)
        self.say(f"web      ready  {self.web.url}/ (gunicorn, {o.web_workers} processes)")

    def _write_state(self) -> None:
        web, worker = self.web, self.worker
        assert web is not None and worker is not None  # started just before
        state = {"pid": os.getpid(), "redis_url": connection.redacted(self.redis_url), "web_url": web.url,
                 "embedded": self.redis is not None,
                 "worker": worker.name, "models": [str(m) for m in self.models], "started": time.time()}
        (self.data / embedded_redis.STATE_FILE).write_text(json.dumps(state, indent=1))

    def state(self) -> dict | None:
        """What ``stack.json`` says of the stack running on this data folder, if any."""
        try:
            return json.loads((self.data / embedded_redis.STATE_FILE).read_text())
        except (OSError, ValueError):
            return None

    # -- running ---------------------------------------------------------------------------

    def watch(self, stop_asked: Callable[[], bool], interval: float = 0.5) -> None:
        """Until ``stop_asked()``: start again any part that exits on its own; a part that keeps
        exiting raises ``ZoomqError`` naming its log."""
        while not stop_asked():
            for part, process, start_again in (("redis", self.redis, self._restart_redis),
                                               ("worker", self.worker, self._start_worker),
                                               ("webhooks", self.webhooks, self._start_webhooks),
                                               ("web", self.web, self._start_web)):
                if process is None or process.proc is None or process.proc.poll() is None:
                    continue
                now = time.monotonic()
                exits = [t for t in self._exits.get(part, []) if now - t < RESTART_WINDOW] + [now]
                self._exits[part] = exits
                code, log = process.proc.returncode, process.log_path
                if len(exits) >= RESTARTS:
                    raise ZoomqError(f"{part} exited {len(exits)} times in {RESTART_WINDOW} s (last code {code}); "
                                     f"see {log}")
                self.say(f"{part} exited (code {code}); starting it again (log: {log})")
                start_again()
            time.sleep(interval)

    def _restart_redis(self) -> None:
        assert self.redis is not None  # watch() restarts only the embedded Redis it started
        self.redis.start()
        self.say(f"redis    ready  {embedded_redis.plain_url(self.redis.port)} (started again)")

    # -- stopping --------------------------------------------------------------------------

    def stop(self, hurry: Callable[[], bool] = lambda: False) -> None:
        """Web first (no new jobs), then the workers (running pieces get ``grace`` seconds to
        finish, then go back to the queue), Redis last (its AOF flushed). Safe to call twice."""
        if self.web is not None:
            self.web.stop()
            self.web = None
        if self.worker is not None:
            self.worker.stop(self.options.grace, hurry)
            self.worker = None
        if self.webhooks is not None:  # after the workers: their last events are queued by then
            self.webhooks.stop(self.options.grace, hurry)
            self.webhooks = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
        if self._lock_file is not None:
            (self.data / embedded_redis.STATE_FILE).unlink(missing_ok=True)
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    def __enter__(self) -> Stack:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
