"""The guidance split end to end: a private redis-server, real worker processes on the miniature
models, one leading a render and an idle one running the unconditional half of its guided steps.

Pixels are compared with the same render unsplit in this process, with the workers' thread count.
The workers run with a 1 s heartbeat, so a silent peer is given up after 2 s (production: 10 s)."""

from __future__ import annotations

import io
import re
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image

from support.cli import run_cli
from support.cluster import wait_for
from support.images import psnr
from zoomq.config import settings
from zoomq.producer import Producer
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest
from zoomq.worker import guidance_split_redis

SLOW_IMAGE: dict[str, Any] = dict(steps=30, width=512, height=512)  # a few seconds on the miniature model


@pytest.fixture
def cluster(cluster):
    """``cluster.cluster`` with the guidance split on (the queue tests' workers have it off)."""
    def start(name, env=None, **options):
        return cluster(name, env={"ZOOMQ_GUIDANCE_SPLIT": "on", **(env or {})}, **options)
    return start


def one_thread(precision: str = "f32"):
    return replace(settings(), threads=1, inference_precision=precision)


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float64) / 255


def warm(producer: Producer, *models: str) -> None:
    """One tiny job per worker and model, so every process has compiled before the measurement."""
    for model in models:
        for seed in range(2):
            producer.wait(producer.submit_image("warm", model=model, steps=1, seed=seed, guidance=1.0), timeout=120)


def both_idle(producer: Producer, model: str, count: int = 2) -> None:
    wait_for(lambda: len(guidance_split_redis.idle_helpers(producer.redis, model)) >= count, 60,
             f"{count} idle workers")


def log_of(worker) -> str:
    return worker.log_path.read_text(errors="replace")


def splits_logged(worker) -> int:
    return log_of(worker).count("split helping:")


def unsplit_image(model_dir, precision="f32", **request) -> np.ndarray:
    return Renderer(model_dir, one_thread(precision)).render(RenderRequest(**request)).pixels


@pytest.mark.parametrize("precision", ["f32", "bf16"])
def test_split_image_matches_the_unsplit_render(cluster, tiny_t2i, precision, capsys):
    env = {"ZOOMQ_INFERENCE_PRECISION": precision}
    w1, w2 = cluster("w1", env=env), cluster("w2", env=env)
    producer = Producer()
    warm(producer, "t2i")
    both_idle(producer, "t2i")
    request: dict[str, Any] = dict(prompt="a castle", negative_prompt="fog", steps=6, seed=3, guidance=7.5, width=512,
                                   height=512)
    job = producer.submit_image(model="t2i", **request)
    record = producer.wait(job, timeout=120)
    assert record["state"] == "done", record.get("error")
    leader, helper = (w1, w2) if record["worker"] == w1.name else (w2, w1)
    assert record["split_with"] == helper.name and record["split_piece"] == "image", record
    assert record["split_note"] == ""
    assert splits_logged(helper) == 1
    # The leader says stop as soon as the denoising loop ends, before it decodes.
    ended = r"split help ended: .* calls=(\d+) reason=the leader stopped it: denoising ended"
    stopped = wait_for(lambda: re.search(ended, log_of(helper)), 10, "the helper to stop")
    assert stopped is not None
    helped = int(stopped.group(1))
    assert helped >= 6 and f"split_calls={helped} " in log_of(leader)  # every guided call (PNDM: 1 more)
    code, out, _ = run_cli("status", job, capsys=capsys)
    assert code == 0 and re.search(rf"split with +{re.escape(helper.name)} \(image\)", out), out
    figure = psnr(png_pixels(producer.result(job)), unsplit_image(tiny_t2i, precision, **request))
    print(f"\nsplit against unsplit, image, {precision}: {figure:.1f} dB")
    assert figure >= (40 if precision == "f32" else 30), figure


def test_split_zoom_keyframes_match_the_unsplit_render(cluster, tiny_inpaint, tmp_path):
    from zoomq.zoom.keyframe import render_keyframe
    from zoomq.zoom.settings import ZoomSettings

    w1, w2 = cluster("w1"), cluster("w2")
    producer = Producer()
    both_idle(producer, "inpaint")
    job = producer.submit_zoom("a spiral", model="inpaint", keyframes=2, size=256, mask_width=64,
                               interpolation_frames=2, steps=5, seed=21)
    record = producer.wait(job, timeout=180)
    assert record["state"] == "done", record.get("error")
    assert record["split_with"] in (w1.name, w2.name) and record["split_piece"].startswith("keyframe:"), record
    assert splits_logged(w1) + splits_logged(w2) == 2  # both keyframes were split
    settings_ = ZoomSettings.from_dict(record["params"]["zoom"])
    renderer = Renderer(tiny_inpaint, one_thread())
    previous = None
    for k in range(2):
        queued = tmp_path / f"queued-{k}.png"
        queued.write_bytes(producer.artifact(job, f"keyframe-{k:03d}.png"))
        local = tmp_path / f"local-{k}.png"
        render_keyframe(renderer, settings_, k, previous, local)
        figure = psnr(png_pixels(queued.read_bytes()), png_pixels(local.read_bytes()))
        print(f"\nsplit against unsplit, zoom keyframe {k} (inpainting), f32: {figure:.1f} dB")
        assert figure >= 40, (k, figure)
        previous = queued  # the next keyframe outpaints the one the job made


def test_helper_never_comes_the_leader_renders_alone(cluster, tiny_t2i, server):
    from zoomq.queue import registry

    w1 = cluster("w1")
    producer = Producer()
    warm(producer, "t2i")
    # A worker that looks alive and idle but takes nothing: a node lost less than three heartbeats
    # ago (its registry key has not expired yet).
    ghost = {"models": registry.describe_models([tiny_t2i]), "queues": ["render.t2i", "split.t2i"], "concurrency": 1}
    registry.announce(producer.redis, "ghost@gone", ghost, heartbeat=600)
    assert "ghost@gone" in guidance_split_redis.idle_helpers(producer.redis, "t2i")
    request: dict[str, Any] = dict(prompt="a castle", steps=4, seed=5, guidance=7.5)
    job = producer.submit_image(model="t2i", **request)
    record = producer.wait(job, timeout=60)
    assert record["state"] == "done", record.get("error")
    assert record["worker"] == w1.name and "split_with" not in record, record
    took = record["finished"] - record["started"]
    assert 1.0 <= took < 10, took  # the offer's claim window, then alone
    assert "split finished" not in log_of(w1)
    # The offer's task waits in guidance_split_redis.t2i until a worker is free: w1 itself, once its render is
    # done, takes it and drops it, as the leader withdrew it.
    wait_for(lambda: "offer taken or withdrawn" in log_of(w1), 30, "the stale offer to be dropped")
    assert splits_logged(w1) == 0
    assert psnr(png_pixels(producer.result(job)), unsplit_image(tiny_t2i, **request)) >= 40


def start_split(cluster, **request):
    """Two warm idle workers and a slow guided image split between them, three steps in:
    (producer, job, leader, helper)."""
    w1, w2 = cluster("w1"), cluster("w2")
    producer = Producer()
    warm(producer, "t2i")
    both_idle(producer, "t2i")
    job = producer.submit_image(model="t2i", **request)

    def under_way():
        record = producer.jobs.get(job)
        assert record is not None
        return record if record.get("split_with") and record["work_done"] >= 3 else None

    record = wait_for(under_way, 120, "a split render to be under way")
    leader, helper = (w2, w1) if record["split_with"] == w1.name else (w1, w2)
    return producer, job, leader, helper


def test_helper_lost_mid_render_the_leader_finishes_alone(cluster, tiny_t2i):
    request = dict(prompt="a lighthouse", negative_prompt="fog", seed=7, guidance=7.5, **SLOW_IMAGE)
    producer, job, _, helper = start_split(cluster, **request)
    helper.kill_node()
    record = producer.wait(job, timeout=180)
    assert record["state"] == "done", record.get("error")
    assert record["split_with"] == helper.name
    assert "alone" in record["split_note"] and "sent nothing" in record["split_note"], record["split_note"]
    figure = psnr(png_pixels(producer.result(job)), unsplit_image(tiny_t2i, **request))
    print(f"\nhelper lost mid-render, against unsplit, f32: {figure:.1f} dB")
    assert figure >= 40, figure


def test_split_with_deepcache_matches_the_unsplit_cached_render(cluster, tiny_t2i):
    """Each side keeps the features of its own half: the split cached render is the unsplit one."""
    w1, w2 = cluster("w1"), cluster("w2")
    producer = Producer()
    warm(producer, "t2i")
    both_idle(producer, "t2i")
    request: dict[str, Any] = dict(prompt="a castle", negative_prompt="fog", steps=7, seed=4, guidance=7.5,
                                   width=512, height=512, cache_interval=3)
    job = producer.submit_image(model="t2i", **request)
    record = producer.wait(job, timeout=120)
    assert record["state"] == "done", record.get("error")
    assert record["split_with"] in (w1.name, w2.name) and record["split_note"] == "", record
    image = png_pixels(producer.result(job))
    cached = psnr(image, unsplit_image(tiny_t2i, **request))
    uncached = psnr(image, unsplit_image(tiny_t2i, **{**request, "cache_interval": 1}))
    print(f"\nsplit with DeepCache 3 against unsplit with it, f32: {cached:.1f} dB (against no cache: {uncached:.1f})")
    assert cached >= 40 and uncached < cached - 10, (cached, uncached)


def test_helper_leaves_when_work_arrives_and_takes_it(cluster, tiny_t2i):
    request = dict(prompt="a lighthouse", negative_prompt="fog", seed=10, guidance=7.5, **SLOW_IMAGE)
    producer, job, _, helper = start_split(cluster, **request)
    other = producer.submit_image("a harbour", model="t2i", steps=3, seed=11, guidance=7.5)
    second, first = producer.wait(other, timeout=120), producer.wait(job, timeout=180)
    assert first["state"] == "done" and second["state"] == "done", (first.get("error"), second.get("error"))
    # Throughput first: the helper left for the waiting job and ran it while the leader went on alone.
    assert second["worker"] == helper.name and second["started"] < first["finished"], (second, first)
    assert "alone" in first["split_note"] and "work is waiting" in first["split_note"], first["split_note"]
    assert re.search(r"split help ended: .*reason=work is waiting in its render queue", log_of(helper))
    figure = psnr(png_pixels(producer.result(job)), unsplit_image(tiny_t2i, **request))
    print(f"\nhelper left mid-render, against unsplit, f32: {figure:.1f} dB")
    assert figure >= 40, figure


def test_leader_vanishes_the_helper_stops_and_is_idle_again(cluster):
    producer, job, leader, helper = start_split(cluster, prompt="a lighthouse", seed=8, guidance=7.5, **SLOW_IMAGE)
    leader.kill_node()
    lost = time.monotonic()
    wait_for(lambda: "split help ended" in log_of(helper), 30, "the helper to stop")
    assert time.monotonic() - lost < 2.0 * 1 + 3, "the helper waited longer than its patience"
    assert "the leader sent nothing" in log_of(helper)
    assert not guidance_split_redis.helping(producer.redis)
    # Idle again: it takes the lost piece over once its lease lapses, and finishes the job alone.
    record = producer.wait(job, timeout=120)
    assert record["state"] == "done", record.get("error")
    assert record["worker"] == helper.name


def test_cancel_during_a_split_stops_both_within_one_step(cluster):
    producer, job, _, helper = start_split(cluster, prompt="a lighthouse", seed=9, guidance=7.5, **SLOW_IMAGE)
    per_step = float(producer.jobs.get(job)["seconds_per_step"])
    assert producer.cancel(job)
    cancelled = time.monotonic()
    wait_for(lambda: not producer.redis.exists(f"zoomq:lease:{job}:image"), 30, "the leader to stop")
    leader_stopped = time.monotonic() - cancelled
    wait_for(lambda: "split help ended" in log_of(helper), 30, "the helper to stop")
    helper_stopped = time.monotonic() - cancelled
    assert leader_stopped < per_step + 1.0 and helper_stopped < per_step + 1.0, (
        leader_stopped, helper_stopped, per_step)
    assert not guidance_split_redis.helping(producer.redis)
    assert producer.status(job)["state"] == "cancelled"


def test_nothing_splits_while_jobs_wait(cluster):
    for name in ("w1", "w2"):
        cluster(name)
    producer = Producer()
    warm(producer, "t2i")
    both_idle(producer, "t2i")
    # Unguided work (never split) keeps a worker busy while seven guided jobs queue up behind it.
    blockers = [producer.submit_image("block", model="t2i", seed=s, guidance=1.0, **SLOW_IMAGE) for s in (1, 2)]
    wait_for(lambda: any(producer.status(b)["state"] == "running" for b in blockers), 60, "a blocker to start")
    jobs = [producer.submit_image("busy", model="t2i", steps=8, seed=s, guidance=7.5, width=256, height=256)
            for s in range(7)]
    records = [producer.wait(job, timeout=120) for job in jobs + blockers][:len(jobs)]
    assert all(r["state"] == "done" for r in records)
    # Throughput first: when guided job k starts, each worker holds at most one more piece (its own
    # running one and one prefetched), so jobs k + 3 and later still wait in the queue and the first
    # four never split. The last ones may: the other worker can be idle with nothing waiting by then.
    assert not any(r.get("split_with") for r in records[:4]), [r.get("split_with") for r in records]


def test_a_worker_with_the_split_off_neither_leads_nor_helps(cluster, tiny_t2i):
    cluster("w1", env={"ZOOMQ_GUIDANCE_SPLIT": "off"})
    cluster("w2", env={"ZOOMQ_GUIDANCE_SPLIT": "off"})
    producer = Producer()
    warm(producer, "t2i")
    assert guidance_split_redis.idle_helpers(producer.redis, "t2i") == []
    record = producer.wait(producer.submit_image("a castle", model="t2i", steps=3, seed=1, guidance=7.5), timeout=60)
    assert record["state"] == "done" and "split_with" not in record


def test_the_job_page_and_api_show_the_split(make_client):
    client = make_client()
    job = client.producer.submit_image("a castle", model="t2i", steps=3, seed=1)
    client.producer.jobs.start_piece(job, "image", "w1@test", 1)
    client.producer.jobs.update(job, split_with="w2@test", split_piece="image", split_note="")
    api = client.get(f"/api/jobs/{job}").get_json()
    assert (api["split_with"], api["split_piece"], api["split_note"]) == ("w2@test", "image", "")
    page = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert 'id="split"' in page and "w2@test (image: guided steps shared" in page
    client.producer.jobs.update(job, split_note="image: from UNet call 4 alone (the helper left)")
    page = client.get(f"/jobs/{job}").get_data(as_text=True)
    assert "from UNet call 4 alone (the helper left)" in page
    other = client.producer.submit_image("a moat", model="t2i", steps=3, seed=2)
    page = client.get(f"/jobs/{other}").get_data(as_text=True)
    assert '<dd id="split" hidden>' in page


def test_messages_round_trip_without_pickles():
    sample = np.random.default_rng(0).standard_normal((1, 9, 64, 64)).astype(np.float32)
    embeds = np.ones((1, 77, 1024), np.float32)
    packed = guidance_split_redis.pack({"kind": "step", "call": 3}, sample=sample, embeds=embeds)
    header, arrays = guidance_split_redis.unpack(packed)
    assert header == {"kind": "step", "call": 3}
    assert np.array_equal(arrays["sample"], sample) and np.array_equal(arrays["embeds"], embeds)
    header, arrays = guidance_split_redis.unpack(guidance_split_redis.pack({"kind": "stop"}, noise=None))
    assert header == {"kind": "stop"} and arrays == {}
