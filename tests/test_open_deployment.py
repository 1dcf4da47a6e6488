"""No open deployment by default: `zoomq up`, `zoomq web` and gunicorn on `zoomq.web.wsgi` refuse to
listen on an address other hosts reach while no API key is configured, unless told to on purpose
(`--allow-anonymous`, ZOOMQ_ALLOW_ANONYMOUS=1), which is logged at every start. Loopback stays open."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from support.cli import run_cli
from zoomq import config
from zoomq.errors import InvalidParameter, OpenWithoutKeys
from zoomq.node.processes import WebProcess, free_port, wait_for
from zoomq.web import api_keys, exposure


@pytest.fixture(autouse=True)
def no_keys(monkeypatch):
    for name in ("ZOOMQ_API_KEYS_FILE", "ZOOMQ_API_TOKEN", "ZOOMQ_ALLOW_ANONYMOUS"):
        monkeypatch.delenv(name, raising=False)


def assert_refusal(code: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert "ZOOMQ_API_KEYS_FILE" in lines[0] and "zoomq keys add" in lines[0] and "--allow-anonymous" in lines[0]


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_zoomq_up_refuses_a_public_address_without_keys(tmp_path, monkeypatch, capsys, host):
    monkeypatch.setenv("ZOOMQ_DATA_DIR", str(tmp_path / "data"))
    code, _, err = run_cli("up", "--host", host, "--models", tmp_path / "no-model", capsys=capsys)
    assert_refusal(code, err)
    assert f"--host {host}" in err
    assert not (tmp_path / "data").exists()  # nothing was started


def test_zoomq_web_refuses_a_public_address_without_keys(capsys):
    with socket.socket() as taken:  # were it not refused, the server would fail on this port, not serve
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        code, _, err = run_cli("web", "--host", "0.0.0.0", "--port", taken.getsockname()[1], capsys=capsys)
    assert_refusal(code, err)


def test_only_loopback_is_served_without_keys():
    for host in ("127.0.0.1", "127.0.0.5", "::1", "[::1]", "localhost", "unix:/run/zoomq.sock"):
        assert exposure.is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.10", "10.0.0.1", "fe80::1", "no-such-host.invalid"):
        assert not exposure.is_loopback(host), host
    s = config.settings()
    exposure.check(s, ["127.0.0.1", "::1", "localhost"], "--host")
    with pytest.raises(OpenWithoutKeys):
        exposure.check(s, ["127.0.0.1", "0.0.0.0"], "--host")


def test_a_key_lets_it_listen_anywhere(tmp_path, monkeypatch):
    keys = tmp_path / "keys"
    keys.write_text("# no key yet\n")
    monkeypatch.setenv("ZOOMQ_API_KEYS_FILE", str(keys))
    with pytest.raises(OpenWithoutKeys):  # a keys file without a key opens nothing, and shows it
        exposure.check(config.settings(), ["0.0.0.0"], "--host")
    keys.write_text(api_keys.line("alice", api_keys.new_key(), admin=False) + "\n")
    exposure.check(config.settings(), ["0.0.0.0"], "--host")
    monkeypatch.delenv("ZOOMQ_API_KEYS_FILE")
    monkeypatch.setenv("ZOOMQ_API_TOKEN", api_keys.new_key())
    exposure.check(config.settings(), ["0.0.0.0"], "--host")


def test_anonymous_access_on_purpose_is_warned_at_every_start(monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="zoomq")
    exposure.check(config.settings(), ["0.0.0.0"], "--host", allow_anonymous=True)
    monkeypatch.setenv("ZOOMQ_ALLOW_ANONYMOUS", "1")
    exposure.check(config.settings(), ["0.0.0.0"], "--host")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("with no API key" in w and "0.0.0.0" in w for w in warnings), warnings
    monkeypatch.setenv("ZOOMQ_ALLOW_ANONYMOUS", "yes")
    with pytest.raises(InvalidParameter, match="ZOOMQ_ALLOW_ANONYMOUS"):
        config.settings()


def test_gunicorn_on_a_public_address_without_keys_stops_with_one_line(server, tmp_path):
    port = free_port()
    env = {**os.environ, "ZOOMQ_REDIS_URL": server.url}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "--bind", f"0.0.0.0:{port}", "--workers", "1",
                           "zoomq.web.wsgi:app"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if line.startswith("zoomq: error:")]
    assert len(refusals) == 1 and "ZOOMQ_API_KEYS_FILE" in refusals[0] and "zoomq keys add" in refusals[0], done.stderr
    assert "0.0.0.0 is reached from other hosts" in refusals[0]


def test_gunicorn_serves_open_on_purpose_with_a_warning(server, tmp_path):
    web = WebProcess(server.url, tmp_path, host="0.0.0.0", gunicorn=True, workers=1,
                     env={"ZOOMQ_ALLOW_ANONYMOUS": "1"})
    try:
        log = web.log_path.read_text()
        assert "serving this server's listening address 0.0.0.0 with no API key" in log, log
    finally:
        web.stop()


def test_zoomq_web_serves_open_on_purpose_with_a_warning(server, tmp_path):
    port = free_port()
    web = subprocess.Popen([sys.executable, "-m", "zoomq", "web", "--host", "0.0.0.0", "--port", str(port),
                            "--allow-anonymous"], env={**os.environ, "ZOOMQ_REDIS_URL": server.url},
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: web.poll() is not None or answers(f"http://127.0.0.1:{port}/api/health"), 60,
                 "zoomq web to answer")
        assert web.poll() is None
    finally:
        web.terminate()
        out, _ = web.communicate(timeout=30)
    assert "serving --host 0.0.0.0 with no API key" in out, out


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
