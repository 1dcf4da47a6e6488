"""The embedded Redis of ``zoomq up``, locked: a password made on its first start (``secrets``) and
kept in a 0600 file in the data folder, the commands that reach past Redis into the host (``CONFIG``,
``MODULE``, ``DEBUG``…) renamed to nothing, and how this user's other zoomq commands find the running
stack's Redis, password included, without being told.

Whoever holds the password controls the cluster (its jobs, results, workers); the file is readable
by the stack's user alone, and the password reaches the stack's parts only through their environment
and the server's standard input: never an argument (``ps``), a log line or an error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from pathlib import Path
from urllib.parse import urlsplit

from zoomq.node.processes import RedisServer

REDIS_FOLDER = "redis"        # in the data folder: the AOF, the server's log, its port and password
PASSWORD_FILE = "password"    # in REDIS_FOLDER, mode 0600
PORT_FILE = "port"
LOCK_FILE = "up.lock"         # held by a running zoomq up (zoomq.node.stack)
STATE_FILE = "stack.json"

# Renamed to nothing: CONFIG SET dir/dbfilename writes files anywhere, MODULE LOAD runs code, DEBUG
# crashes or reloads the server, SLAVEOF/REPLICAOF pull a rogue master's data (the usual way to plant a
# module), ACL could add a user without a password, MIGRATE copies keys to any host, SHUTDOWN stops the
# stack's Redis behind its back (zoomq up stops it with SIGTERM). zoomq and Celery use none of them.
DISABLED_COMMANDS = ("CONFIG", "MODULE", "DEBUG", "SLAVEOF", "REPLICAOF", "ACL", "MIGRATE", "SHUTDOWN")


def folder(data: Path) -> Path:
    """The embedded Redis's folder in ``data``, made private to this user (0700): it holds every job."""
    path = Path(data) / REDIS_FOLDER
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def password(data: Path) -> str:
    """The password of the embedded Redis of the stack on ``data``: read from its 0600 file, or made
    (256 random bits) and written there on the first start. A file others could read is made 0600."""
    path = folder(data) / PASSWORD_FILE
    try:
        existing = path.read_text().strip()
    except FileNotFoundError:
        existing = ""
    if existing:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        return existing
    made = secrets.token_urlsafe(32)
    part = path.with_name(f".{PASSWORD_FILE}.{os.getpid()}")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(made + "\n")
    os.replace(part, path)  # whole or not at all: a stack killed here makes a new one next time
    return made


def server(data: Path, port: int | None = None, die_with_parent: bool = False) -> RedisServer:
    """The embedded Redis of the stack on ``data``, started: every write in the AOF of its folder, its
    password (made on the first start, the same ever after) handed over on stdin, never in argv, and
    ``DISABLED_COMMANDS`` renamed to nothing. Its ``url`` holds the password: for the stack's own
    parts, through their environment; show ``plain_url(port)``."""
    return RedisServer(folder(data), appendonly=True, port=port, appendfsync="everysec",
                       die_with_parent=die_with_parent, password=password(data), disabled=DISABLED_COMMANDS)


def url(port: int, secret: str) -> str:
    """The URL of the embedded Redis on ``port`` with its password (token_urlsafe: nothing to quote)."""
    return f"redis://:{secret}@127.0.0.1:{port}/0"


def plain_url(port: int) -> str:
    """The same URL without its password: the one to show."""
    return f"redis://127.0.0.1:{port}/0"


def _running(data: Path) -> bool:
    """Whether a ``zoomq up`` holds the data folder's lock now (a killed one holds nothing)."""
    try:
        fd = os.open(Path(data) / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def running_url(data: Path, configured: str | None) -> str | None:
    """The URL, password included, of the embedded Redis of a ``zoomq up`` running on ``data``, for
    another zoomq command of this user: when ``ZOOMQ_REDIS_URL`` is unset (``configured`` None) or
    names that Redis without a password (``redis://127.0.0.1:PORT``, as ``zoomq up`` shows it). None
    when no such stack runs, it uses another Redis, its files cannot be read, or ``configured`` names
    anything else."""
    data = Path(data)
    if not _running(data):
        return None
    try:
        state = json.loads((data / STATE_FILE).read_text())
        port = int((data / REDIS_FOLDER / PORT_FILE).read_text())
        secret = (data / REDIS_FOLDER / PASSWORD_FILE).read_text().strip()
    except (OSError, ValueError):
        return None
    if not (isinstance(state, dict) and state.get("embedded")) or not secret:
        return None
    if configured is not None:
        try:
            parts = urlsplit(configured)
            named = (parts.scheme, parts.hostname, parts.port, parts.username, parts.password)
        except ValueError:
            return None
        if named[:3] not in (("redis", "127.0.0.1", port), ("redis", "localhost", port)) or any(named[3:]):
            return None
        return f"redis://:{secret}@{parts.hostname}:{port}{parts.path}" + (f"?{parts.query}" if parts.query else "")
    return url(port, secret)
