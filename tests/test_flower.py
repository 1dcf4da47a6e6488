"""Flower against zoomq's broker: a worker started with ``--events`` is watched task by task."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from support.cluster import Worker, wait_for
from zoomq.node.processes import free_port
from zoomq.producer import Producer


def test_flower_sees_the_tasks_of_a_worker_with_events(tmp_path, monkeypatch, tiny_t2i, redis_server):
    server = redis_server(tmp_path / "redis")
    monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
    worker = Worker("watched", server.url, [tiny_t2i], tmp_path, events=True)
    port = free_port()
    log = open(tmp_path / "flower.log", "wb")
    # docs/operations.md's command: Flower needs only the broker, not zoomq's code, and reads it from
    # the environment (never the command line, where a password would show).
    flower = subprocess.Popen([str(Path(sys.executable).parent / "celery"), "flower", f"--port={port}",
                               "--address=127.0.0.1"], env={**os.environ, "CELERY_BROKER_URL": server.url},
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def metrics() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    return response.read().decode()
            except OSError:
                return ""

        wait_for(lambda: 'worker="watched@' in metrics(), 60, "Flower to see the worker")
        producer = Producer()
        job = producer.submit_image("x", model="t2i", steps=2, seed=1)
        assert producer.wait(job, timeout=120)["state"] == "done"
        seen = wait_for(lambda: (lambda m: m if 'type="task-succeeded"' in m else None)(metrics()), 30,
                        "Flower to see the task succeed")
        assert seen is not None  # wait_for returns only metrics that show it
        # the image ran as the fair-scheduling token that claimed it (queue.fair)
        assert 'flower_events_total{task="zoomq.next",type="task-succeeded",worker="watched@' in seen
        assert 'flower_task_runtime_seconds_count{task="zoomq.next",worker="watched@' in seen
    finally:
        flower.terminate()
        flower.wait(timeout=30)
        log.close()
        worker.stop()
        server.stop()
