"""Fair scheduling across submitters (``zoomq.queue.fair``): the Lua step against a bare
redis-server, then real workers serving several submitters' jobs in a fair order."""

from __future__ import annotations

import os
import signal
from typing import Any

import pytest

from support.cluster import wait_for
from zoomq.producer import Producer
from zoomq.queue import fair
from zoomq.queue.celery_app import TASK_IMAGE, render_queue

QUICK: dict[str, Any] = dict(width=64, height=64, steps=1)


@pytest.fixture
def client(redis_server, tmp_path):
    return redis_server(tmp_path / "redis").client()


def claimed_jobs(client, model: str, count: int, token: str = "t") -> list[str]:
    """The job ids of the next ``count`` claims, each released as soon as made."""
    jobs = []
    for i in range(count):
        claimed = fair.claim(client, model, f"{token}{i}")
        assert claimed is not None, f"claim {i} found nothing"
        jobs.append(claimed["piece"]["args"][0])
        fair.release(client, f"{token}{i}")
    return jobs


def test_least_recently_served_submitter_goes_next(client):
    for i in range(4):
        fair.push(client, "m", "key-a", TASK_IMAGE, [f"a{i}"])
    fair.push(client, "m", "key-b", TASK_IMAGE, ["b0"])
    assert claimed_jobs(client, "m", 5) == ["a0", "b0", "a1", "a2", "a3"]
    assert fair.claim(client, "m", "none") is None
    assert not client.keys("zoomq:claim:*")


def test_three_submitters_are_interleaved_and_models_kept_apart(client):
    for who, n in (("a", 10), ("b", 5), ("c", 1)):
        for i in range(n):
            fair.push(client, "m", who, TASK_IMAGE, [f"{who}{i}"])
    fair.push(client, "other", "a", TASK_IMAGE, ["x"])
    order = [job[0] for job in claimed_jobs(client, "m", 16)]
    assert "".join(order) == "abcababababaaaaa"
    assert fair.waiting(client, "other") == {"a": 1}


def test_served_submitter_coming_back_waits_behind_one_never_served(client):
    fair.push(client, "m", "a", TASK_IMAGE, ["a0"])
    assert claimed_jobs(client, "m", 1) == ["a0"]  # a was served; its lane is empty now
    fair.push(client, "m", "a", TASK_IMAGE, ["a1"])
    fair.push(client, "m", "b", TASK_IMAGE, ["b0"])
    fair.push(client, "m", None, TASK_IMAGE, ["anon"])  # the API and CLI without a key share one lane
    assert claimed_jobs(client, "m", 3) == ["b0", "anon", "a1"]


def test_a_redelivered_token_resumes_its_own_piece(client):
    fair.push(client, "m", "a", TASK_IMAGE, ["a0"])
    fair.push(client, "m", "a", TASK_IMAGE, ["a1"])
    first = fair.claim(client, "m", "token-1")
    assert first == {"submitter": "a", "piece": {"task": TASK_IMAGE, "args": ["a0"]}}
    assert fair.claim(client, "m", "token-1") == first  # the same token again: its piece, not the next
    assert fair.waiting(client, "m") == {"a": 1}
    fair.release(client, "token-1")
    again = fair.claim(client, "m", "token-1")
    assert again is not None and again["piece"]["args"] == ["a1"]


def test_lane_entries_without_a_token_get_one(client):
    sent: list[tuple[str, list, str]] = []

    def send(task, args, queue):
        sent.append((task, args, queue))

    fair.push(client, "m", "a", TASK_IMAGE, ["a0"])  # the producer died before sending its token
    fair.enqueue(client, lambda *_: None, "m", "b", TASK_IMAGE, ["b0"], render_queue("m"))  # token lost too
    client.rpush(render_queue("m"), "a token on its way")  # one of the two has a token in the queue
    assert fair.top_up(client, send, render_queue) == 0  # a gap seen once may be a send under way
    assert fair.top_up(client, send, render_queue) == 1
    assert sent == [(fair.TASK_NEXT, ["m"], "render.m")]
    assert fair.top_up(client, send, render_queue) == 0  # filled: nothing more


# -- real workers ---------------------------------------------------------------------------

def start_order(producer: Producer, jobs: dict[str, str]) -> list[str]:
    """Submitters in the order their jobs started (job id → submitter)."""
    started = {job: float((producer.jobs.get(job) or {})["started"]) for job in jobs}
    return [jobs[job] for job in sorted(jobs, key=started.__getitem__)]


def submit(producer: Producer, counts: dict[str, int]) -> dict[str, str]:
    jobs = {}
    for who, n in counts.items():
        for i in range(n):
            jobs[producer.submit_image(f"a house {i}", model="t2i", seed=i, submitter=who, **QUICK)] = who
    return jobs


def wait_all(producer: Producer, jobs, timeout: float = 240) -> None:
    for job in jobs:
        record = producer.wait(job, timeout=timeout)
        assert record["state"] == "done", (job, record.get("error"))


def test_one_worker_serves_the_later_submitter_second(cluster, tiny_t2i):
    producer = Producer()
    jobs = submit(producer, {"key-a": 4, "key-b": 1})  # queued before any worker is up
    cluster("w1", models=(tiny_t2i,))
    wait_all(producer, jobs)
    assert start_order(producer, jobs) == ["key-a", "key-b", "key-a", "key-a", "key-a"]
    assert not producer.redis.keys("zoomq:claim:*")  # every claim released


def test_three_submitters_on_two_workers_are_interleaved(cluster, tiny_t2i):
    producer = Producer()
    jobs = submit(producer, {"a": 10, "b": 5, "c": 1})
    cluster("w1", models=(tiny_t2i,))
    cluster("w2", models=(tiny_t2i,))
    wait_all(producer, jobs)
    order = start_order(producer, jobs)
    # Claimed a b c a b a b a b a b a a a a a; two workers may swap neighbours' start times.
    assert "c" in order[:4], order
    assert "b" not in order[12:], order
    assert order[:10].count("a") >= 4 and order[:10].count("b") >= 4, order


def test_no_job_lost_when_a_worker_dies_mid_run(cluster, tiny_t2i):
    cluster("w1", models=(tiny_t2i,))
    cluster("w2", models=(tiny_t2i,))
    producer = Producer()
    slow = producer.submit_image("a slow house", model="t2i", width=256, height=256, steps=40, seed=1, submitter="a")
    jobs = [slow] + list(submit(producer, {"a": 2, "b": 2}))
    pid = wait_for(lambda: (producer.jobs.get(slow) or {}).get("worker_pid"), 120, "the slow job to start")
    os.kill(int(str(pid)), signal.SIGKILL)  # the pool process rendering it
    wait_all(producer, jobs, timeout=300)
    assert producer.jobs.pieces(slow)["image"]["starts"] >= 2
    wait_for(lambda: not producer.redis.keys("zoomq:claim:*"), 60, "every claim to be released")


def test_a_zooms_later_keyframes_take_their_turn(cluster, tiny_t2i, tmp_path):
    """Keyframe k+1 joins its submitter's lane when k is done: another key's images go between."""
    producer = Producer()
    zoom = producer.submit_zoom("a spiral", model="t2i", keyframes=3, size=128, mask_width=32,
                                interpolation_frames=2, steps=1, seed=2, submitter="a")
    images = [producer.submit_image(f"a door {i}", model="t2i", seed=i, submitter="b", **QUICK) for i in range(2)]
    cluster("w1", models=(tiny_t2i,))
    wait_all(producer, [zoom, *images])
    started = [line.split("piece started: ", 1)[1].split()[:2]  # job=ID piece=NAME, in the order they began
               for line in (tmp_path / "worker-w1.log").read_text().splitlines() if "piece started: " in line]
    renders = ["zoom " + piece.removeprefix("piece=") if job == f"job={zoom}" else "image"
               for job, piece in started if piece.startswith(("piece=image", "piece=keyframe"))]
    assert renders == ["zoom keyframe:0", "image", "zoom keyframe:1", "image", "zoom keyframe:2"], started
