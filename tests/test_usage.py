"""Usage per key: a real worker renders two tiny images for alice and a tiny zoom for bob; then
``GET /api/usage`` answers each key its own figures, an admin everyone's, and ``/metrics`` carries
them, labelled by key identity and never by the key itself."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.cluster import wait_for
from zoomq.queue import usage
from zoomq.web import api_keys

IMAGE = {"kind": "image", "model": "t2i", "prompt": "a lighthouse", "steps": 2, "width": 64, "height": 64,
         "guidance": 7.5, "seed": 1}
ZOOM = {"kind": "zoom", "model": "inpaint", "prompt": "a spiral", "keyframes": 2, "size": 64, "mask_width": 16,
        "interpolation_frames": 2, "steps": 2, "seed": 2}


def _identity(name: str, key: str) -> str:
    return f"{name}#{api_keys.digest(key)[:api_keys.IDENTITY_HASH]}"


def test_usage_per_key_through_the_api_and_metrics(make_client, cluster, tmp_path):
    made = {name: api_keys.new_key() for name in ("alice", "bob", "root")}
    path = tmp_path / "keys"
    path.write_text("".join(api_keys.line(n, k, admin=n == "root") + "\n" for n, k in made.items()))
    client = make_client(api_keys_file=str(path))
    auth = {n: {"Authorization": f"Bearer {k}"} for n, k in made.items()}
    alice, bob = _identity("alice", made["alice"]), _identity("bob", made["bob"])
    cluster("w1")

    expected_work: dict[str, dict[str, float]] = {}
    submitted = []
    for who, body in (("alice", IMAGE), ("alice", {**IMAGE, "seed": 2}), ("bob", ZOOM)):
        work = client.post("/api/jobs?dry_run=1", json=body, headers=auth[who]).get_json()["work"]
        answer = client.post("/api/jobs", json=body, headers=auth[who])
        assert answer.status_code == 202, answer.get_json()
        submitted.append(answer.get_json()["id"])
        total = expected_work.setdefault(who, {"unet": 0, "mps": 0.0})
        total["unet"] += work["unet_evaluations"]
        total["mps"] += work["denoising_steps"] * work["megapixels"]
    producer = client.producer
    def ended(job_id: str) -> dict | None:
        record = producer.jobs.get(job_id)
        return record if record is not None and record["state"] in ("done", "failed") else None

    for job_id in submitted:
        record = wait_for(lambda: ended(job_id), 300, f"job {job_id} to end")  # noqa: B023 — waited on at once
        assert record is not None and record["state"] == "done", record

    mine = client.get("/api/usage", headers=auth["alice"])
    assert mine.status_code == 200
    (figures,) = mine.get_json()["usage"]  # alice sees hers only
    assert figures["key"] == alice and figures["jobs"] == 2
    assert figures["unet_evaluations"] == expected_work["alice"]["unet"] == 2 * 2 * 2  # 2 jobs x 2 guided steps
    assert figures["megapixel_steps"] == pytest.approx(expected_work["alice"]["mps"])
    assert figures["render_seconds"] > 0
    (theirs,) = client.get("/api/usage", headers=auth["bob"]).get_json()["usage"]
    assert theirs["key"] == bob and theirs["jobs"] == 1
    assert theirs["unet_evaluations"] == expected_work["bob"]["unet"] > 0  # both keyframes denoised
    assert theirs["megapixel_steps"] == pytest.approx(expected_work["bob"]["mps"])
    everyone = {u["key"]: u for u in client.get("/api/usage", headers=auth["root"]).get_json()["usage"]}
    assert everyone == {alice: figures, bob: theirs}  # the admin sees both; nobody who submitted nothing
    assert client.get("/api/usage").status_code == 401

    assert client.get("/metrics", headers=auth["alice"]).status_code == 403
    scraped = client.get("/metrics", headers=auth["root"]).get_data(as_text=True)
    samples = {(s.name, s.labels.get("key")): s.value
               for family in text_string_to_metric_families(scraped) for s in family.samples}
    assert samples[("zoomq_usage_jobs_total", alice)] == 2 and samples[("zoomq_usage_jobs_total", bob)] == 1
    assert samples[("zoomq_usage_unet_evaluations_total", alice)] == figures["unet_evaluations"]
    assert samples[("zoomq_usage_megapixel_steps_total", bob)] == pytest.approx(theirs["megapixel_steps"])
    assert samples[("zoomq_usage_render_seconds_total", bob)] == pytest.approx(theirs["render_seconds"])
    assert not any(key in scraped for key in made.values())  # identities, never the keys


def test_jobs_without_a_key_count_under_one_anonymous_bucket(make_client):
    client = make_client()
    for address in ("10.0.0.1", "10.0.0.2"):
        body = {**IMAGE, "prompt": address}
        assert client.post("/api/jobs", json=body, environ_base={"REMOTE_ADDR": address}).status_code == 202
    client.producer.submit_image("from the command line", model="t2i", steps=2, width=64, height=64)
    (figures,) = client.get("/api/usage").get_json()["usage"]  # no keys: everyone has the run of it
    assert figures["key"] == usage.ANONYMOUS and figures["jobs"] == 3
