"""What the web front end gives away, read as an attacker would: the headers of every answer
(private caching, no sniffing, no framing, a CSP), ``/metrics`` and ``/api/health`` without an
admin key, a broken keys file, the token's length and identity, dry runs and wrong keys against
the limits, and passwords in Redis URLs. All through the real app on a private Redis."""

from __future__ import annotations

import io
import logging
import re
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from zoomq import config
from zoomq.config import settings
from zoomq.errors import InvalidParameter
from zoomq.node.processes import free_port
from zoomq.queue.connection import redacted
from zoomq.queue.job_records import Jobs
from zoomq.storage import open_store
from zoomq.web import api_keys, create_app

IMAGE = {"kind": "image", "prompt": "a lighthouse", "model": "t2i", "steps": 2}
TEMPLATES = Path(__file__).parents[1] / "src" / "zoomq" / "web" / "templates"
TOKEN = "t" * 40  # ZOOMQ_API_TOKEN: at least 32 characters


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyring(tmp_path):
    """A keys file with alice and the admin root; returns (path, {name: key})."""
    made = {name: api_keys.new_key() for name in ("alice", "root")}
    path = tmp_path / "keys"
    path.write_text("\n".join(api_keys.line(name, key, admin=name == "root") for name, key in made.items()) + "\n")
    return path, made


def finished_zoom(client, headers: dict | None = None) -> str:
    """A zoom job with a keyframe, a result and a sidecar, taken through the real records and store."""
    job_id = client.post("/api/jobs", headers=headers, json={
        "kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 2, "size": 128, "mask_width": 32,
        "gif": True}).get_json()["id"]
    s = client.application.extensions["zoomq"].settings
    store, jobs = open_store(s, client.producer.redis), Jobs(client.producer.redis, s.job_ttl)
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), "navy").save(buffer, format="PNG")
    for name, data in (("keyframe-000.png", buffer.getvalue()), ("result.mp4", bytes(range(256)) * 40),
                       ("result.gif", b"GIF89a"), ("sidecar.json", b"{}")):
        store.put(f"{job_id}/{name}", data)
    jobs.update(job_id, keyframes_done=1)
    jobs.finish(job_id, result=f"{job_id}/result.mp4", result_type="video/mp4", sidecar=f"{job_id}/sidecar.json")
    return job_id


# -- private by default on the wire ---------------------------------------------------------------------

def test_every_answer_is_private_unsniffed_and_unframed(client):
    job = finished_zoom(client)
    running = client.post("/api/jobs", json=IMAGE).get_json()["id"]
    asked = {
        "/": {}, "/jobs": {}, f"/jobs/{job}": {}, "/api/jobs": {}, f"/api/jobs/{job}": {},
        f"/api/jobs/{job}/result": {}, f"/api/jobs/{job}/result?download=1": {"Range": "bytes=0-99"},
        f"/api/jobs/{job}/keyframes/0": {}, f"/api/jobs/{job}/sidecar": {}, f"/api/jobs/{job}/gif": {},
        f"/api/jobs/{running}/preview": {}, "/api/health": {}, "/api/openapi.json": {}, "/metrics": {},
        "/api/usage": {},
        "/api/jobs/1c6b0a44-4d8e-4a31-9a53-0d1f1b0c1a2b": {}, "/static/job.js": {},
    }
    answered = set()
    urls = client.application.url_map.bind("localhost")
    for path, headers in asked.items():
        response = client.get(path, headers=headers)
        assert response.status_code in (200, 204, 206, 404), (path, response.status_code)
        answered.add(urls.match(path.partition("?")[0])[0])
        h = response.headers
        assert h.get("X-Content-Type-Options") == "nosniff", path
        csp = h.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp, path
        assert h.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin-when-cross-origin"), path
        if path.startswith("/static/"):
            continue
        cache = h.get("Cache-Control", "")
        assert "public" not in cache and ("private" in cache or "no-store" in cache), (path, cache)
        if response.mimetype == "application/json" and not path.endswith("/sidecar"):  # status, not an artifact
            assert "no-store" in cache, (path, cache)
        vary = {v.strip().lower() for v in h.get("Vary", "").split(",")}
        assert {"authorization", "cookie"} <= vary, (path, h.get("Vary"))
    # Every route a GET reaches was asked above: a new one cannot slip through untested.
    gets = {r.endpoint for r in client.application.url_map.iter_rules() if "GET" in r.methods}
    assert gets - answered == set()


def test_artifacts_are_cached_privately_not_publicly(client):
    job = finished_zoom(client)
    for path in (f"/api/jobs/{job}/result", f"/api/jobs/{job}/keyframes/0"):
        cache = client.get(path).headers["Cache-Control"]
        assert "private" in cache and "public" not in cache, cache


def test_the_pages_need_no_inline_script_or_style():
    """The CSP allows only the site's own files: no page may carry an inline script, style or handler."""
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text), template.name
        assert not re.search(r"<style|\sstyle=|\son[a-z]+=|javascript:", text, re.I), template.name


@pytest.mark.browser
def test_the_pages_work_under_their_csp_and_no_other_site_frames_them(server, tmp_path):
    """In Chromium: the submit page's script and style run with nothing refused by the policy,
    and a page of another origin that frames it gets an empty frame."""
    from support.browser import chromium, serve
    from zoomq.node.processes import WebProcess

    web = WebProcess(server.url, tmp_path)
    try:
        (tmp_path / "site").mkdir()
        (tmp_path / "site" / "frame.html").write_text(f'<iframe id="zq" src="{web.url}/"></iframe>')
        with chromium() as browser, serve(tmp_path / "site") as other_site:
            page = browser.new_page()
            refused: list[str] = []
            page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
            page.goto(web.url + "/")
            page.locator("[data-tab=image]").click()  # submit.js switches forms without a reload
            assert page.locator("#image-form").is_visible() and page.locator("#zoom-form").is_hidden()
            assert page.url.endswith("?kind=image")
            style = page.eval_on_selector("header", "e => getComputedStyle(e).display")
            assert style == "flex"  # zoomq.css applied
            page.goto(web.url + "/jobs")
            assert refused == []

            page.goto(other_site + "/frame.html")
            page.wait_for_timeout(500)
            frame = page.frame_locator("#zq")
            assert frame.locator("header").count() == 0  # blocked: frame-ancestors 'none'
    finally:
        web.stop()


# -- /metrics and /api/health ---------------------------------------------------------------------------------

def test_metrics_need_an_admin_key_when_keys_exist(make_client, keyring):
    path, k = keyring
    client = make_client(api_keys_file=str(path))
    refused = client.get("/metrics")
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"zoomq_" not in refused.data
    assert client.get("/metrics", headers=bearer(k["alice"])).status_code == 403
    scraped = client.get("/metrics", headers=bearer(k["root"]))
    assert scraped.status_code == 200 and b"zoomq_redis_up 1.0" in scraped.data


def test_health_tells_others_only_what_a_load_balancer_needs(make_client, keyring):
    path, k = keyring
    client = make_client(api_keys_file=str(path))
    for headers in ({}, bearer(k["alice"])):
        health = client.get("/api/health", headers=headers)
        assert health.status_code == 200
        assert health.get_json() == {"ok": True, "broker": {"reachable": True}}
    full = client.get("/api/health", headers=bearer(k["root"])).get_json()
    assert full["workers"][0]["name"] == "w1@test" and full["broker"]["url"].startswith("redis://")
    # The overview page of a signed-out visitor names no worker either.
    assert "w1@test" not in client.get("/jobs").get_data(as_text=True)


def test_health_of_an_unreachable_redis_names_no_host_to_others(keyring, tiny_t2i):
    path, k = keyring
    s = replace(settings(), redis_url=f"redis://zoomq:pw@127.0.0.1:{free_port()}/0", api_keys_file=str(path))
    client = create_app(s).test_client()
    health = client.get("/api/health")
    assert health.status_code == 503 and health.get_json() == {"ok": False, "broker": {"reachable": False}}
    full = client.get("/api/health", headers=bearer(k["root"])).get_json()
    assert full["broker"]["reachable"] is False and "ZOOMQ_REDIS_URL" in full["broker"]["error"]


# -- keys -------------------------------------------------------------------------------------------------------

def test_a_keys_file_broken_while_serving_is_logged_and_a_plain_503(make_client, keyring, caplog):
    path, k = keyring
    client = make_client(api_keys_file=str(path))
    job = client.post("/api/jobs", json=IMAGE, headers=bearer(k["alice"])).get_json()["id"]
    secret_hash = "ab" * 32
    path.write_text(f"mallory {secret_hash} root\n")
    with caplog.at_level(logging.ERROR):
        answers = [client.get(f"/api/jobs/{job}", headers=bearer(k["alice"])),
                   client.get(f"/jobs/{job}", headers=bearer(k["alice"])),
                   client.get("/metrics", headers=bearer(k["root"]))]
    for answer in answers:
        text = answer.get_data(as_text=True)
        assert answer.status_code == 503, text
        assert str(path) not in text and "mallory" not in text and secret_hash not in text, text
    logged = caplog.text
    assert str(path) in logged and "mallory" in logged


def test_a_short_api_token_is_refused_at_start_naming_the_variable(monkeypatch, capsys):
    from support.cli import run_cli

    monkeypatch.setenv("ZOOMQ_API_TOKEN", "s3cret")
    with pytest.raises(InvalidParameter) as e:
        config.settings()
    assert e.value.param == "ZOOMQ_API_TOKEN" and "32" in e.value.rule and "s3cret" not in str(e.value)
    code, _, err = run_cli("web", "--port", free_port(), capsys=capsys)
    assert code == 2 and "ZOOMQ_API_TOKEN" in err and "s3cret" not in err, err
    monkeypatch.setenv("ZOOMQ_API_TOKEN", TOKEN)
    assert config.settings().api_token == TOKEN


def test_the_token_and_a_file_key_named_admin_are_different_owners(make_client, tmp_path):
    mallory = api_keys.new_key()
    path = tmp_path / "keys"
    path.write_text(api_keys.line("admin", mallory, admin=False) + "\n")
    client = make_client(api_keys_file=str(path), api_token=TOKEN)
    theirs = client.post("/api/jobs", json=IMAGE, headers=bearer(TOKEN)).get_json()["id"]
    mine = client.post("/api/jobs", json=IMAGE, headers=bearer(mallory)).get_json()["id"]
    assert client.producer.jobs.get(mine)["owner"] == f"admin#{api_keys.digest(mallory)[:16]}"
    assert client.producer.jobs.get(theirs)["owner"] == api_keys.TOKEN_NAME
    assert client.get(f"/api/jobs/{theirs}", headers=bearer(mallory)).status_code == 404
    assert client.delete(f"/api/jobs/{theirs}", headers=bearer(mallory)).status_code == 404
    listed = client.get("/api/jobs", headers=bearer(mallory)).get_json()["jobs"]
    assert [j["id"] for j in listed] == [mine]
    assert client.get(f"/api/jobs/{mine}", headers=bearer(TOKEN)).status_code == 200  # the token is an admin


# -- limits ---------------------------------------------------------------------------------------------------

def test_dry_runs_count_against_the_rate_limit(make_client):
    client = make_client(rate_limit=(2, 60))
    assert [client.post("/api/jobs?dry_run=1", json=IMAGE).status_code for _ in range(2)] == [200, 200]
    refused = client.post("/api/jobs", json=IMAGE)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert client.post("/api/jobs?dry_run=1", json=IMAGE).status_code == 429


def test_wrong_keys_are_throttled_per_address(make_client, keyring):
    path, k = keyring
    client = make_client(api_keys_file=str(path), key_attempts=(3, 60))
    job = client.post("/api/jobs", json=IMAGE, headers=bearer(k["alice"])).get_json()["id"]
    wrong = [client.get(f"/api/jobs/{job}", headers=bearer(f"zq_guess{i}")).status_code for i in range(3)]
    assert wrong == [401, 401, 401]
    # Now even the right key is refused from this address, until the window ends.
    refused = client.get(f"/api/jobs/{job}", headers=bearer(k["alice"]))
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    assert "ZOOMQ_KEY_ATTEMPTS" in refused.get_json()["error"]
    assert client.get("/metrics", headers=bearer(k["root"])).status_code == 429
    other = {"REMOTE_ADDR": "10.0.0.9"}
    assert client.get(f"/api/jobs/{job}", headers=bearer(k["alice"]), environ_base=other).status_code == 200
    assert client.get("/api/health").status_code == 200  # no key presented: nothing to throttle
    assert client.producer.redis.keys("zoomq:key-failures:127.0.0.1:*")


def test_wrong_keys_on_the_form_are_throttled_too(make_client, keyring):
    path, k = keyring
    client = make_client(api_keys_file=str(path), key_attempts=(2, 60))
    page = client.get("/").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    form = {"csrf_token": found.group(1), "kind": "image", "prompt": "x", "model": "t2i"}
    assert [client.post("/submit", data={**form, "token": "nope"}).status_code for _ in range(2)] == [401, 401]
    refused = client.post("/submit", data={**form, "token": k["alice"]})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


# -- passwords in Redis URLs ------------------------------------------------------------------------------------

PASSWORDS = ["S3CRET", "AAA/BBB", "AAA#BBB", "AAA?BBB", "AAA@BBB", "AAA:BBB", "AAA%40BBB%2FCCC",
             "AAA/BBB#CCC?DDD@EEE:FFF", "AAA&password=BBB"]


@pytest.mark.parametrize("password", PASSWORDS)
@pytest.mark.parametrize("form", [
    "redis://:{p}@redis-host:6379/0",
    "redis://zoomq:{p}@redis-host:6379/0",
    "rediss://:{p}@redis-host:6380/1",
    "rediss://zoomq:{p}@redis-host/0?ssl_cert_reqs=required",
    "redis://{p}@redis-host:6379/0",
    "unix://:{p}@/run/redis/redis.sock?db=2",
    "unix://zoomq:{p}@/run/redis/redis.sock",
    "redis://redis-host:6379/0?password={p}",
    "redis://redis-host:6379/0?db=1&password={p}&health_check_interval=2",
])
def test_redacted_hides_any_password(form, password):
    if form.startswith("redis://{p}@") and ":" in password:
        pytest.skip("a password alone holding ':' reads as USER:PASSWORD, as redis-py reads it")
    url = form.format(p=password)
    shown = redacted(url)
    assert "***" in shown and shown.startswith(url.partition("://")[0] + "://"), (url, shown)
    for piece in re.split(r"[^A-Z0-9]+", password):
        assert not piece or piece not in shown, (url, shown)
    if "zoomq:" in form:
        assert "zoomq:***" in shown, shown  # the user name stays: it says which ACL user is meant


def test_redacted_leaves_urls_without_a_password_alone():
    for url in ("redis://redis-host:6379/0", "rediss://redis-host/0?ssl_cert_reqs=required",
                "unix:///run/redis/redis.sock?db=2"):
        assert redacted(url) == url
