"""Webhooks: the SSRF guard on URLs and resolved addresses, Standard Webhooks signatures checked by
the specification's own library (``standardwebhooks``), and a POST to a real receiver on loopback."""

from __future__ import annotations

import base64
import http.server
import ipaddress
import json
import secrets
import threading
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from support.cluster import wait_for
from zoomq.errors import InvalidParameter
from zoomq.webhooks import address, outbox, send, signing

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# -- the SSRF guard ------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "https://127.0.0.1/hook", "https://2130706433/hook", "https://0x7f000001/", "https://0x7f.1/",
    "https://127.1/", "https://017700000001/", "https://10.1.2.3/", "https://192.168.0.1/", "https://172.16.0.1/",
    "https://169.254.169.254/latest/meta-data/", "https://[::1]/", "https://[::ffff:127.0.0.1]/",
    "https://[::ffff:7f00:1]/", "https://[fd00:ec2::254]/", "https://[fe80::1]/", "https://0.0.0.0/",
    "https://[::]/", "https://224.0.0.1/", "https://100.64.0.1/", "https://240.0.0.1/",
])
def test_private_and_special_addresses_are_refused_at_submit(url):
    with pytest.raises(InvalidParameter) as e:
        address.check_url(url)
    assert e.value.param == "webhook" and "ZOOMQ_WEBHOOK_ALLOW" in e.value.rule


@pytest.mark.parametrize("url, why", [
    ("http://example.com/hook", "https"), ("ftp://example.com/", "https"), ("https://user:pw@example.com/", "user"),
    ("https://example.com/a#b", "fragment"), ("https://exa mple.com/", "spaces"), ("", "https"), (42, "https"),
    ("https:///nohost", "host"), ("https://example.com:99999/", "valid"),
])
def test_malformed_or_plain_http_urls_are_refused(url, why):
    with pytest.raises(InvalidParameter) as e:
        address.check_url(url)
    assert e.value.param == "webhook" and why in e.value.rule


def test_public_urls_pass_and_the_allow_list_opens_http_and_private_hosts():
    target = address.check_url("https://Hooks.Example.com:8443/in?x=1")
    assert target == address.Target("https", "hooks.example.com", 8443, "/in?x=1")
    assert address.check_url("https://8.8.8.8").path == "/"
    allow = address.parse_allow(" 127.0.0.1, [::1] ,Localhost")
    assert allow == {"127.0.0.1", "::1", "localhost"}
    assert address.check_url("http://127.0.0.1:9/x", allow).port == 9
    assert address.check_url("http://[::1]/", allow).host == "::1"
    with pytest.raises(InvalidParameter):
        address.check_url("http://10.0.0.1/", allow)  # only the listed hosts


def test_literal_forms_are_read_as_the_address_they_are():
    assert address.literal_address("2130706433") == ipaddress.ip_address("127.0.0.1")
    assert address.literal_address("0x7f.0.0.1") == ipaddress.ip_address("127.0.0.1")
    assert address.literal_address("::ffff:10.0.0.1") == ipaddress.ip_address("10.0.0.1")
    assert address.literal_address("example.com") is None
    assert address.forbidden(ipaddress.ip_address("93.184.216.34")) is None
    assert address.forbidden(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata address"
    assert address.forbidden(ipaddress.ip_address("fd00:ec2::254")) == "a cloud metadata address"
    assert address.forbidden(ipaddress.ip_address("::ffff:169.254.169.254")) == "a cloud metadata address"


def test_a_name_resolving_to_loopback_is_refused_at_delivery_unless_allowed():
    target = address.check_url("https://localhost/hook")  # a name passes at submit: resolved when sent
    with pytest.raises(InvalidParameter) as e:
        address.resolve(target)
    assert "loopback" in e.value.rule and e.value.param == "webhook"
    assert address.resolve(target, frozenset({"localhost"})) in ("127.0.0.1", "::1")
    with pytest.raises(InvalidParameter, match="resolve"):
        address.resolve(address.check_url("https://no-such-host.invalid/"))


# -- signatures ----------------------------------------------------------------------------

def test_signatures_verify_with_standardwebhooks_and_a_tampered_body_fails():
    body = json.dumps({"type": "job.done", "timestamp": "2026-01-01T00:00:00Z", "data": {"id": "x"}}).encode()
    now = int(time.time())
    headers = signing.headers(SECRET, "msg_1", now, body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(SECRET).verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"done", b"fail"), headers)
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, headers)


@pytest.mark.parametrize("secret, why", [("plain", "whsec_"), ("whsec_!!!", "base64"),
                                         ("whsec_" + base64.b64encode(b"short").decode(), "bytes")])
def test_bad_secrets_are_refused_without_being_shown(secret, why):
    with pytest.raises(InvalidParameter) as e:
        signing.key_of(secret)
    assert e.value.param == "ZOOMQ_WEBHOOK_SECRET" and why in e.value.rule and secret not in str(e.value)


# -- a delivery to a real receiver ---------------------------------------------------------

class _Receiver(http.server.BaseHTTPRequestHandler):
    answers: list[int] = []
    got: list[tuple[dict, bytes]] = []

    def do_POST(self):  # noqa: N802 — http.server's name
        body = self.rfile.read(int(self.headers["content-length"]))
        type(self).got.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(type(self).answers.pop(0))
        self.end_headers()
        self.wfile.write(b"x" * 100_000)  # more than a sender reads

    def log_message(self, *_):
        pass


@pytest.fixture
def receiver():
    _Receiver.answers, _Receiver.got = [500, 204], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_a_post_goes_to_the_checked_address_keeps_the_host_and_verifies(receiver):
    allow = frozenset({"localhost"})
    target = address.check_url(f"http://localhost:{receiver}/in?job=1", allow)
    ip = address.resolve(target, allow)
    body = b'{"type": "job.done"}'
    first = send.post(target, ip, body, signing.headers(SECRET, "msg_2", int(time.time()), body))
    assert first == send.Outcome(500, None) and not first.ok
    second = send.post(target, ip, body, signing.headers(SECRET, "msg_2", int(time.time()), body))
    assert second.ok and second.status == 204
    (headers, got), _ = _Receiver.got
    assert got == body and headers["host"] == f"localhost:{receiver}"
    assert Webhook(SECRET).verify(got, headers) == {"type": "job.done"}


def test_an_unreachable_receiver_is_an_outcome_not_an_exception():
    target = address.check_url("http://127.0.0.1:9/", frozenset({"127.0.0.1"}))
    outcome = send.post(target, "127.0.0.1", b"{}", {}, timeout=2)
    assert outcome.status is None and outcome.error and not outcome.ok


# -- the outbox: a schedule of retries in Redis, attempts recorded on the job -----------------

def test_a_receiver_that_first_answers_500_gets_the_retry_and_the_job_shows_both(server, receiver):
    client = server.client()
    allow = frozenset({"127.0.0.1"})
    job = "5b0f3d9e-0000-4000-8000-000000000001"
    delivery = outbox.enqueue(client, job, f"http://127.0.0.1:{receiver}/in", "job.done", {"id": job})
    assert outbox.claim_due(client) == [delivery]
    assert outbox.claim_due(client) == []  # claimed: nobody else sends it meanwhile
    first = outbox.deliver(client, delivery, SECRET, allow, backoff=(0.2, 0.5))
    assert first is not None and first["status"] == 500 and first["next_retry"] is not None
    assert outbox.claim_due(client) == []  # not before its pause
    wait_for(lambda: outbox.claim_due(client) == [delivery], 5, "the retry to be due")
    second = outbox.deliver(client, delivery, SECRET, allow, backoff=(0.2, 0.5))
    assert second is not None and second["status"] == 204 and second["next_retry"] is None
    assert [(a["attempt"], a["status"]) for a in outbox.attempts(client, job)] == [(1, 500), (2, 204)]
    assert outbox.deliver(client, delivery, SECRET, allow) is None  # delivered: gone
    (h1, b1), (h2, b2) = _Receiver.got
    assert b1 == b2 and h1["webhook-id"] == h2["webhook-id"] == delivery  # the same message, signed again
    payload = Webhook(SECRET).verify(b2, h2)
    assert payload["type"] == "job.done" and payload["data"] == {"id": job} and payload["timestamp"].endswith("Z")


def test_a_name_resolving_to_loopback_is_refused_at_delivery_and_not_retried(server, receiver):
    client = server.client()
    job = "5b0f3d9e-0000-4000-8000-000000000002"
    delivery = outbox.enqueue(client, job, f"https://localhost:{receiver}/in", "job.started", {"id": job})
    record = outbox.deliver(client, delivery, SECRET, frozenset())
    assert record is not None and record["status"] is None and "loopback" in record["error"]
    assert record["next_retry"] is None and outbox.claim_due(client) == [] and _Receiver.got == []


def test_the_settings_check_the_secret_and_the_backoff(monkeypatch):
    from zoomq import config

    monkeypatch.setenv("ZOOMQ_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("ZOOMQ_WEBHOOK_ALLOW", "127.0.0.1, Hooks.Local")
    monkeypatch.setenv("ZOOMQ_WEBHOOK_BACKOFF", "0.2,0.5")
    s = config.settings()
    assert (s.webhook_secret, s.webhook_allow, s.webhook_backoff) == (SECRET, {"127.0.0.1", "hooks.local"}, (0.2, 0.5))
    assert config.Settings.defaults().webhook_backoff == (5, 30, 120, 600, 3600)
    monkeypatch.setenv("ZOOMQ_WEBHOOK_BACKOFF", "5,-1")
    with pytest.raises(InvalidParameter, match="ZOOMQ_WEBHOOK_BACKOFF"):
        config.settings()
    monkeypatch.setenv("ZOOMQ_WEBHOOK_BACKOFF", "5")
    monkeypatch.setenv("ZOOMQ_WEBHOOK_SECRET", "not-a-secret")
    with pytest.raises(InvalidParameter) as e:
        config.settings()
    assert e.value.param == "ZOOMQ_WEBHOOK_SECRET" and "not-a-secret" not in str(e.value)


# -- jobs: the field at submit, a delivery queued by each transition -------------------------

def test_a_cancelled_job_queues_its_signed_event_with_the_public_record(server, receiver, monkeypatch):
    from zoomq.producer import Producer

    monkeypatch.setenv("ZOOMQ_WEBHOOK_ALLOW", "127.0.0.1")
    with pytest.raises(InvalidParameter, match="ZOOMQ_WEBHOOK_SECRET") as e:  # no secret: refused, not unsigned
        Producer().submit_image("a cat", model="tiny", steps=1, width=64, height=64, webhook="https://example.com/")
    assert e.value.param == "webhook"
    monkeypatch.setenv("ZOOMQ_WEBHOOK_SECRET", SECRET)
    producer = Producer()
    with pytest.raises(InvalidParameter, match="private"):
        producer.submit_image("a cat", model="tiny", steps=1, width=64, height=64, webhook="https://10.0.0.7/")
    url = f"http://127.0.0.1:{receiver}/in"
    job = producer.submit_image("a cat", model="tiny", steps=1, width=64, height=64, webhook=url,
                                owner="alice", submitter="alice")
    assert producer.status(job)["webhook_attempts"] == [] and outbox.claim_due(producer.redis) == []
    assert producer.cancel(job)
    (delivery,) = outbox.claim_due(producer.redis)
    s = producer.settings
    assert outbox.deliver(producer.redis, delivery, s.webhook_secret, s.webhook_allow, s.webhook_backoff)
    assert outbox.deliver(producer.redis, delivery, s.webhook_secret, s.webhook_allow, s.webhook_backoff)
    (headers, body), _ = _Receiver.got
    event = Webhook(SECRET).verify(body, headers)
    assert event["type"] == "job.cancelled" and event["data"]["id"] == job and event["data"]["state"] == "cancelled"
    assert not {"owner", "submitter", "webhook"} & set(event["data"]) and b"alice" not in body
    shown = producer.status(job)["webhook_attempts"]
    assert [(a["event"], a["status"]) for a in shown] == [("job.cancelled", 500), ("job.cancelled", 204)]


# -- the whole path: a render worker changes the job, the webhook worker delivers ------------

def test_an_image_job_run_by_a_worker_sends_started_and_done(cluster, tiny_t2i, receiver, monkeypatch):
    from zoomq.producer import Producer

    hooks = {"ZOOMQ_WEBHOOK_SECRET": SECRET, "ZOOMQ_WEBHOOK_ALLOW": "127.0.0.1", "ZOOMQ_WEBHOOK_BACKOFF": "0.2,0.5"}
    for name, value in hooks.items():
        monkeypatch.setenv(name, value)
    _Receiver.answers = [204, 500, 204]  # started at once; done after one retry
    cluster("hooks", models=(), queues="webhooks", concurrency=1)  # one thread: events in order
    cluster("w1", models=(tiny_t2i,))
    producer = Producer()
    job = producer.submit_image("a lighthouse", model="t2i", steps=1, width=64, height=64,
                                webhook=f"http://127.0.0.1:{receiver}/in")
    wait_for(lambda: len(_Receiver.got) == 3, 120, "started, done and done's retry to arrive")
    events = [Webhook(SECRET).verify(body, headers) for headers, body in _Receiver.got]
    assert [e["type"] for e in events] == ["job.started", "job.done", "job.done"]
    assert events[0]["data"]["state"] == "running" and events[1]["data"]["state"] == "done"
    wait_for(lambda: len(producer.status(job)["webhook_attempts"]) == 3, 10, "the attempts to be recorded")
    shown = [(a["event"], a["status"]) for a in producer.status(job)["webhook_attempts"]]
    assert shown == [("job.started", 204), ("job.done", 500), ("job.done", 204)]


# -- the API: the field, its refusals, its record ------------------------------------------

def test_the_api_takes_webhook_refuses_bad_ones_and_shows_the_attempts(make_client):
    body = {"kind": "image", "model": "t2i", "prompt": "a cat", "steps": 1, "width": 64, "height": 64}
    off = make_client()
    answer = off.post("/api/jobs", json={**body, "webhook": "https://example.com/hook"})
    assert answer.status_code == 400 and answer.get_json()["errors"][0]["field"] == "webhook"
    assert "ZOOMQ_WEBHOOK_SECRET" in answer.get_json()["errors"][0]["rule"]
    client = make_client(webhook_secret=SECRET)
    for bad in ("https://169.254.169.254/latest", "http://example.com/", 7, "https://[::ffff:10.0.0.1]/"):
        answer = client.post("/api/jobs", json={**body, "webhook": bad})
        assert answer.status_code == 400 and [e["field"] for e in answer.get_json()["errors"]] == ["webhook"], bad
    answer = client.post("/api/jobs", json={**body, "webhook": "https://hooks.example.com/in"})
    assert answer.status_code == 202
    job = client.get(answer.get_json()["status_url"]).get_json()
    assert job["webhook"] == "https://hooks.example.com/in" and job["webhook_attempts"] == []
    spec = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    assert "webhook" in spec["ImageJob"]["properties"] and "webhook_attempts" in spec["Job"]["properties"]


def test_zoomq_up_starts_the_webhook_worker_when_a_secret_is_set(tmp_path, tiny_t2i, receiver):
    from test_up import Up, http, wait_done, web_port

    _Receiver.answers = [204, 204]
    env = {"ZOOMQ_WEBHOOK_SECRET": SECRET, "ZOOMQ_WEBHOOK_ALLOW": "127.0.0.1"}
    up = Up(tmp_path / "data", [tiny_t2i], web_port(), env=env)
    try:
        assert up.said("webhooks ready")
        status, body = http("POST", f"{up.url}/api/jobs", {"kind": "image", "prompt": "x", "model": "t2i", "steps": 1,
                                                           "webhook": f"http://127.0.0.1:{receiver}/hook"})
        assert status == 202, body
        wait_done(up, json.loads(body)["id"], 120)
        wait_for(lambda: len(_Receiver.got) == 2, 30, "started and done to arrive")
        assert sorted(Webhook(SECRET).verify(b, h)["type"] for h, b in _Receiver.got) == ["job.done", "job.started"]
    finally:
        up.stop()


def test_zoomq_submit_webhook(server, monkeypatch, capsys):
    from support.cli import run_cli
    from zoomq.producer import Producer

    args = ["submit", "image", "a lighthouse", "--model", "t2i", "--steps", "1", "--size", "64"]
    code, _, err = run_cli(*args, "--webhook", "https://hooks.example.com/in", capsys=capsys)
    assert code == 2 and "webhook" in err and "ZOOMQ_WEBHOOK_SECRET" in err
    monkeypatch.setenv("ZOOMQ_WEBHOOK_SECRET", SECRET)
    code, _, err = run_cli(*args, "--webhook", "https://192.168.1.1/in", capsys=capsys)
    assert code == 2 and "webhook" in err and "private" in err
    code, out, err = run_cli(*args, "--webhook", "https://hooks.example.com/in", capsys=capsys)
    assert code == 0, err
    assert Producer().status(out.strip())["webhook"] == "https://hooks.example.com/in"
