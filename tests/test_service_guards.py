"""A shared service's guards, through the real app on a private Redis: named API keys and who sees
which job, the client address behind trusted proxies, caps on queued jobs, per-job limits, dry
runs, the Allow header of a 405 and strict query flags. Every refusal must leave the queue as it was."""

from __future__ import annotations

import json
from typing import Any

import pytest

from zoomq.errors import InvalidParameter
from zoomq.queue.job_records import Jobs
from zoomq.web import api_keys

IMAGE: dict[str, Any] = {"kind": "image", "prompt": "a lighthouse", "model": "t2i", "steps": 2}
ZOOM = {"kind": "zoom", "prompt": "a spiral", "model": "inpaint", "size": 128, "mask_width": 32, "steps": 2}


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def snapshot(client) -> tuple:
    """Everything a submission writes: the task queues, the job index and records."""
    r = client.producer.redis
    queues = {k: r.llen(k) for k in r.scan_iter(match="render*")}
    return queues, r.zcard(Jobs.ALL_SET), r.zcard(Jobs.QUEUED_SET), sorted(r.scan_iter(match="zoomq:job:*"))


@pytest.fixture
def keyring(tmp_path):
    """A keys file with alice, bob and an admin; returns (path, {name: key})."""
    made = {name: api_keys.new_key() for name in ("alice", "bob", "root")}
    path = tmp_path / "keys"
    path.write_text("# name sha256 [admin]\n" + "\n".join(
        api_keys.line(name, key, admin=name == "root") for name, key in made.items()) + "\n")
    return path, made


# -- keys and ownership --------------------------------------------------------------------------

def test_a_key_sees_lists_and_cancels_only_its_own_jobs(make_client, keyring):
    path, k = keyring
    client = make_client(api_keys_file=str(path))
    a = client.post("/api/jobs", json=IMAGE, headers=bearer(k["alice"])).get_json()["id"]
    b = client.post("/api/jobs", json=IMAGE, headers=bearer(k["bob"])).get_json()["id"]
    assert client.producer.jobs.get(a)["owner"] == f"alice#{api_keys.digest(k['alice'])[:16]}"

    assert client.get(f"/api/jobs/{a}", headers=bearer(k["alice"])).status_code == 200
    assert client.get(f"/api/jobs/{b}", headers=bearer(k["alice"])).status_code == 404
    assert client.get(f"/api/jobs/{b}/sidecar", headers=bearer(k["alice"])).status_code == 404
    assert client.get(f"/api/jobs/{b}/preview", headers=bearer(k["alice"])).status_code == 404
    assert client.delete(f"/api/jobs/{b}", headers=bearer(k["alice"])).status_code == 404
    assert client.producer.jobs.state(b) == "queued"
    listed = client.get("/api/jobs", headers=bearer(k["alice"])).get_json()["jobs"]
    assert [j["id"] for j in listed] == [a]

    admin = client.get("/api/jobs", headers=bearer(k["root"])).get_json()["jobs"]
    assert {j["id"] for j in admin} == {a, b}
    assert client.delete(f"/api/jobs/{b}", headers=bearer(k["root"])).status_code == 200
    assert client.get(f"/api/jobs/{a}").status_code == 401
    assert client.get(f"/api/jobs/{a}", headers=bearer(k["alice"] + "x")).status_code == 401


def test_the_keys_file_holds_only_hashes_and_is_read_again_when_it_changes(make_client, keyring):
    path, k = keyring
    assert all(key not in path.read_text() for key in k.values())
    client = make_client(api_keys_file=str(path))
    carol = api_keys.new_key()
    assert client.post("/api/jobs", json=IMAGE, headers=bearer(carol)).status_code == 401
    with path.open("a") as f:
        f.write(api_keys.line("carol", carol, admin=False) + "\n")
    assert client.post("/api/jobs", json=IMAGE, headers=bearer(carol)).status_code == 202


@pytest.mark.parametrize("text, where", [
    ("alice 1234\n", "line 1"),
    ("alice " + "a" * 64 + "\nalice " + "b" * 64 + "\n", "line 2"),
    ("alice " + "a" * 64 + " root\n", "line 1"),
])
def test_a_malformed_keys_file_is_refused_at_start_naming_the_line(make_client, tmp_path, text, where):
    path = tmp_path / "keys"
    path.write_text(text)
    with pytest.raises(InvalidParameter) as e:
        make_client(api_keys_file=str(path))
    assert e.value.param.startswith("ZOOMQ_API_KEYS_FILE") and where in e.value.param


def test_zoomq_keys_add_writes_a_hash_the_server_accepts(make_client, tmp_path, capsys):
    from support.cli import run_cli

    path = tmp_path / "keys"
    code, out, _ = run_cli("keys", "add", "dana", "--file", path, capsys=capsys)
    assert code == 0
    key = out.split()[-1]
    assert key.startswith("zq_") and key not in path.read_text()
    assert run_cli("keys", "add", "dana", "--file", path, capsys=capsys)[0] == 2  # names are unique
    client = make_client(api_keys_file=str(path))
    job = client.post("/api/jobs", json=IMAGE, headers=bearer(key)).get_json()["id"]
    assert client.producer.jobs.get(job)["owner"].split("#")[0] == "dana"


def test_a_name_given_to_a_new_key_owns_none_of_the_old_keys_jobs(make_client, tmp_path):
    """Jobs belong to the key, not to its name: an operator who removes alice's key and later adds a
    new key named alice gives the new holder none of the old key's jobs."""
    old, new = api_keys.new_key(), api_keys.new_key()
    path = tmp_path / "keys"
    path.write_text(api_keys.line("alice", old, admin=False) + "\n")
    client = make_client(api_keys_file=str(path))
    job = client.post("/api/jobs", json=IMAGE, headers=bearer(old)).get_json()["id"]
    assert client.get(f"/api/jobs/{job}", headers=bearer(old)).status_code == 200
    path.write_text(api_keys.line("alice", new, admin=False) + "\n# rewritten: the old key is gone\n")
    assert client.get(f"/api/jobs/{job}", headers=bearer(old)).status_code == 401
    assert client.get(f"/api/jobs/{job}", headers=bearer(new)).status_code == 404
    assert client.delete(f"/api/jobs/{job}", headers=bearer(new)).status_code == 404
    assert client.get("/api/jobs", headers=bearer(new)).get_json()["jobs"] == []
    mine = client.post("/api/jobs", json=IMAGE, headers=bearer(new)).get_json()["id"]
    assert [j["id"] for j in client.get("/api/jobs", headers=bearer(new)).get_json()["jobs"]] == [mine]


def test_the_form_signs_in_with_a_key_and_the_job_page_is_the_owners(make_client, keyring):
    import re

    path, k = keyring
    alice, bob = make_client(api_keys_file=str(path)), make_client(workers=False, api_keys_file=str(path))

    def submit(client, key):
        page = client.get("/").get_data(as_text=True)
        found = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert found is not None, page
        form = {"csrf_token": found.group(1), "kind": "image", "prompt": "x", "model": "t2i", "token": key}
        return client.post("/submit", data=form)

    assert submit(alice, "nope").status_code == 401
    response = submit(alice, k["alice"])
    assert response.status_code == 303
    page = response.headers["Location"]
    assert alice.get(page).status_code == 200
    assert bob.get(page).status_code == 401  # not signed in
    assert submit(bob, k["bob"]).status_code == 303
    assert bob.get(page).status_code == 404  # signed in, but as bob


# -- rate limit and queue caps -------------------------------------------------------------------

def test_the_rate_limit_counts_per_key(make_client, keyring):
    path, k = keyring
    client = make_client(api_keys_file=str(path), rate_limit=(2, 60))
    codes = [client.post("/api/jobs", json=IMAGE, headers=bearer(k["alice"])).status_code for _ in range(3)]
    assert codes == [202, 202, 429]
    assert client.post("/api/jobs", json=IMAGE, headers=bearer(k["bob"])).status_code == 202  # same address


def test_client_addresses_come_from_trusted_proxies_only(make_client):
    client = make_client(trusted_proxies=1, rate_limit=(1, 60))

    def post(forwarded: str):
        return client.post("/api/jobs", json=IMAGE, headers={"X-Forwarded-For": forwarded}).status_code

    # The one trusted proxy appended the client's address: earlier entries are the client's own words.
    assert post("6.6.6.6, 10.0.0.5") == 202
    assert post("7.7.7.7, 10.0.0.5") == 429
    assert post("10.0.0.6") == 202
    rate_keys = {key.decode().rsplit(":", 1)[0] for key in client.producer.redis.scan_iter(match="zoomq:rate:*")}
    assert rate_keys == {"zoomq:rate:addr:10.0.0.5", "zoomq:rate:addr:10.0.0.6"}

    untrusting = make_client(rate_limit=(1, 60))
    assert untrusting.post("/api/jobs", json=IMAGE, headers={"X-Forwarded-For": "10.0.0.7"}).status_code == 202
    assert untrusting.post("/api/jobs", json=IMAGE, headers={"X-Forwarded-For": "10.0.0.8"}).status_code == 429


def test_unfinished_jobs_per_submitter_are_capped_with_429(make_client):
    client = make_client(max_queued_per_key=2)
    first = [client.post("/api/jobs", json=IMAGE).get_json()["id"] for _ in range(2)]
    before = snapshot(client)
    refused = client.post("/api/jobs", json=IMAGE)
    assert refused.status_code == 429 and refused.headers["Retry-After"].isdigit()
    assert "ZOOMQ_MAX_QUEUED_PER_KEY" in refused.get_json()["error"]
    assert snapshot(client) == before
    other = client.post("/api/jobs", json=IMAGE, environ_base={"REMOTE_ADDR": "10.1.1.1"})
    assert other.status_code == 202
    client.delete(f"/api/jobs/{first[0]}")  # an ended job frees its place
    assert client.post("/api/jobs", json=IMAGE).status_code == 202


def test_a_full_queue_is_503_with_retry_after(make_client):
    client = make_client(max_queued=2)
    for address in ("10.0.0.1", "10.0.0.2"):
        assert client.post("/api/jobs", json=IMAGE, environ_base={"REMOTE_ADDR": address}).status_code == 202
    before = snapshot(client)
    refused = client.post("/api/jobs", json=ZOOM, environ_base={"REMOTE_ADDR": "10.0.0.3"})
    assert refused.status_code == 503 and int(refused.headers["Retry-After"]) > 0
    assert "ZOOMQ_MAX_QUEUED" in refused.get_json()["error"]
    assert snapshot(client) == before


# -- limits per job ------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field, variable", [
    ({**IMAGE, "steps": 100000}, "steps", "ZOOMQ_MAX_STEPS"),
    ({**IMAGE, "width": 2048, "height": 1024}, "width", "ZOOMQ_MAX_PIXELS"),
    ({**IMAGE, "prompt": "x" * 1001}, "prompt", "ZOOMQ_MAX_PROMPT"),
    ({**ZOOM, "keyframes": 100000}, "keyframes", "ZOOMQ_MAX_KEYFRAMES"),
    ({**ZOOM, "interpolation_frames": 1000000}, "interpolation_frames", "ZOOMQ_MAX_INTERPOLATION_FRAMES"),
    ({**ZOOM, "keyframes": 100, "interpolation_frames": 200}, "interpolation_frames", "ZOOMQ_MAX_FRAMES"),
    ({**ZOOM, "schedule": [{"keyframe": 1, "prompt": "y" * 1001}]}, "schedule[0].prompt", "ZOOMQ_MAX_PROMPT"),
])
def test_limits_refuse_oversized_jobs_naming_the_variable(client, body, field, variable):
    before = snapshot(client)
    response = client.post("/api/jobs", json=body)
    assert response.status_code == 400
    errors = {e["field"]: e["rule"] for e in response.get_json()["errors"]}
    assert variable in errors[field]
    assert snapshot(client) == before


def test_limits_are_the_operators(make_client):
    client = make_client(max_steps=3, max_keyframes=2)
    assert client.post("/api/jobs", json={**IMAGE, "steps": 4}).status_code == 400
    assert client.post("/api/jobs", json={**IMAGE, "steps": 3}).status_code == 202
    assert client.post("/api/jobs", json={**ZOOM, "keyframes": 3}).status_code == 400


def test_zoomq_submit_is_bound_by_limits_and_render_is_not(server, tiny_t2i, tiny_inpaint, tmp_path, capsys,
                                                             monkeypatch):
    from support.cli import run_cli
    from zoomq.producer import Producer
    from zoomq.queue import registry

    monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
    monkeypatch.setenv("ZOOMQ_MAX_STEPS", "2")
    producer = Producer()
    registry.announce(producer.redis, "w1@test", {"models": registry.describe_models([tiny_t2i]),
                                                  "queues": ["render"]}, heartbeat=600)
    code, _, err = run_cli("submit", "image", "x", "--model", "t2i", "--steps", "3", capsys=capsys)
    assert code == 2 and "--steps" in err and "ZOOMQ_MAX_STEPS" in err
    assert producer.redis.zcard(Jobs.ALL_SET) == 0
    out = tmp_path / "local.png"
    code, _, err = run_cli("render", "image", "x", "--model", tiny_t2i, "--steps", "3", "--out", out, capsys=capsys)
    assert code == 0 and out.exists(), err


# -- dry run ---------------------------------------------------------------------------------------

def test_dry_run_answers_the_work_and_enqueues_nothing(client):
    before = snapshot(client)
    image = client.post("/api/jobs?dry_run=1", json={**IMAGE, "steps": 10, "guidance_cutoff": 0.5,
                                                      "width": 128, "height": 64})
    assert image.status_code == 200
    body = image.get_json()
    assert body["dry_run"] is True and body["expected_seconds"] is None and "no rate" in body["basis"]
    assert body["work"] == {"unet_evaluations": 15, "denoising_steps": 10, "images": 1, "frames": 0,
                            "megapixels": 128 * 64 / 1e6, "shallow_evaluations": 0}
    zoom = client.post("/api/jobs?dry_run=1", json={**ZOOM, "keyframes": 3, "steps": 4, "interpolation_frames": 5,
                                                     "guidance": 1.0}).get_json()
    assert zoom["work"] == {"unet_evaluations": 12, "denoising_steps": 12, "images": 3, "frames": 11,
                            "megapixels": 128 * 128 / 1e6, "shallow_evaluations": 0}
    assert snapshot(client) == before

    bad = client.post("/api/jobs?dry_run=1", json={**IMAGE, "steps": 0})
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["field"] == "steps"
    flag = client.post("/api/jobs?dry_run=yes", json=IMAGE)
    assert flag.status_code == 400 and flag.get_json()["errors"][0]["field"] == "dry_run"
    assert snapshot(client) == before


def test_dry_run_estimates_from_the_rates_workers_measured(client):
    job = client.post("/api/jobs", json={**IMAGE, "steps": 8, "width": 128, "height": 128}).get_json()["id"]
    client.producer.jobs.measure(job, "step", 0.5)  # what a worker reports after each step
    estimate = client.post("/api/jobs?dry_run=1", json={**IMAGE, "steps": 20, "width": 128, "height": 256}).get_json()
    # Same guidance, twice the pixels: 20 steps at 2 × 0.5 s.
    assert estimate["expected_seconds"] == pytest.approx(20.0, rel=1e-3)
    assert estimate["queued_ahead"] == 1 and "per UNet evaluation" in estimate["basis"]


def test_dry_run_counts_the_calls_deepcache_answers_with_its_shallow_branch():
    from zoomq.producer.estimate import expected_seconds, image_work, zoom_work
    from zoomq.render.request import RenderRequest
    from zoomq.zoom.settings import ZoomSettings

    # 10 steps, guided for the first 5: evaluations 2,2,2,2,2,1,1,1,1,1; full at steps 0, 3, 6, 9.
    size: dict[str, Any] = dict(width=512, height=512)
    work = image_work(RenderRequest("x", steps=10, guidance=7.5, guidance_cutoff=0.5, cache_interval=3, **size))
    assert (work.unet_evaluations, work.shallow_evaluations) == (15, 2 + 2 + 2 + 1 + 1 + 1)
    assert image_work(RenderRequest("x", steps=10, guidance=7.5, **size)).shallow_evaluations == 0
    zoom = zoom_work(ZoomSettings("x", keyframes=3, steps=4, guidance=7.5, cache_interval=2), has_init_image=True)
    assert (zoom.unet_evaluations, zoom.shallow_evaluations) == (2 * 8, 2 * 4)  # steps 1 and 3 of each keyframe
    seconds, basis = expected_seconds(work, "m", {"unet": 1.0})
    assert seconds == round(15 * work.megapixels, 1) and "9 of the 15 evaluations" in basis and "upper bound" in basis


def test_only_plain_renders_feed_the_rate_dry_runs_use(client):
    from zoomq.queue import stats

    jobs = client.producer.jobs
    plain = client.post("/api/jobs", json={**IMAGE, "steps": 8, "width": 128, "height": 128}).get_json()["id"]
    cached = client.post("/api/jobs", json={**IMAGE, "steps": 8, "width": 128, "height": 128,
                                            "cache_interval": 2}).get_json()["id"]
    split = client.post("/api/jobs", json={**IMAGE, "steps": 8, "width": 128, "height": 128}).get_json()["id"]
    jobs.update(split, split_with="w2")  # what the leader records when a helper claims its offer
    jobs.measure(plain, "step", 0.5)
    jobs.measure(cached, "step", 0.1)
    jobs.measure(split, "step", 0.2)
    rate = stats.read_rates(client.producer.redis, IMAGE["model"])["unet"]
    assert rate == pytest.approx(0.5 / 2 / (128 * 128 / 1e6)), rate  # the plain job's alone
    assert jobs.get(cached)["cache_interval"] == 2
    assert jobs.get(cached)["seconds_per_step"] == 0.1 and jobs.get(split)["seconds_per_step"] == 0.2


def test_zoomq_submit_dry_run(server, tiny_inpaint, capsys, monkeypatch):
    from support.cli import run_cli
    from zoomq.producer import Producer
    from zoomq.queue import registry

    monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
    producer = Producer()
    registry.announce(producer.redis, "w1@test", {"models": registry.describe_models([tiny_inpaint]),
                                                  "queues": ["render"]}, heartbeat=600)
    code, out, err = run_cli("submit", "zoom", "x", "--model", "inpaint", "--keyframes", "4", "--steps", "3",
                             "--size", "128", "--mask-width", "32", "--dry-run", capsys=capsys)
    assert code == 0, err
    estimate = json.loads(out)
    assert estimate["work"]["unet_evaluations"] == 4 * 3 * 2 and estimate["expected_seconds"] is None
    assert producer.redis.zcard(Jobs.ALL_SET) == 0


# -- HTTP details ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allowed", [
    ("put", "/api/jobs", {"GET", "POST"}),
    ("post", "/api/health", {"GET"}),
    ("patch", "/api/jobs/00000000-0000-0000-0000-000000000000", {"GET", "DELETE"}),
])
def test_405_says_allow(client, method, path, allowed):
    response = getattr(client, method)(path)
    assert response.status_code == 405
    assert allowed <= {m.strip() for m in response.headers["Allow"].split(",")}
    assert response.is_json


def test_download_flag_is_0_or_1(client):
    job = client.post("/api/jobs", json=IMAGE).get_json()["id"]
    bad = client.get(f"/api/jobs/{job}/sidecar?download=yes")
    assert bad.status_code == 400 and bad.get_json()["errors"][0]["field"] == "download"
    assert client.get(f"/api/jobs/{job}/sidecar?download=1").status_code == 404  # no sidecar yet


@pytest.mark.parametrize("model", [{"a": 1}, [1], 3, None, True])
def test_a_model_of_any_json_type_is_a_400(client, model):
    before = snapshot(client)
    response = client.post("/api/jobs", json={**IMAGE, "model": model})
    assert response.status_code == 400 and "model" in {e["field"] for e in response.get_json()["errors"]}
    assert snapshot(client) == before
