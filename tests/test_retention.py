"""The data lifecycle (``producer.retention``): ``expires_at`` on every record, purge through the API
and the CLI, a cancelled job's uploads deleted at once, and the expiry sweep, on every store: Redis
(a private server), a directory, and S3 (moto's real server)."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest
from PIL import Image

from support.cli import run_cli
from support.s3server import s3_store
from zoomq.node.processes import wait_for
from zoomq.producer import Producer, retention
from zoomq.queue.job_records import Jobs
from zoomq.storage import ArtifactStore, DirectoryStore, RedisStore, open_store
from zoomq.web import api_keys

JOB = "0f1e2d3c-0000-4000-8000-00000000000a"
OTHER = "0f1e2d3c-0000-4000-8000-00000000000b"
SMALL_ZOOM: dict[str, Any] = dict(size=128, mask_width=32, interpolation_frames=2, steps=2, seed=21)


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "navy").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(params=["redis", "directory", "s3"])
def artifacts(request, tmp_path) -> str:
    """A ``ZOOMQ_ARTIFACTS`` value of each kind."""
    if request.param == "directory":
        return str(tmp_path / "artifacts")
    if request.param == "s3":
        return f"s3://{request.getfixturevalue('s3_bucket').name}/team"
    return "redis"


def _names(store, job_id: str) -> set[str]:
    """Which of the names a job's artifacts have are in ``store``."""
    names = ("init.png", "mask.png", "preview.png", "keyframe-000.png", "result.mp4", "sidecar.json", "result.gif")
    return {n for n in names if store.exists(f"{job_id}/{n}")}


# -- the stores ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["redis", "directory", "s3"])
def test_every_store_deletes_one_artifact_or_a_whole_job_and_spares_others(kind, tmp_path, redis_server, request):
    store: ArtifactStore
    if kind == "directory":
        store = DirectoryStore(tmp_path / "artifacts")
    elif kind == "s3":
        store = s3_store(request.getfixturevalue("s3_bucket"), "lifecycle")
    else:
        store = RedisStore(redis_server(tmp_path / "redis").client(), ttl=60)
    for job_id in (JOB, OTHER):
        for name in ("init.png", "result.mp4"):
            store.put(f"{job_id}/{name}", b"x")
    store.delete(f"{JOB}/init.png")
    store.delete(f"{JOB}/never-written.png")  # nothing to delete is not an error
    assert _names(store, JOB) == {"result.mp4"}
    store.delete_job(JOB)
    store.delete_job(JOB)  # twice: nothing left is not an error
    assert _names(store, JOB) == set() and _names(store, OTHER) == {"init.png", "result.mp4"}


def test_redis_store_finds_a_jobs_artifacts_by_its_index_not_by_scan(tmp_path, redis_server):
    client = redis_server(tmp_path / "redis").client()
    store = RedisStore(client, ttl=60)
    store.put(f"{JOB}/a.png", b"1")
    store.put(f"{JOB}/b.png", b"2")
    assert 0 < client.ttl(f"zoomq:artifacts-of:{JOB}") <= 60  # the index expires with the artifacts
    calls_before = _command_calls(client, "scan")
    store.delete_job(JOB)
    assert not client.exists(f"zoomq:artifact:{JOB}/a.png", f"zoomq:artifact:{JOB}/b.png", f"zoomq:artifacts-of:{JOB}")
    assert _command_calls(client, "scan") == calls_before


def _record(jobs: Jobs, job_id: str) -> dict:
    record = jobs.get(job_id)
    assert record is not None, f"job {job_id} has no record"
    return record


def _command_calls(client, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_link_in_place_of_a_job_folder_is_removed_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    store = DirectoryStore(tmp_path / "artifacts")
    store.root.mkdir()
    (store.root / JOB).symlink_to(outside, target_is_directory=True)
    store.delete_job(JOB)
    assert (outside / "keep.txt").read_text() == "mine" and not (store.root / JOB).exists()


# -- expires_at ---------------------------------------------------------------------------------------

def test_expires_at_is_null_until_the_job_ends_then_its_end_plus_the_ttl(tmp_path, redis_server):
    jobs = Jobs(redis_server(tmp_path / "redis").client(), ttl=600)
    jobs.create(JOB, "image", "t2i", {}, 2, owner="alice")
    assert _record(jobs, JOB)["expires_at"] is None
    jobs.finish(JOB, result=f"{JOB}/result.png")
    record = _record(jobs, JOB)
    assert record["expires_at"] == pytest.approx(record["finished"] + 600)
    assert jobs.r.zscore(Jobs.EXPIRY_SET, JOB) == pytest.approx(record["expires_at"])
    # A record past its expires_at is gone for readers at once, even before the sweep removes it.
    jobs.r.hset(f"zoomq:job:{JOB}", "expires_at", time.time() - 1)
    assert jobs.get(JOB) is None


# -- purge and cancel through the API and the CLI ------------------------------------------------------

def _finished_job(client, headers: dict | None = None) -> str:
    """A zoom job that ended with keyframe, result, sidecar, gif and an upload in the store, as a worker leaves it."""
    job_id = client.post("/api/jobs", headers=headers, json={
        "kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 2, "size": 128, "mask_width": 32,
        "gif": True}).get_json()["id"]
    store = client.producer.store
    for name, data in (("init.png", _png()), ("keyframe-000.png", _png()), ("result.mp4", b"\0" * 4000),
                       ("result.gif", b"GIF89a"), ("sidecar.json", b"{}")):
        store.put(f"{job_id}/{name}", data)
    client.producer.jobs.update(job_id, keyframes_done=1)
    client.producer.jobs.finish(job_id, result=f"{job_id}/result.mp4", result_type="video/mp4",
                                sidecar=f"{job_id}/sidecar.json")
    return job_id


def test_purge_through_the_api_deletes_everything_and_the_artifacts_answer_410(make_client, artifacts):
    client = make_client(artifacts=artifacts)
    job_id = _finished_job(client)
    kept = _finished_job(client)
    legacy = RedisStore(client.producer.redis, 60)  # a store the deployment used before: purged too
    legacy.put(f"{job_id}/preview.png", _png())
    assert client.get(f"/api/jobs/{job_id}/result").status_code == 200
    assert client.delete(f"/api/jobs/{job_id}?purge=2").status_code == 400

    answer = client.delete(f"/api/jobs/{job_id}?purge=1")
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["id"] == job_id and body["state"] == "done" and not body["cancelled"] and body["purged"]
    for store in client.producer.stores():
        assert _names(store, job_id) == set(), store
    for path in ("result", "sidecar", "gif", "keyframes/0", "preview"):
        gone = client.get(f"/api/jobs/{job_id}/{path}")
        assert gone.status_code == 410 and "purged" in gone.get_json()["error"], path
    status = client.get(f"/api/jobs/{job_id}").get_json()  # the record stays until it expires
    assert status["purged"] and status["result_url"] is None and status["keyframe_urls"] == []
    assert status["expires_at"] == pytest.approx(status["finished"] + client.producer.settings.job_ttl)
    assert _names(client.producer.store, kept) == {"init.png", "keyframe-000.png", "result.mp4", "sidecar.json",
                                                   "result.gif"}  # another job is untouched
    assert client.get(f"/api/jobs/{kept}/result").status_code == 200


def test_purging_a_queued_job_cancels_it(client):
    job_id = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"}).get_json()["id"]
    client.producer.store.put(f"{job_id}/init.png", _png())
    body = client.delete(f"/api/jobs/{job_id}?purge=1").get_json()
    assert body["state"] == "cancelled" and body["cancelled"] is True
    assert _names(client.producer.store, job_id) == set()
    assert client.producer.redis.zscore("zoomq:queued", job_id) is None


def test_another_key_can_neither_purge_nor_learn_of_a_job(make_client, tmp_path):
    made = {name: api_keys.new_key() for name in ("alice", "bob", "root")}
    path = tmp_path / "keys"
    path.write_text("\n".join(api_keys.line(name, key, admin=name == "root") for name, key in made.items()) + "\n")
    client = make_client(api_keys_file=str(path))
    alice, bob, root = ({"Authorization": f"Bearer {made[n]}"} for n in ("alice", "bob", "root"))
    job_id = _finished_job(client, alice)
    assert client.delete(f"/api/jobs/{job_id}?purge=1", headers=bob).status_code == 404
    assert client.delete(f"/api/jobs/{job_id}?purge=1").status_code == 401
    assert "result.mp4" in _names(client.producer.store, job_id)
    assert client.delete(f"/api/jobs/{job_id}?purge=1", headers=root).status_code == 200  # an admin may
    assert _names(client.producer.store, job_id) == set()
    second = _finished_job(client, alice)
    assert client.delete(f"/api/jobs/{second}?purge=1", headers=alice).status_code == 200  # and the owner


def test_cancel_deletes_the_uploads_at_once_and_keeps_the_rest_until_expiry(make_client, tmp_path):
    client = make_client(artifacts=str(tmp_path / "artifacts"))
    producer = client.producer
    job_id = producer.submit_image("x", model="inpaint", steps=2, init_image=Image.new("RGB", (64, 64)),
                                   mask=Image.new("L", (64, 64), 255))
    producer.store.put(f"{job_id}/preview.png", _png())  # what it made before the cancel
    assert _names(producer.store, job_id) == {"init.png", "mask.png", "preview.png"}
    assert client.delete(f"/api/jobs/{job_id}").status_code == 200
    assert _names(producer.store, job_id) == {"preview.png"}
    assert client.get(f"/api/jobs/{job_id}/preview").status_code == 200  # readable until it expires


def test_cancel_purge_on_the_command_line(make_client, capsys, tmp_path):
    client = make_client()
    job_id = _finished_job(client)
    code, out, err = run_cli("cancel", job_id, "--purge", capsys=capsys)
    assert code == 0 and out.strip() == f"{job_id} purged", err
    assert _names(client.producer.store, job_id) == set()
    code, out, err = run_cli("fetch", job_id, "--out", tmp_path / "x.mp4", capsys=capsys)
    assert code != 0 and "purged" in err and not (tmp_path / "x.mp4").exists()
    code, out, err = run_cli("cancel", "1c6b0a44-4d8e-4a31-9a53-0d1f1b0c1a2b", "--purge", capsys=capsys)
    assert code != 0 and "no such job" in err


# -- the sweep ----------------------------------------------------------------------------------------

def test_sweep_deletes_expired_jobs_from_every_store_and_every_index(make_client, artifacts):
    client = make_client(artifacts=artifacts)
    producer = client.producer
    old, young = _finished_job(client), _finished_job(client)
    unfinished = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i"}).get_json()["id"]
    producer.store.put(f"{unfinished}/preview.png", _png())
    expires = _record(producer.jobs, old)["expires_at"]
    producer.redis.zadd(Jobs.EXPIRY_SET, {young: expires + 100})  # as if it ended later
    jobs = Jobs(producer.redis, producer.settings.job_ttl)

    assert retention.sweep(jobs, producer.stores(), now=expires - 1) == []
    assert retention.sweep(jobs, producer.stores(), now=expires + 1) == [old]
    for store in producer.stores():
        assert _names(store, old) == set()
    assert _names(producer.store, young) and _names(producer.store, unfinished) == {"preview.png"}
    assert producer.jobs.get(old) is None and not producer.redis.exists(f"zoomq:job:{old}")
    assert producer.redis.zscore(Jobs.ALL_SET, old) is None and producer.redis.zscore(Jobs.EXPIRY_SET, old) is None
    assert [r["id"] for r in producer.jobs.recent(10)] == [unfinished, young]


def test_sweep_deletes_a_purged_jobs_artifacts_once_more(client):
    """A piece that stored its result just as the job was purged: the sweep deletes it a minute on."""
    producer = client.producer
    job_id = _finished_job(client)
    producer.purge(job_id)
    producer.store.put(f"{job_id}/result.mp4", b"late")
    jobs = producer.jobs
    assert retention.sweep(jobs, producer.stores(), now=time.time() + 1) == []
    assert _names(producer.store, job_id) == {"result.mp4"}  # not yet
    retention.sweep(jobs, producer.stores(), now=time.time() + retention.RECHECK_SECONDS + 1)
    assert _names(producer.store, job_id) == set() and producer.redis.zscore(Jobs.RECHECK_SET, job_id) is None
    assert _record(producer.jobs, job_id)["purged"]  # the record stays until it expires


def test_a_cancelled_or_purged_zoom_stores_no_more_prompt_embeddings(tmp_path):
    """Keyframes store prompt embeddings before their first step, where no lease is checked."""
    import numpy as np

    from zoomq.worker.pieces import JobTexts

    store = DirectoryStore(tmp_path / "artifacts")
    live = [True]
    texts = JobTexts(store, JOB, lambda: live[0])
    texts.put("a spiral", np.zeros(4, dtype=np.float32))
    assert texts.get("a spiral") is not None
    live[0] = False
    texts.put("a castle", np.zeros(4, dtype=np.float32))
    assert texts.get("a castle") is None


def test_one_worker_at_a_time_sweeps(client):
    jobs = client.producer.jobs
    assert retention.sweep_if_due(jobs, client.producer.stores(), "w1", every=30) == []
    assert retention.sweep_if_due(jobs, client.producer.stores(), "w2", every=30) is None
    assert 0 < jobs.r.pttl(retention.SWEEP_LOCK) <= 30_000


# -- with a worker ------------------------------------------------------------------------------------

def test_a_worker_sweeps_expired_jobs_and_a_purged_running_job_stays_empty(cluster, monkeypatch, tmp_path):
    """A zoom purged while a worker renders it gets nothing written back; with ``ZOOMQ_JOB_TTL=10``,
    a finished job's artifacts leave the folder within a minute of its ``expires_at``."""
    folder = tmp_path / "artifacts"
    for name, value in (("ZOOMQ_JOB_TTL", "10"), ("ZOOMQ_SWEEP_INTERVAL", "1"), ("ZOOMQ_ARTIFACTS", str(folder))):
        monkeypatch.setenv(name, value)
    cluster("w1")
    producer = Producer()
    zoom = producer.submit_zoom("a spiral", model="inpaint", keyframes=6, **SMALL_ZOOM)
    wait_for(lambda: (folder / zoom / "keyframe-000.png").is_file(), 120, "the first keyframe")
    assert producer.purge(zoom)["cancelled"]
    # The worker takes one task at a time: once a later job is done, the zoom's pieces are over.
    after = producer.submit_image("x", model="t2i", steps=1, seed=1, width=64, height=64)
    assert producer.wait(after, timeout=120)["state"] == "done"
    assert _record(producer.jobs, zoom)["purged"]  # not expired yet: the purge emptied it, not the sweep
    left = sorted(p.name for p in (folder / zoom).iterdir()) if (folder / zoom).exists() else []
    assert not [n for n in left if not n.startswith("text-")], left  # no piece stored anything it made
    # A prompt embedding stored in the instant of the purge goes with the sweep's second pass.
    retention.sweep(producer.jobs, producer.stores(), now=time.time() + retention.RECHECK_SECONDS + 1)
    assert not (folder / zoom).exists() or not any((folder / zoom).iterdir())

    done = producer.submit_image("a castle", model="t2i", steps=1, seed=3, width=64, height=64)
    record = producer.wait(done, timeout=120)
    assert record["state"] == "done" and record["expires_at"] == pytest.approx(record["finished"] + 10)
    assert (folder / done / "result.png").is_file()
    wait_for(lambda: not (folder / done).exists(), 60, "the expired job's artifacts to be deleted")
    assert time.time() - record["expires_at"] < 60
    assert not producer.redis.exists(f"zoomq:job:{done}") and producer.redis.zscore(Jobs.ALL_SET, done) is None
    assert open_store(producer.settings, producer.redis).get(f"{done}/result.png") is None
