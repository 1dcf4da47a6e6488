"""Render slots (``zoomq worker --concurrency 1x2``): one worker process renders two pieces at once on
one compiled model, each as a 1x1 worker would; a slot that fails leaves the other rendering; a
process killed with both slots busy loses neither piece."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support.cluster import wait_for
from zoomq import config
from zoomq.config import settings
from zoomq.model import manifest as mf
from zoomq.producer import Producer
from zoomq.render import precision, precompile
from zoomq.render.ov_models import CompiledParts
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest
from zoomq.worker.lease import RUNNING_PIECES
from zoomq.worker.process_group import ProcessGroup

# At the model's native size, which the worker's warm-up compiles: no other compile to wait for.
LONG: dict = dict(width=256, height=256, steps=10)  # seconds in a slot: long enough to overlap another piece
SHORT: dict = dict(width=256, height=256, steps=2)


@pytest.fixture
def reference(tiny_t2i):
    """``reference(prompt, seed, **params)``: the PNG's pixels as a 1x1 worker renders them (one
    OpenVINO thread, this process)."""
    renderer = Renderer(tiny_t2i, replace(config.settings(), threads=1))

    def render(prompt: str, seed: int, **params) -> np.ndarray:
        return np.asarray(renderer.render(RenderRequest(prompt, seed=seed, **params)).image)

    return render


def pixels(producer: Producer, job: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(producer.result(job))).convert("RGB"))


def both_running(producer: Producer) -> bool:
    """Two pieces under way at once: two leases held, two entries in ``zoomq:running``."""
    return producer.redis.hlen(RUNNING_PIECES) == 2


def test_two_slots_render_at_once_alike_fail_alone_and_come_back_after_a_kill(cluster, tiny_t2i, reference):
    """One worker for three cases, to keep the suite's time: the worker's start and compile cost
    more than the renders."""
    producer = Producer()
    # 1. A slot whose piece raises fails its job alone, while the other slot renders on.
    long = producer.submit_image("a castle", model="t2i", seed=3, **LONG)
    failing = producer.submit_image("x", model="t2i", seed=1, init_image=Image.new("RGB", (256, 256)), **SHORT)
    producer.redis.delete(f"zoomq:artifact:{failing}/init.png")  # its piece raises in its slot
    first = cluster("first", models=(tiny_t2i,), concurrency="1x2")  # both waiting: one in each slot
    failed = producer.wait(failing, timeout=300)
    assert failed["state"] == "failed" and "no longer in the artifact store" in failed["error"]
    assert producer.jobs.state(long) == "running"
    # 2. The freed slot takes the next job beside the long one: both under way at once, one process,
    # each image the one a 1x1 worker renders.
    short = producer.submit_image("a tower", model="t2i", seed=4, negative_prompt="fog", **SHORT)
    wait_for(lambda: both_running(producer), 300, "the short job to start beside the long one")
    records = {job: producer.wait(job, timeout=300) for job in (long, short)}
    assert all(r["state"] == "done" for r in records.values()), records
    assert max(r["started"] for r in records.values()) < min(r["finished"] for r in records.values())
    assert {r["worker"] for r in records.values()} == {first.name}
    assert len({r["worker_pid"] for r in records.values()}) == 1  # one process, two slots
    assert np.array_equal(pixels(producer, long), reference("a castle", 3, **LONG))
    assert np.array_equal(pixels(producer, short), reference("a tower", 4, negative_prompt="fog", **SHORT))
    entry = next(w for w in producer.workers() if w["name"] == first.name)
    assert (entry["concurrency"], entry["slots"]) == (1, 2)
    # 3. The process killed with both slots busy: nothing in it acknowledges or requeues anything;
    # both pieces' leases lapse, and another worker renders them again from the start.
    jobs = {producer.submit_image(f"job {seed}", model="t2i", seed=seed, **LONG): seed for seed in (5, 6)}
    work = [f"zoomq:job:{job}:work" for job in jobs]
    wait_for(lambda: both_running(producer) and all(int(producer.redis.hget(k, "image") or 0) >= 2 for k in work),
             300, "both pieces to be under way")
    first.kill_node()
    cluster("second", models=(tiny_t2i,), concurrency="1x2")
    for job in jobs:
        record = producer.wait(job, timeout=300)
        assert record["state"] == "done", record.get("error")
        assert record["worker"].startswith("second@")
        assert producer.jobs.pieces(job)["image"]["starts"] >= 2
    job, seed = next(iter(jobs.items()))  # rendered again from the start: as if never interrupted
    assert np.array_equal(pixels(producer, job), reference(f"job {seed}", seed, **LONG))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_two_processes_of_two_slots_render_four_at_once_restart_a_member_and_stop_as_one(cluster, tiny_t2i):
    """``--concurrency 2x2``: two worker processes (members) of two slots each, watched by one."""
    producer = Producer()
    group = cluster("group", models=(tiny_t2i,), concurrency="2x2")
    entries = {w["name"]: w for w in producer.workers()}
    assert [(entries[n]["concurrency"], entries[n]["slots"]) for n in group.names] == [(1, 2), (1, 2)]
    pids = {n: int(entries[n]["pid"]) for n in group.names}
    assert len(set(pids.values())) == 2 and group.proc.pid not in pids.values()  # two processes, not the group's own
    jobs = [producer.submit_image(f"job {seed}", model="t2i", seed=seed, **LONG) for seed in range(4)]

    def two_on_each() -> bool:
        # Seen while they run: on a loaded machine a lease may lapse later and its piece be rendered
        # again by the other member, so the records' last worker cannot tell who ran what at once.
        running = Counter(json.loads(raw)["worker"] for raw in producer.redis.hvals(RUNNING_PIECES))
        return running == {name: 2 for name in group.names}

    wait_for(two_on_each, 300, "four pieces under way at once, two in each member")
    # Every zoomq process of the group answers `kill -USR2` (logs.STACKS_SIGNAL) with its threads'
    # stacks in the log, and renders on: the group's own and each member's, four slots rendering.
    group.dump_stacks()

    def stacks() -> bool:
        text = group.log_path.read_text(errors="replace")
        return text.count(" in run_image") >= 4 and "process_group.py" in text

    wait_for(stacks, 30, "the stacks of the group and of both members")
    records = [producer.wait(job, timeout=300) for job in jobs]
    assert all(r["state"] == "done" for r in records), [r.get("error") for r in records]
    assert {r["worker"] for r in records} <= set(group.names)
    # A member that dies is started again, under its name, and renders.
    dead = group.names[0]
    os.kill(pids[dead], signal.SIGKILL)

    def restarted() -> bool:
        entry = next((w for w in producer.workers() if w["name"] == dead), None)
        return entry is not None and int(entry["pid"]) != pids[dead] and _alive(int(entry["pid"]))

    wait_for(restarted, 120, "the killed member to be started again")
    assert group.proc.poll() is None
    assert "worker process 1 exited" in group.log_path.read_text()
    members = [int(w["pid"]) for w in producer.workers() if w["name"] in group.names]
    # SIGTERM to the group: passed to each member, a warm shutdown; the group exits 0 after them.
    group.stop(grace=60)
    assert group.proc.returncode == 0
    assert not any(_alive(pid) for pid in members)


def test_a_member_failing_at_its_start_stops_the_group_with_its_code():
    """A member that exits with an error at its first start (a setup error, which a restart would
    meet again) stops the others and the group, with its exit code; it is not restarted forever."""
    started: list[subprocess.Popen] = []

    def spawn(argv: list[str]) -> subprocess.Popen:  # member .1 fails at once, .2 would run a minute
        code = "import sys; sys.exit(3)" if argv[-1].endswith(".1") else "import time; time.sleep(60)"
        started.append(subprocess.Popen([sys.executable, "-c", code]))
        return started[-1]

    begun = time.monotonic()
    assert ProcessGroup([], "group", 2, spawn=spawn).run() == 3
    assert time.monotonic() - begun < 10
    assert [p.returncode for p in started] == [3, -signal.SIGTERM]


def test_each_thread_keeps_its_own_unet_request_and_gets_the_same_noise(tiny_t2i):
    """Render slots are threads: each keeps one UNet infer request (no buffers allocated again
    each step), never another thread's, and the answers do not depend on which thread asked."""
    parts = CompiledParts(tiny_t2i, precision.applied(settings()))
    shapes = dict(precompile.default_shapes(mf.read(tiny_t2i)))["unet"]
    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}
    inputs["timestep"] = np.array(500.0, dtype=np.float32)
    other = {**inputs, "timestep": np.array(100.0, dtype=np.float32)}
    compiled = parts.compiled("unet", shapes)
    seen: dict[str, tuple] = {}

    def slot(name: str) -> None:
        first = parts._request("unet", compiled)
        out = parts.run("unet", **inputs)
        kept = out.copy()
        parts.run("unet", **other)  # the kept request's buffers are written again
        seen[name] = (first, parts._request("unet", compiled), out, kept)

    threads = [threading.Thread(target=slot, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (a1, a2, a_out, a_kept), (b1, b2, b_out, b_kept) = seen["a"], seen["b"]
    assert a1 is a2 and b1 is b2 and a1 is not b1
    assert parts._request("vae_decoder", compiled) is not parts._request("vae_decoder", compiled)  # once a render
    np.testing.assert_array_equal(a_out, a_kept)  # an answer is a copy, not the request's buffer
    np.testing.assert_array_equal(b_out, b_kept)
    np.testing.assert_array_equal(a_out, b_out)
