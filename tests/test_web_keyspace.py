"""No web request walks the keyspace: ``/api/health``, ``/metrics``, the ``/jobs`` overview and the job
list find the queues and workers through the registry's sets, never ``SCAN`` or ``KEYS``, so they cost
the same with a Redis holding 100,000 other keys. Counted in the real server's ``INFO commandstats``."""

from __future__ import annotations

import redis

from zoomq.queue import registry
from zoomq.queue.celery_app import ENCODE_QUEUE, render_queue
from zoomq.web import api_keys

# One EVAL fills the keyspace: faster than a pipeline, and DEBUG POPULATE may be renamed away.
_FILL = "for i = 1, tonumber(ARGV[1]) do redis.call('SET', 'unrelated:' .. i, 'x') end return 1"
OTHER_KEYS = 100_000


def walks(client: redis.Redis) -> dict[str, int]:
    """How many SCAN-like and KEYS calls the server has answered so far."""
    stats = client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("scan", "keys")}


def test_health_metrics_overview_and_job_list_never_scan(make_client, tiny_t2i):
    client = make_client()  # no keys: every route answers in full
    r = client.producer.redis
    r.eval(_FILL, 0, OTHER_KEYS)
    # A worker of a model "gone" announces itself as workers do, a job waits in its queue, the worker leaves:
    # the queue of a model nobody serves still holds a task and must still be shown.
    gone = {"models": {"gone": next(iter(registry.describe_models([tiny_t2i]).values()))},
            "queues": [render_queue("gone")]}
    registry.announce(r, "w2@elsewhere", gone, heartbeat=600)
    submitted = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "gone", "steps": 2})
    assert submitted.status_code == 202, submitted.get_json()
    registry.withdraw(r, "w2@elsewhere")
    assert r.dbsize() > OTHER_KEYS
    before = walks(r)

    health = client.get("/api/health").get_json()
    metrics = client.get("/metrics").get_data(as_text=True)
    overview = client.get("/jobs").get_data(as_text=True)
    jobs = client.get("/api/jobs?limit=200").get_json()["jobs"]

    assert walks(r) == before, "a web request walked the keyspace (SCAN or KEYS)"
    # ...and the answers are those the scan gave: every queue a live worker consumes, the encode queue,
    # the waiting queue of the model nobody serves now; the live worker only.
    assert [w["name"] for w in health["workers"]] == ["w1@test"]
    assert health["queues"] == {ENCODE_QUEUE: 0, "render": 0, render_queue("gone"): 1, render_queue("inpaint"): 0,
                                render_queue("t2i"): 0}  # "render": the queue make_client's worker announces
    assert f'zoomq_queue_length{{queue="{render_queue("gone")}"}} 1.0' in metrics
    assert f'zoomq_queue_length{{queue="{render_queue("t2i")}"}} 0.0' in metrics
    assert "zoomq_workers_online 1.0" in metrics
    assert "w1@test" in overview and render_queue("gone") in overview
    assert [j["model"] for j in jobs] == ["gone"]


def test_a_queue_nobody_serves_leaves_the_registry_once_empty(make_client, tiny_t2i):
    client = make_client()
    r = client.producer.redis
    gone = {"models": {"gone": next(iter(registry.describe_models([tiny_t2i]).values()))},
            "queues": [render_queue("gone")]}
    registry.announce(r, "w2@elsewhere", gone, heartbeat=600)
    assert render_queue("gone") in client.get("/api/health").get_json()["queues"]  # served: shown, empty
    r.delete(registry.PREFIX + "w2@elsewhere")  # its record lapses, as when a worker is killed
    assert render_queue("gone") not in client.get("/api/health").get_json()["queues"]  # empty, unserved: gone
    assert render_queue("gone").encode() not in r.smembers(registry.QUEUES)  # and pruned from the registry


def test_with_keys_neither_strangers_nor_admins_make_a_request_scan(make_client, tmp_path):
    """With keys configured the same routes go through the throttle and the sessions too: still no walk."""
    made = {name: api_keys.new_key() for name in ("alice", "root")}
    path = tmp_path / "keys"
    path.write_text("".join(api_keys.line(name, key, admin=name == "root") + "\n" for name, key in made.items()))
    client = make_client(api_keys_file=str(path))
    r = client.producer.redis
    r.eval(_FILL, 0, OTHER_KEYS)
    before = walks(r)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {made['alice']}"},
                    {"Authorization": f"Bearer {made['root']}"}):
        client.get("/api/health", headers=headers)
        client.get("/metrics", headers=headers)
        client.get("/jobs", headers=headers)
        client.get("/api/jobs", headers=headers)
    full = client.get("/api/health", headers={"Authorization": f"Bearer {made['root']}"}).get_json()
    assert walks(r) == before, "a web request walked the keyspace (SCAN or KEYS)"
    assert [w["name"] for w in full["workers"]] == ["w1@test"] and render_queue("t2i") in full["queues"]
