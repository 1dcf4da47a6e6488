"""A piece that runs longer than the broker's visibility timeout stays with its live worker
(``queue.visibility``), and a worker that dies still has its piece taken up by another."""

from __future__ import annotations

import time
from typing import Any

import pytest

from support.cluster import wait_for
from zoomq import config
from zoomq.errors import InvalidParameter
from zoomq.producer import Producer
from zoomq.queue import stats
from zoomq.queue.visibility import UNACKED_INDEX, renew

TIMEOUT = 3  # seconds: the broker's visibility timeout here, and kombu's sweep every second
SHORT = {"ZOOMQ_VISIBILITY_TIMEOUT": str(TIMEOUT), "ZOOMQ_HEARTBEAT": "1"}
LONG_IMAGE: dict[str, Any] = dict(width=512, height=512, steps=150, seed=4)  # 30 s at the least, minutes when busy


def test_a_piece_longer_than_the_visibility_timeout_stays_with_its_worker(cluster, tiny_t2i):
    workers = {w.name: w for w in (cluster("first", models=(tiny_t2i,), env=SHORT),
                                    cluster("second", models=(tiny_t2i,), env=SHORT))}
    producer = Producer()
    job = producer.submit_image("a long one", model="t2i", **LONG_IMAGE)

    def running() -> dict | None:
        now = producer.jobs.get(job)
        return now if now and now["state"] == "running" else None

    record = wait_for(running, 120, "the image to start")
    assert record is not None

    def outlived() -> bool:
        now = producer.jobs.get(job) or {}
        assert now.get("state") == "running", f"the render ended before it outlived the timeout: {now.get('state')}"
        return time.time() - float(now["started"]) > 3 * TIMEOUT + 1

    wait_for(outlived, 3 * TIMEOUT + 30, "the piece to outlive the visibility timeout three times")
    # Its message is still held, renewed within the timeout, and was never handed to the idle worker.
    held = producer.redis.zrange(UNACKED_INDEX, 0, -1, withscores=True)
    assert len(held) == 1 and time.time() - float(held[0][1]) < TIMEOUT, held
    assert producer.redis.llen("render.t2i") == 0
    counters = stats.read_counters(producer.redis.hgetall(stats.COUNTERS))
    assert counters.get(("busy", "image"), 0) == 0, counters
    assert producer.jobs.pieces(job)["image"] == {"worker": record["worker"], "starts": 1}

    # A worker that really dies: its piece is started again by the other one.
    holder = workers.pop(str(record["worker"]))
    holder.kill_node()
    (other,) = workers
    wait_for(lambda: producer.jobs.pieces(job)["image"] == {"worker": other, "starts": 2}, 120,
             "the other worker to take the piece up")
    assert producer.cancel(job)  # its render would take minutes; the takeover is what was tested


def test_only_held_messages_are_renewed(server):
    client = server.client()
    client.zadd(UNACKED_INDEX, {"a": 1.0, "b": 1.0})
    assert renew(client, ["a", "acked-already"], now=100.0) == 1
    assert client.zrange(UNACKED_INDEX, 0, -1, withscores=True) == [(b"b", 1.0), (b"a", 100.0)]
    assert not client.zscore(UNACKED_INDEX, "acked-already")  # never brought back
    assert renew(client, [], now=200.0) == 0


def test_a_visibility_timeout_within_three_heartbeats_is_refused(monkeypatch):
    monkeypatch.setenv("ZOOMQ_HEARTBEAT", "5")
    monkeypatch.setenv("ZOOMQ_VISIBILITY_TIMEOUT", "14")
    with pytest.raises(InvalidParameter) as e:
        config.settings()
    assert e.value.param == "ZOOMQ_VISIBILITY_TIMEOUT" and "3 × ZOOMQ_HEARTBEAT (15 s)" in str(e.value)
    monkeypatch.setenv("ZOOMQ_VISIBILITY_TIMEOUT", "15")
    assert config.settings().visibility_timeout == 15
