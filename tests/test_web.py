"""The web front end through Flask's test client, on a private redis-server: every endpoint,
every kind of validation error, the token, CSRF, the rate limit and upload limits. Workers are
announced in the real registry (no worker process is needed to accept or queue a job)."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from dataclasses import replace

import pytest
from PIL import Image

from zoomq.config import settings
from zoomq.node.processes import free_port
from zoomq.queue.job_records import Jobs
from zoomq.storage import open_store
from zoomq.web import create_app


def png_b64(size=(64, 64), color=(200, 40, 40), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


def fields_of(response) -> dict:
    body = response.get_json()
    return {e["field"]: e for e in body["errors"]}


def queued_tasks(client) -> int:
    r = client.producer.redis
    return sum(r.llen(k) for k in r.scan_iter(match="render.*"))


def csrf(client, path="/") -> str:
    page = client.get(path).get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None, page
    return found.group(1)


# -- submitting through the API ----------------------------------------------------------------

def test_image_job_is_queued_and_listed(client):
    response = client.post("/api/jobs", json={"kind": "image", "prompt": "a castle", "model": "t2i",
                                              "steps": 4, "seed": 3, "guidance": 5})
    assert response.status_code == 202
    job = response.get_json()
    assert re.fullmatch(r"[0-9a-f-]{36}", job["id"]) and response.headers["Location"] == job["status_url"]
    status = client.get(job["status_url"]).get_json()
    assert status["state"] == "queued" and status["queue_position"] == 1 and status["progress"] == 0
    assert status["params"]["steps"] == 4 and status["params"]["seed"] == 3 and status["params"]["guidance"] == 5
    assert status["result_url"] is None and status["keyframe_urls"] == []
    assert queued_tasks(client) == 1
    listed = client.get("/api/jobs").get_json()["jobs"]
    assert [j["id"] for j in listed] == [job["id"]] and listed[0]["prompt"] == "a castle"


def test_zoom_job_with_schedule_and_init_image(client):
    body = {"kind": "zoom", "prompt": "a spiral", "model": "inpaint", "keyframes": 4, "size": 128,
            "mask_width": 32, "interpolation_frames": 5, "steps": 3, "gif": True,
            "schedule": [{"keyframe": 2, "prompt": "a forest"}], "init_image": "data:image/png;base64," + png_b64()}
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 202, response.get_json()
    params = client.get(response.get_json()["status_url"]).get_json()["params"]["zoom"]
    assert params["keyframes"] == 4
    assert params["schedule"] == [{"keyframe": 2, "prompt": "a forest", "negative_prompt": None}]
    assert params["init_image"].endswith("/init.png") and params["gif"] is True


def test_every_bad_field_is_reported_once_and_nothing_is_queued(client):
    response = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i", "steps": 0,
                                              "guidance": -1, "scheduler": "nope", "width": 100, "eta": "a",
                                              "guidance_cutoff": 0})
    assert response.status_code == 400
    errors = fields_of(response)
    assert set(errors) == {"steps", "guidance", "scheduler", "width", "eta", "guidance_cutoff"}
    assert errors["steps"]["value"] == 0 and "at least 1" in errors["steps"]["rule"]
    assert "multiple of 8" in errors["width"]["rule"] and errors["width"]["value"] == 100

    response = client.post("/api/jobs", json={"kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 1,
                                              "fps": 0, "direction": "up", "seam": -1, "colour": "red",
                                              "schedule": [{"keyframe": -1, "prompt": "y"}]})
    errors = fields_of(response)
    assert set(errors) == {"keyframes", "fps", "direction", "seam", "colour", "schedule[0].keyframe"}
    assert queued_tasks(client) == 0 and client.get("/api/jobs").get_json()["jobs"] == []


@pytest.mark.parametrize("body, field, words", [
    ({"kind": "image", "prompt": "x", "model": "sd21"}, "model", "the workers serve: inpaint, t2i"),
    ({"kind": "image", "prompt": "x", "model": "inpaint"}, "mask", "required"),
    ({"kind": "image", "model": "t2i"}, "prompt", "required"),
    ({"kind": "image", "prompt": "x" * 1001, "model": "t2i"}, "prompt", "at most 1000 characters"),
    ({"kind": "zoom", "prompt": "x", "model": "inpaint", "schedule": [{"keyframe": 1, "prompt": "y" * 1001}]},
     "schedule[0].prompt", "too long"),
    ({"kind": "video", "prompt": "x", "model": "t2i"}, "kind", "image or zoom"),
    ({"kind": "image", "prompt": "x", "model": "t2i", "init_image": "!!"}, "init_image", "base64"),
    ({"kind": "image", "prompt": "x", "model": "t2i", "init_image": base64.b64encode(b"hello").decode()},
     "init_image", "PNG, JPEG or WebP"),
    ({"kind": "image", "prompt": "x", "model": "t2i", "init_image": png_b64(fmt="GIF")},
     "init_image", "PNG, JPEG or WebP"),
    ({"kind": "image", "prompt": "x", "model": "t2i", "init_image": png_b64(size=(5000, 4000))},
     "init_image", "too large"),
    ({"kind": "image", "prompt": "x", "model": "t2i", "strength": 0.5}, "strength", "needs an init image"),
    (["not", "an", "object"], "body", "JSON object"),
])
def test_each_validation_error(client, body, field, words):
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 400
    errors = fields_of(response)
    assert field in errors and words in errors[field]["rule"], errors
    assert queued_tasks(client) == 0


def test_unknown_model_without_workers(make_client):
    client = make_client(workers=False)
    errors = fields_of(client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"}))
    assert "none: start a worker" in errors["model"]["rule"]


# -- following, cancelling, fetching -------------------------------------------------------------

def test_unknown_and_malformed_ids_are_404(client):
    for path in ("/api/jobs/1c6b0a44-4d8e-4a31-9a53-0d1f1b0c1a2b", "/api/jobs/..%2F..%2Fetc", "/api/jobs/x/result",
                 "/jobs/1c6b0a44-4d8e-4a31-9a53-0d1f1b0c1a2b"):
        assert client.get(path).status_code == 404
    assert client.delete("/api/jobs/1c6b0a44-4d8e-4a31-9a53-0d1f1b0c1a2b").status_code == 404
    assert "error" in client.get("/api/jobs/nope").get_json()


def test_cancel_then_cancel_again(client):
    job = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"}).get_json()
    response = client.delete(job["status_url"])
    assert response.status_code == 200 and response.get_json()["state"] == "cancelled"
    assert client.get(job["status_url"]).get_json()["state"] == "cancelled"
    again = client.delete(job["status_url"])
    assert again.status_code == 409 and again.get_json()["state"] == "cancelled"
    assert client.get(job["status_url"] + "/result").status_code == 409


def _finished_zoom(client) -> tuple[str, bytes]:
    """A zoom job taken through the real job records and store as a worker would."""
    job_id = client.post("/api/jobs", json={"kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 2,
                                            "size": 128, "mask_width": 32}).get_json()["id"]
    s = client.application.extensions["zoomq"].settings
    store, jobs = open_store(s, client.producer.redis), Jobs(client.producer.redis, s.job_ttl)
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), "navy").save(buffer, format="PNG")
    store.put(f"{job_id}/keyframe-000.png", buffer.getvalue())
    jobs.update(job_id, keyframes_done=1)
    movie = bytes(range(256)) * 40
    store.put(f"{job_id}/result.mp4", movie)
    store.put(f"{job_id}/sidecar.json", b'{"keyframes": []}')
    return job_id, movie


def test_keyframes_result_ranges_and_sidecar(client):
    job_id, movie = _finished_zoom(client)
    status = client.get(f"/api/jobs/{job_id}").get_json()
    assert status["keyframe_urls"] == [f"/api/jobs/{job_id}/keyframes/0"]
    keyframe = client.get(status["keyframe_urls"][0])
    assert keyframe.status_code == 200 and keyframe.mimetype == "image/png"
    assert Image.open(io.BytesIO(keyframe.data)).size == (128, 128)
    assert client.get(f"/api/jobs/{job_id}/keyframes/1").status_code == 404  # not rendered yet
    assert client.get(f"/api/jobs/{job_id}/keyframes/7").status_code == 404  # past the last
    assert client.get(f"/api/jobs/{job_id}/result").status_code == 409  # still running

    jobs = Jobs(client.producer.redis, 600)
    jobs.finish(job_id, result=f"{job_id}/result.mp4", result_type="video/mp4", sidecar=f"{job_id}/sidecar.json")
    status = client.get(f"/api/jobs/{job_id}").get_json()
    assert status["state"] == "done" and status["progress"] == 1.0 and status["gif_url"] is None
    whole = client.get(status["result_url"])
    assert whole.status_code == 200 and whole.mimetype == "video/mp4" and whole.data == movie
    assert whole.headers["Accept-Ranges"] == "bytes"
    part = client.get(status["result_url"], headers={"Range": "bytes=1000-1099"})
    assert part.status_code == 206 and part.data == movie[1000:1100]
    assert part.headers["Content-Range"] == f"bytes 1000-1099/{len(movie)}"
    download = client.get(status["download_url"])
    assert f"zoomq-{job_id}.mp4" in download.headers["Content-Disposition"]
    assert client.get(status["sidecar_url"]).get_json() == {"keyframes": []}
    assert client.get(f"/api/jobs/{job_id}/gif").status_code == 404


def test_health_lists_workers_models_and_queues(client):
    client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"})
    health = client.get("/api/health").get_json()
    assert health["ok"] and health["broker"]["reachable"]
    assert health["models"] == ["inpaint", "t2i"]
    assert health["workers"][0]["name"] == "w1@test"
    assert health["workers"][0]["models"]["inpaint"]["task"] == "inpainting"
    assert health["queues"] == {"encode": 0, "render": 0, "render.inpaint": 0, "render.t2i": 1}


def test_broker_down_is_503(tiny_t2i):
    s = replace(settings(), redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit=(0, 0))
    client = create_app(s).test_client()
    health = client.get("/api/health")
    assert health.status_code == 503 and health.get_json()["broker"]["reachable"] is False
    response = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"})
    assert response.status_code == 503 and "ZOOMQ_REDIS_URL" in response.get_json()["error"]
    assert "cannot reach Redis" in client.get("/").get_data(as_text=True)


# -- guards -----------------------------------------------------------------------------------------

def test_token_guards_every_job_route(make_client):
    client = make_client(api_token="s3cret")
    body = {"kind": "image", "prompt": "x", "model": "t2i"}
    assert client.post("/api/jobs", json=body).status_code == 401
    assert client.post("/api/jobs", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    response = client.post("/api/jobs", json=body, headers={"Authorization": "Bearer s3cret"})
    assert response.status_code == 202
    url = response.get_json()["status_url"]
    assert client.get(url).status_code == 401 and client.get("/api/jobs").status_code == 401
    assert client.get(url).headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/api/health").status_code == 200 and client.get("/api/openapi.json").status_code == 200
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_token_on_the_form(make_client):
    client = make_client(api_token="s3cret")
    assert 'name="token"' in client.get("/").get_data(as_text=True)
    form = {"csrf_token": csrf(client), "kind": "image", "prompt": "x", "model": "t2i"}
    assert client.post("/submit", data={**form, "token": "wrong"}).status_code == 401
    assert queued_tasks(client) == 0
    response = client.post("/submit", data={**form, "token": "s3cret"})
    assert response.status_code == 303
    assert 'name="token"' not in client.get("/").get_data(as_text=True)  # the session remembers


def test_rate_limit_per_client(make_client):
    client = make_client(rate_limit=(2, 60))
    body = {"kind": "image", "prompt": "x", "model": "t2i"}
    assert [client.post("/api/jobs", json=body).status_code for _ in range(2)] == [202, 202]
    refused = client.post("/api/jobs", json=body)
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 60
    other = client.post("/api/jobs", json=body, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert other.status_code == 202
    assert queued_tasks(client) == 3
    assert any(k.startswith(b"zoomq:rate:addr:127.0.0.1:") for k in client.producer.redis.keys("zoomq:rate:*"))


def test_request_size_limit(make_client):
    client = make_client(max_upload=4096)
    body = {"kind": "image", "prompt": "x", "model": "t2i", "init_image": png_b64(size=(256, 256), color=None)}
    response = client.post("/api/jobs", json={**body, "init_image": base64.b64encode(bytes(8192)).decode()})
    assert response.status_code == 413 and "ZOOMQ_MAX_UPLOAD" in response.get_json()["error"]


# -- pages ------------------------------------------------------------------------------------------

def test_form_submits_a_zoom_with_schedule_and_upload(client):
    buffer = io.BytesIO()
    Image.new("RGB", (128, 128), "teal").save(buffer, format="JPEG")
    form = {"csrf_token": csrf(client), "kind": "zoom", "prompt": "a spiral", "model": "inpaint", "keyframes": "3",
            "size": "128", "mask_width": "32", "steps": "", "gif": "on",
            "schedule_keyframe": ["1", "2", ""], "schedule_prompt": ["a cave", "", ""],
            "init_image": (io.BytesIO(buffer.getvalue()), "start.jpg")}
    response = client.post("/submit", data=form, content_type="multipart/form-data")
    assert response.status_code == 303
    page = client.get(response.headers["Location"])
    assert page.status_code == 200 and "a spiral" in page.get_data(as_text=True)
    job_id = response.headers["Location"].rsplit("/", 1)[-1]
    params = client.get(f"/api/jobs/{job_id}").get_json()["params"]["zoom"]
    assert params["steps"] == 20 and params["gif"] is True and params["init_image"]
    assert params["schedule"] == [{"keyframe": 1, "prompt": "a cave", "negative_prompt": None}]


def test_form_errors_are_shown_per_field_and_values_kept(client):
    form = {"csrf_token": csrf(client), "kind": "zoom", "prompt": "a spiral", "model": "inpaint",
            "keyframes": "1", "fps": "abc", "schedule_keyframe": ["x"], "schedule_prompt": ["a cave"],
            "init_image": (io.BytesIO(b"GIF89a not really"), "x.gif")}
    response = client.post("/submit", data=form, content_type="multipart/form-data")
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    shown = dict(re.findall(r'data-field="([^"]+)">([^<]+)<', page))
    assert set(shown) == {"keyframes", "fps", "schedule", "init_image"}
    assert "whole number" in shown["fps"] and "PNG, JPEG or WebP" in shown["init_image"]
    assert "a spiral</textarea>" in page and 'value="a cave"' in page
    assert queued_tasks(client) == 0


def test_form_needs_csrf_token(client):
    response = client.post("/submit", data={"kind": "image", "prompt": "x", "model": "t2i"})
    assert response.status_code == 400 and queued_tasks(client) == 0
    response = client.post("/submit", data={"csrf_token": "forged", "kind": "image", "prompt": "x", "model": "t2i"})
    assert response.status_code == 400 and queued_tasks(client) == 0


def test_cancel_from_the_page_needs_csrf(client):
    job = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"}).get_json()
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 400
    assert client.get(job["status_url"]).get_json()["state"] == "queued"
    response = client.post(f"/jobs/{job['id']}/cancel", data={"csrf_token": csrf(client, job["page_url"])})
    assert response.status_code == 303
    assert client.get(job["status_url"]).get_json()["state"] == "cancelled"


def test_pages_show_models_job_and_overview(client):
    index = client.get("/").get_data(as_text=True)
    assert "<option>inpaint</option>" in index and "<option>t2i</option>" in index
    job = client.post("/api/jobs", json={"kind": "image", "prompt": "<script>alert(1)</script>", "model": "t2i",
                                         "seed": 5}).get_json()
    page = client.get(job["page_url"]).get_data(as_text=True)
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert 'id="progress"' in page and '"seed": 5' in html.unescape(page) and "job.js" in page
    overview = client.get("/jobs").get_data(as_text=True)
    assert "w1@test" in overview and job["id"][:8] in overview and "render.t2i" in overview
    for asset in ("zoomq.css", "job.js", "submit.js"):
        assert client.get(f"/static/{asset}").status_code == 200


def test_openapi_describes_exactly_the_api_routes_and_metrics(client):
    spec = client.get("/api/openapi.json").get_json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops if method != "parameters"}
    served = set()
    for rule in client.application.url_map.iter_rules():
        if rule.rule.startswith("/api/") or rule.rule == "/metrics":
            path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
            served |= {(path, m.lower()) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    props = spec["components"]["schemas"]["ZoomJob"]["properties"]
    from zoomq.web.submission import ZOOM_FIELDS
    assert set(ZOOM_FIELDS) <= set(props)


def test_list_limit_is_checked(client):
    assert client.get("/api/jobs?limit=0").status_code == 400
    assert client.get("/api/jobs?limit=abc").status_code == 400
    assert client.get("/api/jobs?limit=5").status_code == 200


# -- the real servers --------------------------------------------------------------------------------

@pytest.mark.parametrize("gunicorn", [False, True], ids=["zoomq-web", "gunicorn"])
def test_servers_share_sessions_across_processes(server, tmp_path, gunicorn):
    """`zoomq web` and gunicorn (two worker processes) serve the app; a form's CSRF token is good
    in every process, with no secret shared between them: it derives from the session id."""
    import http.cookiejar
    import urllib.error
    import urllib.parse
    import urllib.request

    from zoomq.node.processes import WebProcess

    web = WebProcess(server.url, tmp_path, gunicorn=gunicorn)
    try:
        with urllib.request.urlopen(web.url + "/api/health", timeout=10) as response:
            assert json.loads(response.read())["broker"]["reachable"] is True
        for _ in range(4):  # fresh sessions, spread over gunicorn's processes
            browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
            page = browser.open(web.url + "/", timeout=10).read().decode()
            found = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert found is not None, page
            token = found.group(1)
            form = urllib.parse.urlencode({"csrf_token": token, "kind": "image", "prompt": "x", "model": "t2i"})
            with pytest.raises(urllib.error.HTTPError) as refused:
                browser.open(web.url + "/submit", data=form.encode(), timeout=10)
            answer = refused.value.read().decode()
            assert refused.value.code == 400 and 'data-field="model"' in answer and 'data-field="form"' not in answer
    finally:
        web.stop()
