"""What the API and the pages show: a job record with its URLs, and the cluster's health."""

from __future__ import annotations

import redis
from flask import url_for

from zoomq.producer.producer import Producer
from zoomq.queue import registry
from zoomq.queue.celery_app import ENCODE_QUEUE, render_queue
from zoomq.queue.connection import redacted, unavailable
from zoomq.queue.job_records import DONE, RUNNING

# Fields of a job record that are internal bookkeeping, not for clients.
_HIDDEN = ("worker_pid", "encode_worker_pid", "heartbeat")


def job_json(record: dict) -> dict:
    """A job record for clients: state, progress, ETA, error, and URLs of what exists so far."""
    job_id = record["id"]
    out = {k: v for k, v in record.items() if k not in _HIDDEN}
    out["status_url"] = url_for("api.job", job_id=job_id)
    out["page_url"] = url_for("pages.job", job_id=job_id)
    done = record["state"] == DONE and record.get("purged") is None  # a purged job's artifacts are gone
    out["result_url"] = url_for("api.result", job_id=job_id) if done else None
    out["download_url"] = url_for("api.result", job_id=job_id, download=1) if done else None
    out["sidecar_url"] = url_for("api.sidecar", job_id=job_id) if done and record.get("sidecar") else None
    out["gif_url"] = (url_for("api.gif", job_id=job_id)
                      if done and record["kind"] == "zoom" and record["params"].get("zoom", {}).get("gif") else None)
    # While it runs: the newest live preview (204 until the first; fetching it asks for more).
    out["preview_url"] = url_for("api.preview", job_id=job_id) if record["state"] == RUNNING else None
    kept = 0 if record.get("purged") is not None else int(record.get("keyframes_done") or 0)
    out["keyframe_urls"] = [url_for("api.keyframe", job_id=job_id, k=k) for k in range(kept)]
    return out


def prompt(record: dict) -> str:
    """The job's prompt: image jobs keep their parameters flat, zoom jobs under ``zoom``."""
    return record["params"].get("zoom", record["params"]).get("prompt", "")


def job_summary(record: dict) -> dict:
    """One line of the recent-jobs list."""
    return {
        "id": record["id"], "kind": record["kind"], "model": record["model"], "state": record["state"],
        "stage": record.get("stage"), "progress": record["progress"], "created": record["created"],
        "prompt": prompt(record), "page_url": url_for("pages.job", job_id=record["id"]),
        "status_url": url_for("api.job", job_id=record["id"]),
    }


def health(producer: Producer) -> dict:
    """Broker reachability, live workers with their models, and the length of every queue."""
    try:
        producer.redis.ping()
    except redis.RedisError as e:
        error = str(unavailable(e, producer.settings))  # what to fix, without the password
        return {"ok": False, "broker": {"reachable": False, "error": error}, "workers": [], "queues": {}}
    workers = producer.workers()
    lengths = queue_lengths(producer.redis, workers)
    return {
        "ok": bool(workers),
        "broker": {"reachable": True, "url": redacted(producer.settings.redis_url)},
        "workers": [{"name": w["name"], "host": w.get("host"), "queues": w.get("queues", []),
                     "concurrency": w.get("concurrency"), "slots": w.get("slots", 1), "seen": w.get("seen"),
                     "models": {name: {"task": m["task"], "native_size": m["native_size"]}
                                for name, m in w.get("models", {}).items()}} for w in workers],
        "models": sorted({m for w in workers for m in w.get("models", {})}),
        "queues": lengths,
    }


def public_health(body: dict) -> dict:
    """What a load balancer needs of ``health()``, for callers without an admin key: whether the
    broker answers and any worker is alive. No worker names or hosts, no Redis address or error."""
    return {"ok": body["ok"], "broker": {"reachable": body["broker"]["reachable"]}}


def queue_lengths(client: redis.Redis, workers: list[dict]) -> dict[str, int]:
    """Queue → tasks waiting in it: the encode queue, every queue a live worker consumes, and
    the render queues of models nobody serves right now (they still hold waiting jobs). Read from
    the registry's queue set, never by scanning the keyspace."""
    queues = {ENCODE_QUEUE} | {q for w in workers for q in w.get("queues", [])}
    queues |= {render_queue(m) for w in workers for m in w.get("models", {})}
    queues |= registry.render_queues(client, queues)
    names = sorted(queues)
    with client.pipeline(transaction=False) as p:
        for q in names:
            p.llen(q)
        return dict(zip(names, p.execute()))
