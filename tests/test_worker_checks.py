"""Workers trust nothing they read from Redis and tell users nothing internal (issue 24): a job
written into Redis by hand, past the producer's checks, is refused by the worker that picks it up
with the rule and the limit it breaks; a job that meets an internal error fails with a short
category and message, the full text (paths and all) only in the worker's log, with the job id."""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict

from zoomq.errors import (
    ArtifactMissing,
    ArtifactStoreError,
    ArtifactStoreUnreachable,
    InvalidParameter,
    ModelError,
    ModelNotServed,
    VideoError,
    ZoomqError,
)
from zoomq.producer import Producer
from zoomq.queue import job_records
from zoomq.queue.celery_app import TASK_IMAGE, TASK_KEYFRAME, make_app, render_queue
from zoomq.render.request import RenderRequest
from zoomq.worker.failures import public_error
from zoomq.zoom.settings import ZoomSettings

LIMITS = {"ZOOMQ_MAX_STEPS": "10", "ZOOMQ_MAX_PIXELS": str(128 * 128)}


def written_by_hand(producer: Producer, kind: str, model: str, params: dict, task: str, args: list) -> str:
    """A job recorded and enqueued as ``Producer.submit_*`` does it, without any of its checks."""
    job_id = job_records.new_id()
    producer.jobs.create(job_id, kind, model, params, 10)
    make_app(producer.settings).send_task(task, args=[job_id, *args], queue=render_queue(model))
    return job_id


def test_a_job_written_into_redis_by_hand_past_the_limits_is_refused_by_the_worker(cluster):
    cluster("w1", env=LIMITS)
    producer = Producer()
    image = {k: v for k, v in asdict(RenderRequest("a castle", steps=10000, seed=1)).items()
             if k not in ("init_image", "mask")}
    too_many_steps = written_by_hand(producer, "image", "t2i", image, TASK_IMAGE, [])
    too_wide = written_by_hand(producer, "image", "t2i", {**image, "steps": 2, "width": 256, "height": 256},
                               TASK_IMAGE, [])
    zoom = ZoomSettings("a spiral", size=256, mask_width=32, keyframes=2, interpolation_frames=2, steps=2, seed=1)
    too_large = written_by_hand(producer, "zoom", "inpaint", {"zoom": zoom.to_dict()}, TASK_KEYFRAME, [0])
    unknown = written_by_hand(producer, "image", "t2i", {**image, "steps": 2, "shell": "rm -rf /"}, TASK_IMAGE, [])

    expected = {too_many_steps: ("steps", "10000", "limit of 10", "ZOOMQ_MAX_STEPS"),
                too_wide: ("width", "256x256", f"limit of {128 * 128}", "ZOOMQ_MAX_PIXELS"),
                too_large: ("size", "256x256", f"limit of {128 * 128}", "ZOOMQ_MAX_PIXELS"),
                unknown: ("shell", "is not an image parameter")}
    for job, words in expected.items():
        record = producer.wait(job, timeout=60)
        assert record["state"] == "failed", (job, record["state"], record.get("error"))
        assert record["error"].startswith("invalid parameter: "), record["error"]
        assert all(word in record["error"] for word in words), record["error"]
        assert not producer.store.exists(f"{job}/result.png") and not producer.store.exists(f"{job}/keyframe-000.png")


def test_an_internal_error_shows_a_short_category_and_the_worker_log_the_full_text(cluster, tmp_path, tiny_t2i,
                                                                                   make_client):
    model = tmp_path / "models" / "t2i"
    shutil.copytree(tiny_t2i, model)
    worker = cluster("w1", models=[model], env={"ZOOMQ_WARMUP": "off"})
    for part in model.rglob("*.xml"):  # broken after the worker announced it: its first job meets it
        part.write_text("<net>not an IR file</net>")
    client = make_client()
    answer = client.post("/api/jobs", json={"model": "t2i", "prompt": "a castle", "steps": 2, "seed": 1})
    assert answer.status_code == 202, answer.get_json()
    job = answer.get_json()["id"]
    deadline = time.monotonic() + 60
    while (record := client.get(f"/api/jobs/{job}").get_json())["state"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, record
        time.sleep(0.2)
    assert record["state"] == "failed", record
    error = record["error"]
    assert error.startswith(("model unavailable: ", "render failed: ")) and "the worker's log" in error, error
    assert "/" not in error and str(tmp_path) not in error and len(error) < 200, error
    logged = worker.log_path.read_text(errors="replace")
    assert job in logged and str(model) in logged, logged[-3000:]


SECRET_PLACES = ("/srv/models", "s3.internal.example", "https://", "10.0.0.7", "/tmp/zoomq-kf-")


def test_each_failure_is_a_short_category_with_nothing_internal():
    """What users see for each kind of failure: the messages written for them pass, the rest are
    named by category alone, whatever paths, endpoints or addresses their text holds."""
    table = [
        (InvalidParameter("steps", 10000, "is above this server's limit of 150 denoising steps (ZOOMQ_MAX_STEPS)"),
         "invalid parameter: steps: is above this server's limit of 150 denoising steps (ZOOMQ_MAX_STEPS) "
         "(got 10000)"),
        (ModelNotServed("sd2", ["t2i"]), "model not found: sd2"),
        (ArtifactMissing("JOB/keyframe-001.png is missing from the artifact store"),
         "artifact missing: JOB/keyframe-001.png is missing from the artifact store"),
        (ModelError("/srv/models/sd2: unet.bin does not match its sha256 in zoomq.json"), "model unavailable: "),
        (ArtifactStoreError("bucket zoomq at https://s3.internal.example: AccessDenied"), "artifact store failed: "),
        (ArtifactStoreUnreachable("https://s3.internal.example (10.0.0.7) did not answer"), "artifact store failed: "),
        (VideoError("ffmpeg failed: /tmp/zoomq-kf-1/seg.mp4: No space left"), "video encoding failed"),
        (MemoryError(), "render failed: out of memory"),
        (RuntimeError("Exception from src/inference: std::bad_alloc"), "render failed: out of memory"),
        (ZoomqError("redis://10.0.0.7:6379 refused"), "render failed: internal error (ZoomqError)"),
        (PermissionError(13, "Permission denied", "/srv/models/sd2/unet.xml"), "render failed: internal error"),
    ]
    for error, start in table:
        shown = public_error(error, "sd2")
        assert shown.startswith(start), (error, shown)
        assert not any(place in shown for place in SECRET_PLACES) and len(shown) < 200, shown
