"""Browser sessions and CSRF through Flask's test client on a private redis-server: the cookie is a
random id whose record lives in Redis (with an expiry) and dies at sign-out; it is ``Secure`` and
``__Host-`` over HTTPS, directly or behind a trusted proxy; no signing secret is kept in Redis; a
cookie-authenticated form needs the CSRF token and cookie-authenticated JSON a same-origin
``Origin``, while Bearer callers are exempt."""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request

import pytest

from zoomq.web.api_keys import digest

KEY = "zq_" + "k" * 40
JOB = {"kind": "image", "prompt": "x", "model": "t2i"}
COOKIE, SECURE_COOKIE = "zoomq_session", "__Host-zoomq_session"


def csrf(client, path: str = "/", **kwargs) -> str:
    page = client.get(path, **kwargs).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


def sign_in(client, **kwargs):
    """Enter the key on the submit form, as a browser does; the answer carries the session cookie."""
    response = client.post("/submit", data={**JOB, "csrf_token": csrf(client, **kwargs), "token": KEY}, **kwargs)
    assert response.status_code == 303, response.get_data(as_text=True)
    return response


def queued(client) -> int:
    r = client.producer.redis
    return sum(r.llen(k) for k in r.scan_iter(match="render.*"))


def session_records(client) -> list[bytes]:
    return list(client.producer.redis.scan_iter(match="zoomq:session:*"))


def test_cookie_is_a_random_id_with_an_expiring_record_in_redis(make_client):
    client = make_client(api_token=KEY, session_ttl=600)
    sign_in(client)
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None and re.fullmatch(r"[A-Za-z0-9_-]{43}", cookie.value)
    padded = cookie.value + "=" * (-len(cookie.value) % 4)
    assert digest(KEY) not in cookie.value and digest(KEY).encode() not in base64.urlsafe_b64decode(padded)
    assert cookie.http_only and cookie.same_site == "Lax" and not cookie.secure
    records = session_records(client)
    assert len(records) == 1 and cookie.value.encode() not in records[0]  # Redis keeps only the id's hash
    assert 0 < client.producer.redis.ttl(records[0]) <= 600
    assert client.get("/api/jobs").status_code == 200  # the cookie alone signs the browser in


def test_no_signing_secret_in_redis(make_client):
    client = make_client(api_token=KEY, secret_key="")
    sign_in(client)
    assert not client.producer.redis.exists("zoomq:web:secret")


def test_a_forged_or_expired_session_id_signs_nobody_in(make_client):
    client = make_client(api_token=KEY)
    client.set_cookie(COOKIE, "A" * 43)
    assert client.get("/api/jobs").status_code == 401
    sign_in(client)
    client.producer.redis.delete(*session_records(client))  # what the record's expiry does
    assert client.get("/api/jobs").status_code == 401


def test_sign_out_kills_the_session_on_the_server(make_client):
    client = make_client(api_token=KEY)
    sign_in(client)
    old = client.get_cookie(COOKIE).value
    page = client.get("/").get_data(as_text=True)
    assert 'action="/logout"' in page
    assert client.post("/logout").status_code == 400  # CSRF-checked like every form
    response = client.post("/logout", data={"csrf_token": csrf(client)})
    assert response.status_code == 303 and session_records(client) == []
    assert client.get("/api/jobs").status_code == 401
    replayed = make_client(api_token=KEY)
    replayed.set_cookie(COOKIE, old)
    assert replayed.get("/api/jobs").status_code == 401


def test_signing_in_again_starts_a_new_session(make_client):
    """A session id planted before sign-in (session fixation) is not the one signed in."""
    client = make_client(api_token=KEY)
    csrf(client)
    planted = client.get_cookie(COOKIE).value
    sign_in(client)
    assert client.get_cookie(COOKIE).value != planted
    stale = make_client(api_token=KEY)
    stale.set_cookie(COOKIE, planted)
    assert stale.get("/api/jobs").status_code == 401


def test_https_cookie_is_secure_with_the_host_prefix(make_client):
    client = make_client(api_token=KEY)
    response = sign_in(client, base_url="https://localhost")
    set_cookie = response.headers["Set-Cookie"]
    assert set_cookie.startswith(SECURE_COOKIE + "=") and "Secure" in set_cookie and "Path=/" in set_cookie
    assert "Domain" not in set_cookie and "HttpOnly" in set_cookie
    assert client.get("/api/jobs", base_url="https://localhost").status_code == 200
    # Over HTTPS only the prefixed cookie counts: a plain one (which plain HTTP could have set) is ignored.
    other = make_client(api_token=KEY)
    sign_in(other)
    assert other.get("/api/jobs").status_code == 200
    assert other.get("/api/jobs", base_url="https://localhost").status_code == 401


def test_https_behind_a_trusted_proxy(make_client):
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
    proxied = make_client(api_token=KEY, trusted_proxies=1)
    assert sign_in(proxied, headers=forwarded).headers["Set-Cookie"].startswith(SECURE_COOKIE + "=")
    direct = make_client(api_token=KEY)  # no trusted proxy: the header is anybody's and is ignored
    set_cookie = sign_in(direct, headers=forwarded).headers["Set-Cookie"]
    assert set_cookie.startswith(COOKIE + "=") and "Secure" not in set_cookie


def test_cross_site_form_post_on_a_session_cookie_needs_the_csrf_token(make_client):
    client = make_client(api_token=KEY)
    sign_in(client)
    before = queued(client)
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        refused = client.post("/api/jobs", data=JOB, content_type=content_type,
                              headers={"Origin": "https://evil.example"})
        assert refused.status_code == 403 and "csrf_token" in refused.get_json()["error"]
        forged = client.post("/api/jobs", data={**JOB, "csrf_token": "forged"}, content_type=content_type)
        assert forged.status_code == 403
    assert queued(client) == before
    token = csrf(client)
    for content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        accepted = client.post("/api/jobs", data={**JOB, "csrf_token": token}, content_type=content_type)
        assert accepted.status_code == 202, accepted.get_json()
    assert queued(client) == before + 2


def test_cookie_authenticated_json_needs_a_same_origin_origin(make_client):
    client = make_client(api_token=KEY)
    sign_in(client)
    before = queued(client)
    for origin in ("https://evil.example", "http://localhost.evil.example", "null", None):
        headers = {"Origin": origin} if origin else {}
        refused = client.post("/api/jobs", json=JOB, headers=headers)
        assert refused.status_code == 403 and "Origin" in refused.get_json()["error"], origin
    assert queued(client) == before
    accepted = client.post("/api/jobs", json=JOB, headers={"Origin": "http://localhost"})
    assert accepted.status_code == 202
    url = accepted.get_json()["status_url"]
    assert client.delete(url, headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.get(url, headers={"Origin": "https://evil.example"}).status_code == 200  # reading is safe
    assert client.delete(url, headers={"Origin": "http://localhost"}).status_code == 200


def test_bearer_callers_are_exempt(make_client):
    client = make_client(api_token=KEY)
    sign_in(client)  # a cookie too: the Authorization header is what authenticates
    bearer = {"Authorization": f"Bearer {KEY}", "Origin": "https://elsewhere.example"}
    assert client.post("/api/jobs", json=JOB, headers=bearer).status_code == 202
    assert client.post("/api/jobs", data=JOB, headers=bearer).status_code == 202


def test_csrf_tokens_belong_to_their_session(make_client):
    first, second = make_client(api_token=KEY), make_client(api_token=KEY)
    sign_in(first)
    sign_in(second)
    assert first.post("/api/jobs", data={**JOB, "csrf_token": csrf(second)}).status_code == 403
    assert first.post("/api/jobs", data={**JOB, "csrf_token": csrf(first)}).status_code == 202


@pytest.mark.browser
def test_a_browser_signs_in_with_its_key_and_out(server, tmp_path, tiny_t2i):
    """Real Chromium on `zoomq web` with a key: the form signs it in (an HttpOnly cookie no script
    reads), the page's own fetch passes the Origin check, and signing out kills the old cookie."""
    from support.browser import chromium
    from zoomq.node.processes import WebProcess
    from zoomq.queue import connection, registry

    client = connection.client_for(server.url)
    registry.announce(client, "w1@test", {"models": registry.describe_models([tiny_t2i]), "queues": ["render"]},
                      heartbeat=600)
    web = WebProcess(server.url, tmp_path, env={"ZOOMQ_API_TOKEN": KEY})
    try:
        with chromium() as browser:
            page = browser.new_page()
            page.goto(web.url + "/?kind=image")
            form = page.locator("#image-form")
            form.locator("textarea[name=prompt]").fill("a lighthouse")
            form.locator("select[name=model]").select_option("t2i")
            form.locator("input[name=token]").fill(KEY)
            form.locator("button[type=submit]").click()
            page.wait_for_url(re.compile(r"/jobs/[0-9a-f-]{36}$"))
            assert page.locator("form.sign-out button").is_visible()
            cookie = next(c for c in page.context.cookies() if c["name"] == COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and page.evaluate("document.cookie") == ""
            status = page.evaluate("""async () => (await fetch('/api/jobs', {method: 'POST',
                headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({kind: 'image', prompt: 'x', model: 't2i'})})).status""")
            assert status == 202
            page.locator("form.sign-out button").click()
            page.wait_for_url(web.url + "/")
            assert page.locator("#image-form input[name=token]").count() == 1
        replay = urllib.request.Request(web.url + "/api/jobs", headers={"Cookie": f"{COOKIE}={cookie['value']}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(replay, timeout=10)
        assert refused.value.code == 401
    finally:
        web.stop()
