"""The control plane costs the same at any job count: every request path (health, metrics, the
overview page, the job list, one job's status, one submit) sends Redis the same commands with 200
jobs queued as with 5,000, none of them walking the keyspace or a whole index; a submitter's cap
stays exact through every way a job ends or is lost; a job that is gone leaves nothing in Redis.
Commands are read from the private redis-server's MONITOR, round trips counted in redis-py."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import redis

from zoomq.producer import retention
from zoomq.queue.connection import text
from zoomq.queue.job_records import Jobs
from zoomq.storage import RedisStore

CAP = 100_000
SUBMITTER = "addr:127.0.0.1"  # the test client's submissions count against its address
IMAGE = {"kind": "image", "prompt": "a lighthouse", "model": "t2i", "steps": 2}
#: A new connection's set-up, which a pool may do on any request: not the request's own cost.
HANDSHAKE = {"HELLO", "AUTH", "CLIENT", "SELECT"}
#: Commands that read a whole index or walk the keyspace; none may run on a request path.
WALKS = {"SCAN", "KEYS", "ZSCAN", "SSCAN", "HSCAN", "SMEMBERS", "HGETALL", "ZRANGE", "ZREVRANGE", "LRANGE"}


def fill(jobs: Jobs, count: int, batch: int = 500) -> None:
    """``count`` queued image jobs of ``SUBMITTER``, straight into Redis (``Jobs.add_create``)."""
    for start in range(0, count, batch):
        with jobs.r.pipeline() as p:
            for _ in range(min(batch, count - start)):
                jobs.add_create(p, str(uuid.uuid4()), "image", "t2i", {"prompt": "filler", "steps": 2}, 2,
                                submitter=SUBMITTER)
            p.execute()


class Monitor:
    """Every command the server runs between ``start`` and ``stop`` (MONITOR), and the round trips
    this process's redis-py connections made meanwhile."""

    def __init__(self, client: redis.Redis, monkeypatch):
        self.client = client
        self.trips = 0
        self.counting = False
        cls = redis.connection.AbstractConnection
        send, connect = cls.send_packed_command, cls.connect_check_health

        def counted(conn, command, check_health=True):
            if self.counting and not getattr(conn, "connecting", False):  # a new connection's handshake is not
                self.trips += 1                                              # the request's: a pool may open one
            return send(conn, command, check_health)

        def connecting(conn, *args, **kwargs):
            conn.connecting = True
            try:
                return connect(conn, *args, **kwargs)
            finally:
                conn.connecting = False

        monkeypatch.setattr(cls, "send_packed_command", counted)
        monkeypatch.setattr(cls, "connect_check_health", connecting)
        self.monitor = client.monitor()
        self.monitor.__enter__()

    def run(self, action: Callable[[], object]) -> tuple[list[list[str]], int]:
        """(the commands ``action`` made the server run, each as [NAME, args...]; its round trips)."""
        mark = uuid.uuid4().hex
        self.client.echo(f"start-{mark}")
        self.trips, self.counting = 0, True
        try:
            action()
        finally:
            self.counting = False
        self.client.echo(f"stop-{mark}")
        seen: list[list[str]] = []
        started = False
        while True:
            line = self.monitor.next_command()["command"]
            if line == f"ECHO start-{mark}":
                started = True
            elif line == f"ECHO stop-{mark}":
                return seen, self.trips
            elif started:
                seen.append(line.split())

    def close(self) -> None:
        self.monitor.__exit__(None, None, None)


@pytest.fixture
def monitored(make_client, monkeypatch):
    client = make_client(max_queued=CAP, max_queued_per_key=CAP)
    watch = Monitor(client.producer.redis, monkeypatch)
    yield client, watch
    watch.close()


def _paths(client, job_id: str) -> dict[str, Callable[[], object]]:
    def call(method: str, url: str, **kw) -> Callable[[], object]:
        def go():
            answer = getattr(client, method)(url, **kw)
            assert answer.status_code < 300, (url, answer.status_code, answer.get_data(as_text=True)[:300])
        return go

    return {"health": call("get", "/api/health"), "metrics": call("get", "/metrics"),
            "overview": call("get", "/jobs"), "list": call("get", "/api/jobs?limit=50"),
            "status": call("get", f"/api/jobs/{job_id}"), "submit": call("post", "/api/jobs", json=IMAGE)}


def _measure(client, watch: Monitor, job_id: str) -> dict[str, tuple[list[str], int]]:
    out = {}
    for name, action in _paths(client, job_id).items():
        commands, trips = watch.run(action)
        commands = [c for c in commands if c[0].upper() not in HANDSHAKE]
        out[name] = ([c[0].upper() for c in commands], trips)
        walks = [c for c in commands if c[0].upper() in WALKS and not _small(c)]
        assert walks == [], (name, walks)
    return out


def _small(command: list[str]) -> bool:
    """Reads of a whole structure that does not grow with jobs: the registry's worker and queue sets,
    the counters' hashes, a bounded range (the newest N of an index)."""
    name, args = command[0].upper(), [a.strip('"') for a in command[1:]]
    if name in ("SMEMBERS", "HGETALL"):
        return not args[0].startswith(("zoomq:jobs", "zoomq:queued", "zoomq:unfinished", "zoomq:expiring",
                                       "zoomq:running-jobs", "zoomq:job-who", "zoomq:ended-owners"))
    if name in ("ZRANGE", "ZREVRANGE", "LRANGE"):
        return args[2] != "-1" and int(args[2]) - int(args[1]) < 200
    return False


def test_every_request_path_sends_the_same_commands_at_200_and_5000_jobs(monitored):
    client, watch = monitored
    jobs = client.producer.jobs
    fill(jobs, 199)
    job_id = client.post("/api/jobs", json=IMAGE).get_json()["id"]  # a queued job whose status is read
    for action in _paths(client, job_id).values():  # connections opened, queues declared
        action()
    small = _measure(client, watch, job_id)
    fill(jobs, 5000 - jobs.queued())
    assert jobs.queued() >= 5000 and jobs.unfinished(SUBMITTER) >= 5000
    large = _measure(client, watch, job_id)
    assert large == small
    commands, trips = small["submit"]
    # The record, its indexes and the lane entry are one transaction; the cap is two ZCARDs in one trip.
    assert commands.count("ZCARD") == 2 and commands.count("MULTI") == 1, commands
    assert trips <= 8, (trips, commands)
    # A job's records are read in one pipelined trip each time: the list of 50 in two, not 151.
    assert small["list"][1] <= 2 and small["status"][1] <= 3, small


def test_the_cap_counts_exactly_through_every_end_and_a_lost_record(server):
    r = server.client()
    jobs = Jobs(r, 3600)
    ids = [str(uuid.uuid4()) for _ in range(6)]
    for job_id in ids:
        jobs.create(job_id, "image", "t2i", {}, 2, owner="alice", submitter="alice")
    jobs.start_piece(ids[0], "image", "w1", 1)
    jobs.finish(ids[0], result=f"{ids[0]}/result.png")
    jobs.fail(ids[1], "render failed")
    assert jobs.cancel(ids[2]) and not jobs.cancel(ids[2])  # a second end changes nothing
    jobs.finish(ids[2])
    assert jobs.unfinished("alice") == 3

    r.delete(f"zoomq:job:{ids[3]}")  # a record lost (deleted by hand, evicted)
    assert jobs.unfinished("alice") == 3  # held until the sweep finds it
    store = RedisStore(r, 3600)
    removed = retention.sweep(jobs, [store], batch=2)  # bounded: a slice of the index a sweep
    removed += retention.sweep(jobs, [store], batch=2)
    assert removed == [ids[3]]
    assert jobs.unfinished("alice") == 2 == sum(jobs.state(j) in ("queued", "running") for j in ids)
    assert r.zscore(Jobs.QUEUED_SET, ids[3]) is None and r.zscore(Jobs.ALL_SET, ids[3]) is None

    first = jobs.get(ids[0])
    assert first is not None
    expired = retention.sweep(jobs, [store], now=first["expires_at"] + 1)  # the ended ones expire
    assert sorted(expired) == sorted(ids[:3])
    assert jobs.unfinished("alice") == 2 and r.zcard(Jobs.owned_set("alice")) == 2


def test_a_job_that_is_gone_leaves_nothing_in_redis(server):
    r = server.client()
    jobs = Jobs(r, 3600)
    store = RedisStore(r, 3600)
    ended, lost, kept = (str(uuid.uuid4()) for _ in range(3))
    for job_id in (ended, lost, kept):
        jobs.create(job_id, "image", "t2i", {}, 2, owner="alice", submitter="alice")
        store.put(f"{job_id}/init.png", b"png")
    jobs.start_piece(ended, "image", "w1", 1)
    jobs.progress(ended, "image", 1)
    store.put(f"{ended}/result.png", b"png")
    jobs.finish(ended, result=f"{ended}/result.png")
    r.delete(f"zoomq:job:{lost}")

    record = jobs.get(ended)
    assert record is not None
    removed = retention.sweep(Jobs(server.client(), 3600), [store], now=record["expires_at"] + 1)
    assert sorted(removed) == sorted([ended, lost])
    for job_id in (ended, lost):
        assert _traces(r, job_id) == [], job_id
    assert _traces(r, kept)  # the test can see a job that is there


def _traces(r: redis.Redis, job_id: str) -> list[str]:
    """Every key naming the job, and every set, sorted set, hash or list holding its id."""
    found = [text(k) for k in r.keys(f"*{job_id}*")]
    for key in r.keys("*"):
        kind = text(r.type(key))
        members: list = (list(r.smembers(key)) if kind == "set" else r.zrange(key, 0, -1) if kind == "zset"
                         else list(r.hkeys(key)) if kind == "hash" else r.lrange(key, 0, -1) if kind == "list" else [])
        if any(job_id in text(m) for m in members):
            found.append(text(key))
    return found
