"""The fleet soak (tests/test_soak.py): real workers on a private Redis with its AOF, many image and
zoom jobs, workers killed (SIGKILL, whole node) at random mid-piece and Redis restarted under them;
then every invariant checked from Redis, the workers' logs and /metrics, and the Redis figures the
capacity arithmetic of docs/deploy.md uses (commands, CPU and memory per job, commands per idle worker)."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from support.cluster import RedisServer, Worker, wait_for
from support.metrics import by, scrape
from zoomq.config import settings
from zoomq.node.processes import WorkerProcess
from zoomq.producer import Producer
from zoomq.queue import stats
from zoomq.queue.job_records import DONE, ENDED
from zoomq.web import create_app
from zoomq.worker.lease import RUNNING_PIECES

IMAGE: dict[str, Any] = dict(width=64, height=64, steps=1)
ZOOM: dict[str, Any] = dict(keyframes=2, size=128, mask_width=32, interpolation_frames=2, steps=1)
_DONE = re.compile(r"piece ended: job=(\S+) piece=(\S+) .*outcome=done")


@dataclass
class Plan:
    workers: int
    images: int
    zooms: int
    kills: int
    restarts: int = 1
    idle_seconds: float = 0  # measure the commands of idle workers this long first (0: not)
    seed: int = 26
    #: The workers' visibility timeout, seconds: short, so a killed worker's unacknowledged message
    #: comes back within the run (and the live workers' renewals are exercised the whole time).
    visibility: int = 20


@dataclass
class Soak:
    """What a run did and measured; ``problems`` is empty when every invariant held."""

    jobs: dict[str, str] = field(default_factory=dict)  # job id → "image" or "zoom"
    killed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    top_commands: list[tuple[str, int]] = field(default_factory=list)


def _info(client) -> dict:
    """The Redis figures compared before and after: calls per command, CPU seconds, memory."""
    info = client.info("all")
    calls = {k.removeprefix("cmdstat_"): v["calls"] for k, v in info.items() if k.startswith("cmdstat_")}
    return {"calls": Counter(calls), "cpu": info["used_cpu_sys"] + info["used_cpu_user"],
            "memory": info["used_memory"]}


def _delta(a: dict, b: dict) -> tuple[Counter, float]:
    return b["calls"] - a["calls"], b["cpu"] - a["cpu"]


def _pieces(kind: str) -> set[str]:
    if kind == "image":
        return {"image"}
    n = int(ZOOM["keyframes"])
    return {f"keyframe:{k}" for k in range(n)} | {f"segment:{k}" for k in range(n - 1)} | {"stitch"}


def run(plan: Plan, folder: Path, models: list[Path], timeout: float) -> Soak:
    rng = random.Random(plan.seed)
    out = Soak()
    server = RedisServer(folder / "redis", appendonly=True, appendfsync="everysec")
    workers: list[WorkerProcess] = []
    lock = threading.Lock()
    names = iter(range(10_000))

    def start() -> WorkerProcess | None:
        env = {"ZOOMQ_VISIBILITY_TIMEOUT": str(plan.visibility)}
        try:
            worker = Worker(f"s{next(names)}", server.url, models, folder, env=env)
        except Exception as e:  # noqa: BLE001 — a worker that cannot start is a finding, not a crash
            out.problems.append(f"a worker did not start: {e}")
            return None
        with lock:
            workers.append(worker)
        return worker

    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: start(), range(plan.workers)))
        client = server.client()
        idle_calls = idle_cpu = 0.0  # per worker and second
        if plan.idle_seconds:
            before = _info(client)
            time.sleep(plan.idle_seconds)  # a measurement of idle workers, not a wait for an event
            calls, cpu = _delta(before, _info(client))
            idle_calls, idle_cpu = (sum(calls.values()) / plan.workers / plan.idle_seconds,
                                    cpu / plan.workers / plan.idle_seconds)
            out.figures["idle commands per worker per minute"] = 60 * idle_calls
            out.figures["idle redis cpu ms per worker per minute"] = 60_000 * idle_cpu
        s = replace(settings(), redis_url=server.url, max_queued=0, max_queued_per_key=0)
        producer = Producer(s)
        start_info = _info(client)
        began = time.monotonic()
        kinds = ["image"] * plan.images + ["zoom"] * plan.zooms
        rng.shuffle(kinds)
        for i, kind in enumerate(kinds):
            job = (producer.submit_image(f"soak {i}", model="t2i", seed=i, **IMAGE) if kind == "image" else
                   producer.submit_zoom(f"soak {i}", model="inpaint", seed=i, **ZOOM))
            out.jobs[job] = kind
        out.figures["memory per queued job (bytes)"] = (_info(client)["memory"] - start_info["memory"]) / len(kinds)
        segments = _chaos(plan, rng, server, client, workers, lock, start, out, len(kinds), timeout)
        seconds = time.monotonic() - began
        calls = Counter[str]()
        cpu = 0.0
        for a, b in segments:
            c, u = _delta(a, b)
            calls += c
            cpu += u
        _check(out, producer, server, folder, plan)
        n = len(kinds)
        idle = plan.workers * seconds  # worker-seconds: their heartbeats are counted apart, per worker
        out.figures |= {
            "jobs": n, "seconds to submit and finish them": seconds,
            "commands per job": sum(calls.values()) / n, "redis cpu ms per job": 1000 * cpu / n,
            "commands per job, less idle workers' share": (sum(calls.values()) - idle_calls * idle) / n,
            "redis cpu ms per job, less idle workers' share": 1000 * (cpu - idle_cpu * idle) / n,
            "memory per finished job (bytes)": (_info(client)["memory"] - start_info["memory"]) / n}
        out.top_commands = calls.most_common(12)
        producer.redis.close()
        client.close()
        return out
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda w: w.stop(grace=1), list(workers)))
        server.stop()


def _chaos(plan: Plan, rng: random.Random, server: RedisServer, client, workers: list[WorkerProcess],
           lock: threading.Lock, start, out: Soak, total: int, timeout: float) -> list[tuple[dict, dict]]:
    """Wait for every job to end, killing a worker that is mid-piece at each random point of the
    run and restarting Redis at others; returns the (before, after) figures of each Redis lifetime."""
    kills = sorted(rng.uniform(0.05, 0.6) for _ in range(plan.kills))
    restarts = sorted(rng.uniform(0.3, 0.7) for _ in range(plan.restarts))
    segments: list[tuple[dict, dict]] = []
    first = _info(client)
    replacements: list[threading.Thread] = []
    deadline = time.monotonic() + timeout
    while True:
        ended = _ended(client)
        done = ended / total
        if kills and done >= kills[0] and _kill_one(client, workers, lock, rng, out):
            kills.pop(0)
            replacements.append(threading.Thread(target=start))  # the fleet keeps its size
            replacements[-1].start()
        if restarts and done >= restarts[0]:
            restarts.pop(0)
            for thread in replacements:  # a worker starting waits on Redis: not while it is away
                thread.join()
            segments.append((first, _info(client)))
            server.restart()  # SIGTERM: the AOF is flushed; the workers reconnect
            first = _info(client)
        if ended >= total:
            break
        if time.monotonic() > deadline:
            out.problems.append(f"only {ended} of {total} jobs ended within {timeout:g} s")
            break
        time.sleep(0.2)
    for thread in replacements:
        thread.join()
    segments.append((first, _info(client)))
    return segments


def _ended(client) -> int:
    counters = stats.read_counters(client.hgetall(stats.COUNTERS))
    return sum(n for key, n in counters.items() if key[0] == "ended")


def _kill_one(client, workers: list[WorkerProcess], lock: threading.Lock, rng: random.Random, out: Soak) -> bool:
    """SIGKILL the node of a worker that is rendering now; False when none is (try again later)."""
    busy = {json.loads(raw)["worker"] for raw in client.hvals(RUNNING_PIECES)}
    with lock:
        candidates = [w for w in workers if w.name in busy and w.proc.poll() is None]
    if not candidates:
        return False
    victim = rng.choice(candidates)
    victim.kill_node()
    out.killed.append(victim.name)
    return True


def _check(out: Soak, producer: Producer, server: RedisServer, folder: Path, plan: Plan) -> None:
    """Every invariant, each failure a line in ``out.problems``."""
    client = producer.redis
    jobs = list(out.jobs)
    with client.pipeline(transaction=False) as p:
        for job in jobs:
            p.hmget(f"zoomq:job:{job}", "state", "result")
        records = p.execute()
    for job, (state, result) in zip(jobs, records, strict=True):
        if state != DONE.encode():
            out.problems.append(f"job {job} ({out.jobs[job]}) ended {state!r}, not done")
        elif not result or not producer.store.exists(result.decode()):
            out.problems.append(f"job {job} is done but its result {result!r} is not in the store")
    # No piece completed twice: at most one 'done' per piece over every worker's log, and each
    # piece of each job started at least once, more only where a kill or the restart cut it short.
    done = Counter(m.groups() for log in folder.glob("worker-*.log") for m in _DONE.finditer(log.read_text()))
    twice = [piece for piece, n in done.items() if n > 1]
    if twice:
        out.problems.append(f"pieces completed more than once: {twice[:10]}")
    extra = 0
    for job, kind in out.jobs.items():
        starts = {piece: p["starts"] for piece, p in producer.jobs.pieces(job).items()}
        if set(starts) != _pieces(kind) or min(starts.values()) < 1:
            out.problems.append(f"job {job} ({kind}) ran pieces {starts}, expected {sorted(_pieces(kind))} once each")
        extra += sum(starts.values()) - len(starts)
    out.figures["pieces started again"] = extra
    out.figures["pieces completed"] = sum(done.values())
    counters = stats.read_counters(client.hgetall(stats.COUNTERS))
    out.figures["deliveries of a piece held elsewhere"] = sum(n for k, n in counters.items() if k[0] == "busy")
    out.figures["pieces the watchdog resent"] = sum(n for k, n in counters.items() if k[0] == "resent")
    # The queue drains: nothing waiting, running or held unacknowledged once the last acks land.
    queues = ("render.t2i", "render.inpaint", "encode")
    try:
        wait_for(lambda: not any(client.llen(q) for q in queues) and not client.hlen(RUNNING_PIECES)
                 and not client.hlen("unacked") and not client.zcard("zoomq:queued"), 3 * plan.visibility + 30,
                 "the queue to drain")
    except TimeoutError:
        out.problems.append(f"not drained: queues {[client.llen(q) for q in queues]}, running "
                            f"{client.hlen(RUNNING_PIECES)}, unacked {client.hlen('unacked')}, "
                            f"queued {client.zcard('zoomq:queued')}")
    # /metrics agrees with the records.
    app = create_app(replace(producer.settings, rate_limit=(0, 0), key_attempts=(0, 0)))
    samples = scrape(app.test_client())
    kinds = Counter(out.jobs.values())
    submitted = by(samples, "zoomq_jobs_submitted_total", "kind")
    ended = {dict(labels)["kind"]: v for labels, v in samples["zoomq_jobs_ended_total"].items()
             if dict(labels)["state"] == DONE}
    waiting = by(samples, "zoomq_jobs", "state")
    for kind in ("image", "zoom"):
        if submitted.get(kind, 0) != kinds[kind] or ended.get(kind, 0) != kinds[kind]:
            out.problems.append(f"/metrics says {submitted.get(kind)} {kind} jobs submitted and {ended.get(kind)} "
                                f"done; the records say {kinds[kind]} and {kinds[kind]}")
    if any(waiting.values()):
        out.problems.append(f"/metrics shows jobs still waiting or running: {waiting}")
    unfinished = [s for s in ENDED if s != DONE and any(dict(labels)["state"] == s and v
                                                       for labels, v in samples["zoomq_jobs_ended_total"].items())]
    if unfinished:
        out.problems.append(f"/metrics counts jobs that ended {unfinished}")
