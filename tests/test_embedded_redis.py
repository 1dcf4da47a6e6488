"""The embedded Redis of `zoomq up`, locked: a password made once and kept in a 0600 file, the
commands that reach the host renamed to nothing, the password in no command line or log, and this
user's other zoomq commands finding the running stack's Redis on their own. The server alone, as
`zoomq up` starts it (no workers); test_up.py runs the whole stack."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import stat
import uuid

import psutil
import pytest
import redis

from support.cli import run_cli
from zoomq.node import embedded_redis
from zoomq.queue.job_records import Jobs


def raw_reply(port: int, command: bytes) -> bytes:
    """What the server answers a client that sends ``command`` and nothing else (no AUTH, no HELLO)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(command + b"\r\n")
        return s.recv(200)


@pytest.fixture
def embedded(tmp_path):
    servers = []

    def start():
        servers.append(embedded_redis.server(tmp_path / "data"))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


def test_the_embedded_redis_needs_its_password_and_has_no_config(tmp_path, embedded):
    data = tmp_path / "data"
    server = embedded()
    secret_file = data / "redis" / "password"
    secret = secret_file.read_text().strip()
    assert len(secret) >= 40  # 256 random bits
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((data / "redis").stat().st_mode) == 0o700  # the AOF holds every job

    assert raw_reply(server.port, b"PING").startswith(b"-NOAUTH")
    assert raw_reply(server.port, b"KEYS *").startswith(b"-NOAUTH")
    assert raw_reply(server.port, b"CONFIG GET dir").startswith(b"-ERR unknown command")  # for no one
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=server.port, password="not-" + secret).ping()

    client = server.client()
    assert client.ping()
    for command in (("CONFIG", "GET", "dir"), ("CONFIG", "SET", "dir", "/tmp"), ("MODULE", "LIST"),
                    ("DEBUG", "SLEEP", "0"), ("ACL", "SETUSER", "guest", "on", "nopass", "+@all"),
                    ("REPLICAOF", "127.0.0.1", "1"), ("SHUTDOWN",)):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)

    assert secret not in " ".join(psutil.Process(server.proc.pid).cmdline())
    assert secret not in server.log_path.read_text()


def test_a_restarted_embedded_redis_keeps_its_password_and_its_data(tmp_path, embedded):
    data = tmp_path / "data"
    first = embedded()
    secret = (data / "redis" / "password").read_text()
    first.client().set("kept", b"1")
    first.stop()
    os.chmod(data / "redis" / "password", 0o644)  # loosened by hand: made private again at the start

    second = embedded()
    assert (data / "redis" / "password").read_text() == secret
    assert stat.S_IMODE((data / "redis" / "password").stat().st_mode) == 0o600
    assert second.client().get("kept") == b"1"  # the AOF, read back with the same password
    assert raw_reply(second.port, b"PING").startswith(b"-NOAUTH")


def test_other_commands_find_the_running_stacks_redis(tmp_path, embedded, monkeypatch, capsys):
    """`zoomq status` from another shell of the same user, with only ZOOMQ_DATA_DIR (or the password-less
    URL `zoomq up` shows): it reads the password from the stack's file; without a running stack, it does not."""
    data = tmp_path / "data"
    server = embedded()
    (data / "redis" / "port").write_text(str(server.port))
    (data / "stack.json").write_text(json.dumps({"pid": os.getpid(), "embedded": True}))
    job = str(uuid.uuid4())
    Jobs(server.client(), 3600).create(job, "image", "t2i", {"prompt": "a castle"}, 10)
    monkeypatch.setenv("ZOOMQ_DATA_DIR", str(data))
    secret = (data / "redis" / "password").read_text().strip()

    with open(data / "up.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running zoomq up holds it
        for url in (None, f"redis://127.0.0.1:{server.port}/0", f"redis://localhost:{server.port}/0"):
            if url is None:
                monkeypatch.delenv("ZOOMQ_REDIS_URL", raising=False)
            else:
                monkeypatch.setenv("ZOOMQ_REDIS_URL", url)
            code, out, err = run_cli("status", job, capsys=capsys)
            assert code == 0 and "queued" in out, err
            assert secret not in out + err
        # Another Redis named in ZOOMQ_REDIS_URL is left alone.
        assert embedded_redis.running_url(data, "redis://127.0.0.1:1/0") is None
        assert embedded_redis.running_url(data, f"redis://:other@127.0.0.1:{server.port}/0") is None

    # The stack stopped (its lock released): nothing is lent; the server refuses, and says so without the password.
    monkeypatch.setenv("ZOOMQ_REDIS_URL", f"redis://127.0.0.1:{server.port}/0")
    code, out, err = run_cli("status", job, capsys=capsys)
    assert code != 0 and "wants a password" in err and secret not in out + err, err
