"""Redis with a password and with TLS, for real: private redis-servers started with ``requirepass``
(and an ACL user) and with a TLS-only port, a real worker rendering through them, and every way of
getting the settings wrong answered in one line that names the setting and never the password."""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from PIL import Image

from support.cli import run_cli
from support.cluster import RedisServer, Worker, wait_for
from zoomq.config import settings
from zoomq.node.processes import TLSFiles, free_port
from zoomq.producer import Producer
from zoomq.queue.connection import redacted
from zoomq.web import create_app

PASSWORD = "pw-" + secrets.token_hex(8)  # random, so any copy of it is found wherever it leaks
ACL_USER, ACL_PASSWORD = "renderer", "acl-" + secrets.token_hex(8)
WRONG = "wrong-" + secrets.token_hex(8)
JOB: dict[str, Any] = dict(steps=3, seed=5)


# -- servers ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pw_server(tmp_path_factory):
    """A redis-server with ``requirepass`` and an ACL user of its own password."""
    server = RedisServer(tmp_path_factory.mktemp("redis-pw"), password=PASSWORD)
    try:
        server.client().execute_command("ACL", "SETUSER", ACL_USER, "on", f">{ACL_PASSWORD}", "~*", "&*", "+@all")
        yield server
    finally:
        server.stop()


def url_of(server: RedisServer, userinfo: str = "") -> str:
    """The server's URL with other credentials (``":PASSWORD"``, ``"USER:PASSWORD"``, or none)."""
    scheme = "rediss" if server.tls else "redis"
    return f"{scheme}://{userinfo + '@' if userinfo else ''}127.0.0.1:{server.port}/0"


def _openssl(folder: Path, *args: str) -> None:
    done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, f"openssl {' '.join(args)}: {done.stderr}"


def make_ca(folder: Path, name: str) -> Path:
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=zoomq test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return folder / f"{name}.pem"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, Path]:
    """A throwaway CA, a server certificate it signed for 127.0.0.1 and localhost, and another CA."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificates: apt-get install openssl")
    folder = tmp_path_factory.mktemp("certs")
    ca, other = make_ca(folder, "ca"), make_ca(folder, "other-ca")
    _openssl(folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (folder / "server.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "authorityKeyIdentifier=keyid\nsubjectKeyIdentifier=hash\n")
    _openssl(folder, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
    return {"ca": ca, "other_ca": other, "cert": folder / "server.pem", "key": folder / "server.key"}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, certs):
    """A redis-server listening with TLS only (``--port 0``), with a password too. It needs a
    redis-server built with TLS: RedisServer fails, saying so, where there is none."""
    server = RedisServer(tmp_path_factory.mktemp("redis-tls"), password=PASSWORD,
                         tls=TLSFiles(certs["cert"], certs["key"], certs["ca"]))
    yield server
    server.stop()


@pytest.fixture
def clean_env(monkeypatch):
    """Artifacts in Redis and no CA unless a test sets one; ``point(url, ca)`` points zoomq at a Redis."""
    monkeypatch.delenv("ZOOMQ_ARTIFACTS", raising=False)
    monkeypatch.delenv("ZOOMQ_REDIS_CA", raising=False)

    def point(url: str, ca: Path | str | None = None) -> None:
        monkeypatch.setenv("ZOOMQ_REDIS_URL", url)
        if ca is not None:
            monkeypatch.setenv("ZOOMQ_REDIS_CA", str(ca))
    return point


# -- what the tests check -----------------------------------------------------------------------------

def secrets_in(text: str) -> list[str]:
    return [s for s in (PASSWORD, ACL_PASSWORD, WRONG) if s in text]


def everything_stored(client: redis.Redis) -> str:
    """Every key and value in Redis, as text: what a password must never be part of."""
    parts = []
    readers = {"string": client.get, "hash": client.hgetall, "list": lambda key: client.lrange(key, 0, -1),
               "set": client.smembers, "zset": lambda key: client.zrange(key, 0, -1)}
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        assert isinstance(kind, bytes)  # a client without decode_responses
        reader = readers.get(kind.decode())
        value = reader(key) if reader else b""
        parts.append(f"{key!r} {value!r}")
    return "\n".join(parts)


def render_one_image(server: RedisServer, worker_url: str, tiny_t2i: Path, log_dir: Path, env: dict) -> None:
    """A real worker on ``worker_url`` renders an image job submitted through ``Producer`` (which
    uses ZOOMQ_REDIS_URL), with the job record and the artifact in ``server``."""
    worker = Worker("secured", worker_url, [tiny_t2i], log_dir, env=env)
    try:
        producer = Producer()
        job = producer.submit_image("a castle", model="t2i", **JOB)
        record = producer.wait(job, timeout=120)
        assert record["state"] == "done", record.get("error")
        assert record["worker"] == worker.name
        assert Image.open(io.BytesIO(producer.result(job))).format == "PNG"
        direct = server.client()  # the server's own client: the records are really in this Redis
        assert direct.exists(f"zoomq:job:{job}") and direct.exists(f"zoomq:artifact:{job}/result.png")
        assert not secrets_in(everything_stored(direct))
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert "ready" in log and not secrets_in(log)  # Celery's banner shows the broker with the password masked


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zoomq: error: "), err
    assert not secrets_in(err), err
    return lines[0]


def zoomq_process(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zoomq", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


def refused_in_one_line(done: subprocess.CompletedProcess, setting: str) -> str:
    """A zoomq process that stopped at the start with one error line naming ``setting`` (log lines of
    its own before it are fine), no traceback and no password anywhere."""
    errors = [line for line in done.stderr.splitlines() if line.startswith("zoomq: error: ")]
    assert done.returncode == 1 and len(errors) == 1 and setting in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not secrets_in(done.stdout + done.stderr), done.stderr
    return errors[0]


# -- with a password ----------------------------------------------------------------------------------

def test_password_redis_serves_a_real_worker(pw_server, clean_env, tiny_t2i, tmp_path):
    # The worker logs in as the default user, the producer as the ACL user: both URL forms, one Redis.
    clean_env(url_of(pw_server, f"{ACL_USER}:{ACL_PASSWORD}"))
    assert pw_server.url == url_of(pw_server, f":{PASSWORD}")
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url_of(pw_server)).ping()  # the server really wants the password
    render_one_image(pw_server, pw_server.url, tiny_t2i, tmp_path, env={})


@pytest.mark.parametrize("userinfo, says", [
    (f":{WRONG}", "refused the user name or password"),
    (f"{ACL_USER}:{WRONG}", "refused the user name or password"),
    ("", "wants a password"),
], ids=["wrong-password", "wrong-acl-password", "no-password"])  # fixed: pytest-xdist processes collect alike
def test_wrong_or_missing_password_is_one_line(pw_server, clean_env, capsys, userinfo, says):
    clean_env(url_of(pw_server, userinfo))
    code, _, err = run_cli("submit", "image", "x", "--model", "t2i", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and "ZOOMQ_REDIS_URL=" in line and says in line, line
    assert f"127.0.0.1:{pw_server.port}" in line and (":***@" in line) == bool(userinfo), line
    code, _, err = run_cli("status", str(uuid.uuid4()), capsys=capsys)
    assert code == 1 and one_error_line(err) == line


def test_worker_and_up_stop_at_a_wrong_password(pw_server, clean_env, tiny_t2i, tmp_path):
    env = {"ZOOMQ_REDIS_URL": url_of(pw_server, f":{WRONG}"), "ZOOMQ_DATA_DIR": str(tmp_path / "data")}
    worker = zoomq_process("worker", "--models", str(tiny_t2i), "--concurrency", "1", env=env)
    line = refused_in_one_line(worker, "ZOOMQ_REDIS_URL")
    assert "refused the user name or password" in line
    group = zoomq_process("worker", "--models", str(tiny_t2i), "--concurrency", "2x2", env=env)
    assert refused_in_one_line(group, "ZOOMQ_REDIS_URL") == line  # before it starts any member
    up = zoomq_process("up", "--models", str(tiny_t2i), "--port", str(free_port()), env=env)
    assert refused_in_one_line(up, "ZOOMQ_REDIS_URL") == line


# -- with TLS -----------------------------------------------------------------------------------------

def test_tls_redis_serves_a_real_worker(tls_server, certs, clean_env, tiny_t2i, tmp_path):
    clean_env(tls_server.url, certs["ca"])
    assert tls_server.url.startswith("rediss://")
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url_of(tls_server, f":{PASSWORD}").replace("rediss", "redis")).ping()  # TLS only
    render_one_image(tls_server, tls_server.url, tiny_t2i, tmp_path, env={"ZOOMQ_REDIS_CA": str(certs["ca"])})


def test_the_broker_verifies_the_certificate_too(tls_server, certs, clean_env):
    """kombu alone takes a rediss:// URL with CERT_NONE (with a warning), trusting any server: the
    Celery app must get the clients' TLS options, so a CA that did not sign the server fails."""
    from kombu.exceptions import OperationalError

    from zoomq.queue.celery_app import make_app

    def broker(db: int, ca: Path):  # a database each: kombu shares pooled connections by URL, TLS aside
        s = replace(settings(), redis_url=tls_server.url.replace("/0", f"/{db}"), redis_ca=str(ca))
        return make_app(s).connection_for_write()

    with broker(1, certs["ca"]) as trusted:
        trusted.ensure_connection(max_retries=1)
    with broker(2, certs["other_ca"]) as untrusted, pytest.raises(OperationalError) as refused:
        untrusted.ensure_connection(max_retries=1)
    assert "certificate verify failed" in str(refused.value)


@pytest.mark.parametrize("ca, says", [
    ("other_ca", "is not trusted by ZOOMQ_REDIS_CA="),
    ("missing", ": no such file"),
    ("", "is not trusted by this system's CAs"),
])
def test_tls_failures_are_one_line(tls_server, certs, clean_env, capsys, tmp_path, ca, says):
    path = {"other_ca": certs["other_ca"], "missing": tmp_path / "nowhere" / "ca.pem", "": ""}[ca]
    clean_env(tls_server.url, path)
    code, _, err = run_cli("submit", "image", "x", "--model", "t2i", capsys=capsys)
    line = one_error_line(err)
    assert code == 1 and "ZOOMQ_REDIS_CA" in line and says in line, line
    assert "rediss://:***@127.0.0.1:" in line and (not path or str(path) in line), line


def test_worker_stops_at_an_untrusted_certificate(tls_server, certs, tiny_t2i, clean_env):
    env = {"ZOOMQ_REDIS_URL": tls_server.url, "ZOOMQ_REDIS_CA": str(certs["other_ca"])}
    line = refused_in_one_line(zoomq_process("worker", "--models", str(tiny_t2i), "--concurrency", "1", env=env),
                               "ZOOMQ_REDIS_CA")
    assert "not trusted" in line


def test_up_runs_on_a_tls_redis_with_a_password_it_never_shows(tls_server, certs, tiny_t2i, tmp_path):
    """`zoomq up` with ZOOMQ_REDIS_URL set: its worker and gunicorn web connect over TLS with the
    password, and neither its output, its stack.json nor /api/health shows the password."""
    data, port = tmp_path / "data", free_port()
    env = {**os.environ, "ZOOMQ_REDIS_URL": tls_server.url, "ZOOMQ_REDIS_CA": str(certs["ca"]),
           "ZOOMQ_DATA_DIR": str(data), "ZOOMQ_HEARTBEAT": "1"}
    up = subprocess.Popen([sys.executable, "-m", "zoomq", "up", "--models", str(tiny_t2i), "--port", str(port),
                           "--grace", "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert up.stdout is not None  # started with stdout=PIPE
    stdout = up.stdout
    threading.Thread(target=lambda: lines.extend(line.rstrip("\n") for line in stdout), daemon=True).start()
    try:
        wait_for(lambda: any("up: open" in line for line in lines) or up.poll() is not None, 180, "zoomq up")
        output = "\n".join(lines)
        assert up.poll() is None, output
        assert f"redis    ready  rediss://:***@127.0.0.1:{tls_server.port}/0 (ZOOMQ_REDIS_URL)" in output
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=10) as answer:
            health = answer.read().decode()
        assert json.loads(health)["broker"]["reachable"] is True and json.loads(health)["models"] == ["t2i"]
        state = (data / "stack.json").read_text()
        assert not secrets_in(output + health + state), output + health + state
    finally:
        up.send_signal(signal.SIGTERM)
        assert up.wait(timeout=120) == 0, "\n".join(lines)
    assert not secrets_in("\n".join(lines) + "".join(p.read_text(errors="replace") for p in (data / "logs").iterdir()))


# -- the web front end --------------------------------------------------------------------------------

def test_web_answers_never_show_the_password(pw_server, clean_env):
    def app_on(url: str):
        return create_app(replace(settings(), redis_url=url, rate_limit=(0, 0))).test_client()

    good = app_on(pw_server.url)
    health = good.get("/api/health")
    assert health.status_code == 200 and health.get_json()["broker"]["url"] == url_of(pw_server, ":***")
    assert not secrets_in(health.get_data(as_text=True))
    for url in (url_of(pw_server, f":{WRONG}"), url_of(pw_server)):
        client = app_on(url)
        health = client.get("/api/health")
        error = health.get_json()["broker"]["error"]
        assert health.status_code == 503 and "ZOOMQ_REDIS_URL" in error and "password" in error, error
        submitted = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"})
        assert submitted.status_code == 503 and submitted.get_json()["error"] == error
        status = client.get(f"/api/jobs/{uuid.uuid4()}")
        assert status.status_code == 503 and status.get_json()["error"] == error
        answers = [health, submitted, status, client.get("/"), client.get("/jobs"), client.get("/metrics")]
        assert not secrets_in("\n".join(a.get_data(as_text=True) for a in answers))


# -- the settings themselves --------------------------------------------------------------------------

@pytest.mark.parametrize("url, shown", [
    ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
    ("redis://user:s3cret@host/0", "redis://user:***@host/0"),
    ("rediss://s3cret@host:6380/0", "rediss://***@host:6380/0"),
    ("redis://host:6379/0?password=s3cret&db=1", "redis://host:6379/0?password=***&db=1"),
    ("redis://host:6379/0", "redis://host:6379/0"),
])
def test_redacted(url, shown):
    assert redacted(url) == shown


def test_a_bad_url_is_refused_naming_the_setting(clean_env, capsys):
    clean_env(f"http://:{PASSWORD}@127.0.0.1:6379/0")
    code, _, err = run_cli("status", str(uuid.uuid4()), capsys=capsys)
    assert code == 2 and one_error_line(err).startswith("zoomq: error: ZOOMQ_REDIS_URL: must be redis://"), err
