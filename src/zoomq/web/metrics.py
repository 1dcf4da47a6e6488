"""``GET /metrics``: the cluster in the Prometheus text format, read from Redis at scrape time.

The web app runs as several processes (gunicorn), so nothing is counted in process memory: a
collector on a registry of the app's own reads queues, jobs, workers and the counters in
``zoomq.queue.stats`` at every scrape, in a few round trips to Redis (pipelined) that never walk the
keyspace: workers and queues come from the registry's sets. When Redis cannot be reached the scrape
still answers, with ``zoomq_redis_up 0``.

With API keys configured, a scrape needs an admin key (``Authorization: Bearer``): 401 without a
valid one, 403 for a key that is not an admin's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis
from flask import Blueprint, Flask, Response, abort, current_app, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from zoomq.errors import Unauthorized
from zoomq.producer.producer import Producer
from zoomq.queue import registry, stats, usage
from zoomq.queue.job_records import CANCELLED, DONE, FAILED, QUEUED, RUNNING, Jobs
from zoomq.web import present
from zoomq.web.context import web
from zoomq.web.throttle import bearer

log = logging.getLogger(__name__)
bp = Blueprint("metrics", __name__)
_REGISTRY = "zoomq.metrics"


@dataclass
class Snapshot:
    """Everything a scrape reports, read from Redis in one go."""

    queues: dict[str, int]
    jobs: dict[str, int]
    counters: dict[tuple[str, ...], int]
    durations: dict[str, stats.Histogram]
    workers: list[dict]
    usage: dict[str, dict[str, float]] = field(default_factory=dict)  # key identity → figures (queue.usage)


def snapshot(client: redis.Redis) -> Snapshot:
    workers = registry.live_workers(client)
    queues = present.queue_lengths(client, workers)
    with client.pipeline(transaction=False) as p:
        p.zcard(Jobs.QUEUED_SET)
        p.zcard(Jobs.RUNNING_SET)
        p.hgetall(stats.COUNTERS)
        p.hgetall(stats.DURATIONS)
        p.hgetall(usage.USAGE)
        queued, running, counters, durations, used = p.execute()
    return Snapshot(queues, {QUEUED: queued, RUNNING: running}, stats.read_counters(counters),
                    stats.read_durations(durations), workers, usage.parse(used))


class ZoomqCollector(Collector):
    """Yields the zoomq metric families from a fresh snapshot at every scrape."""

    def __init__(self, client: redis.Redis):
        self.client = client

    def collect(self):
        up = GaugeMetricFamily("zoomq_redis_up", "Whether Redis (broker, job records, counters) answered this scrape.")
        try:
            s = snapshot(self.client)
        except redis.RedisError as e:
            log.warning("metrics: cannot read Redis: %s", e)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _families(s)


def _families(s: Snapshot):
    queue = GaugeMetricFamily("zoomq_queue_length", "Tasks waiting in each queue.", labels=["queue"])
    for name, length in s.queues.items():
        queue.add_metric([name], length)
    yield queue

    jobs = GaugeMetricFamily("zoomq_jobs", "Jobs waiting for their first piece (queued) and under way (running).",
                             labels=["state"])
    for state, count in s.jobs.items():
        jobs.add_metric([state], count)
    yield jobs

    submitted = CounterMetricFamily("zoomq_jobs_submitted", "Jobs submitted.", labels=["kind"])
    ended = CounterMetricFamily("zoomq_jobs_ended", "Jobs that ended, by how they ended.", labels=["kind", "state"])
    kinds = sorted(set(stats.JOB_KINDS) | {k[1] for k in s.counters if k[0] in ("submitted", "ended")})
    for kind in kinds:
        submitted.add_metric([kind], s.counters.get(("submitted", kind), 0))
        for state in (DONE, FAILED, CANCELLED):
            ended.add_metric([kind, state], s.counters.get(("ended", kind, state), 0))
    yield submitted
    yield ended

    online = GaugeMetricFamily("zoomq_workers_online", "Workers whose heartbeat is alive.")
    online.add_metric([], len(s.workers))
    yield online
    per_model = GaugeMetricFamily("zoomq_workers", "Live workers serving each model.", labels=["model"])
    models = sorted({m for w in s.workers for m in w.get("models", {})})
    for model in models:
        per_model.add_metric([model], sum(model in w.get("models", {}) for w in s.workers))
    yield per_model

    durations = HistogramMetricFamily("zoomq_piece_duration_seconds",
                                      "Wall time of completed pieces (image, keyframe, segment, stitch).",
                                      labels=["piece"])
    for piece, h in s.durations.items():
        durations.add_metric([piece], h.buckets, h.total)
    yield durations

    pieces = sorted(set(stats.PIECE_KINDS) | {k[1] for k in s.counters if k[0] in ("failed", "resent")})
    failures = CounterMetricFamily("zoomq_piece_failures", "Pieces that failed their job.", labels=["piece"])
    resent = CounterMetricFamily("zoomq_pieces_resent", "Pieces the watchdog sent again after their worker was lost.",
                                 labels=["piece"])
    for piece in pieces:
        failures.add_metric([piece], s.counters.get(("failed", piece), 0))
        resent.add_metric([piece], s.counters.get(("resent", piece), 0))
    yield failures
    yield resent
    yield from _usage(s.usage)


#: queue.usage's figures → (metric name, help); a label per key identity (never the key itself), whose
#: count grows with the keys file only: every job without a key counts under "anonymous".
USAGE_METRICS = {
    usage.JOBS: ("zoomq_usage_jobs", "Jobs submitted, per API key identity."),
    usage.UNET: ("zoomq_usage_unet_evaluations", "UNet evaluations of completed pieces, per API key identity."),
    usage.MEGAPIXEL_STEPS: ("zoomq_usage_megapixel_steps",
                            "Denoising steps times megapixels of completed pieces, per API key identity."),
    usage.SECONDS: ("zoomq_usage_render_seconds",
                    "Wall time of completed pieces (rendering and encoding), per API key identity."),
}


def _usage(used: dict[str, dict[str, float]]):
    for figure, (name, help_) in USAGE_METRICS.items():
        family = CounterMetricFamily(name, help_, labels=["key"])
        for who in sorted(used):
            family.add_metric([who], used[who][figure])
        yield family


def register(app: Flask, producer: Producer) -> None:
    """Serve ``/metrics`` from a registry of this app's own, never the process-wide default one."""
    collectors = CollectorRegistry(auto_describe=False)  # no describe(): nothing is read until a scrape
    collectors.register(ZoomqCollector(producer.redis))
    app.extensions[_REGISTRY] = collectors
    app.register_blueprint(bp)


@bp.get("/metrics")
def scrape():
    w = web()
    if w.keys.enabled:  # a wrong key counts against the address, as on every route
        key = w.key_attempts.key(w.keys, request.remote_addr or "unknown", bearer(request))
        if key is None:
            raise Unauthorized("/metrics needs an admin key: send Authorization: Bearer <key> "
                               "(Prometheus: authorization: {credentials_file: ...} in the scrape config)")
        if not key.admin:
            abort(403, "/metrics needs an admin key; this key is not one (zoomq keys add NAME --admin)")
    return Response(generate_latest(current_app.extensions[_REGISTRY]), content_type=CONTENT_TYPE_LATEST)
