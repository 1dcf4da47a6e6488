"""Which workers are alive, which models they serve, and which render queues exist.

Every worker refreshes a short-lived key ``zoomq:worker:<name>`` with its models, queues and
process; a worker that stops refreshing (killed, its node lost) disappears within three heartbeats.
Their names, and every render queue a worker consumes or a task was sent to, are kept in two small
sets, so status reads never walk the keyspace (``SCAN``/``KEYS``): they cost the same with 10 keys in
Redis or 100,000 artifacts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import redis

from zoomq.config import Settings
from zoomq.errors import ModelError
from zoomq.model import manifest as mf
from zoomq.queue import connection
from zoomq.queue.celery_app import render_queue

PREFIX = "zoomq:worker:"


def find_models(s: Settings, given: list[Path] | None) -> list[Path]:
    """The model folders to serve: ``given``, else ``ZOOMQ_MODELS``, else every prepared model in
    ``ZOOMQ_MODELS_DIR``. None at all is an error that says how to make some."""
    if given:
        return list(given)
    if s.models:
        return list(s.models)
    folder = s.models_dir
    found = sorted(p.parent for p in folder.glob(f"*/{mf.MANIFEST}")) if folder.is_dir() else []
    if not found:
        raise ModelError(
            f"no models to serve: none given with --models or ZOOMQ_MODELS, and {folder} holds no prepared model.\n"
            f"  Miniature random-weight models (for a first try, seconds):\n"
            f"    zoomq prepare --tiny --out {folder}/tiny-sd2\n"
            f"    zoomq prepare --tiny --inpainting --out {folder}/tiny-sd2-inpainting\n"
            f"  Real Stable Diffusion 2 models (downloaded from the Hugging Face hub, then converted):\n"
            f"    zoomq prepare --model stabilityai/stable-diffusion-2-1-base --out {folder}/sd21-base\n"
            f"    zoomq prepare --model stabilityai/stable-diffusion-2-inpainting --out {folder}/sd2-inpainting")
    return found


def describe_models(folders: list[Path]) -> dict[str, dict]:
    """The models a worker serves, by name (the folder's name), from their manifests."""
    models = {}
    for folder in folders:
        m = mf.read(folder)
        name = Path(folder).name
        if name in models:
            raise ModelError(f"two model folders are both named {name!r}; model names must be unique")
        models[name] = {
            "path": str(Path(folder).resolve()),
            "sha256": m.sha256,
            "task": m.task,
            "native_size": m.kind["native_size"],
            "latent_factor": m.latent_factor,
            "decoders": list(m.decoders),  # ["full", "tiny"] when it carries TAESD (--tiny-autoencoder)
            "cache_branches": list(m.cache_branches),  # DeepCache's branches; [] for a model to prepare again
            "variant": m.variant,
            "defaults": m.defaults,  # steps, guidance, scheduler: the producer fills requests with them
        }
    return models


NAMES = "zoomq:workers"  # every name announced; a name whose key has expired is a lost worker
#: Every render queue a worker consumes or a task was sent to. A queue that is empty (its list gone)
#: and that no live worker consumes is pruned when read (``render_queues``).
QUEUES = "zoomq:queues"
_RENDER = render_queue("")

# KEYS: the queue set, then the queues to check. Drops from the set each queue whose list is gone,
# in one step, so a task pushed (then registered) meanwhile is never lost from it; returns those.
_PRUNE = """
local gone = {}
for i = 2, #KEYS do
    if redis.call('EXISTS', KEYS[i]) == 0 then
        redis.call('SREM', KEYS[1], KEYS[i])
        gone[#gone + 1] = KEYS[i]
    end
end
return gone
"""


def announce(client: redis.Redis, name: str, info: dict, heartbeat: int) -> None:
    payload = {**info, "name": name, "host": socket.gethostname(), "pid": os.getpid(), "seen": time.time()}
    queues = [q for q in info.get("queues", []) if q.startswith(_RENDER)]
    with client.pipeline() as p:
        p.set(PREFIX + name, json.dumps(payload), ex=3 * heartbeat)
        p.sadd(NAMES, name)
        if queues:  # kept after the worker goes, while tasks wait in them
            p.sadd(QUEUES, *queues)
        p.execute()


def note_queue(client: redis.Redis, queue: str) -> None:
    """Register a queue a task was just sent to (after the send: see ``_PRUNE``), so the queue stays
    visible while its tasks wait, even when no live worker consumes it."""
    if queue.startswith(_RENDER):
        client.sadd(QUEUES, queue)


def render_queues(client: redis.Redis, consumed: set[str]) -> set[str]:
    """The registered render queues that exist: those ``consumed`` by live workers, and those holding
    tasks. The others (empty, nobody consuming them) are pruned from the set here."""
    known = {connection.text(q) for q in client.smembers(QUEUES)}
    idle = sorted(known - consumed)
    if not idle:
        return known
    gone = client.eval(_PRUNE, 1 + len(idle), QUEUES, *idle)
    return known - {connection.text(q) for q in gone}


def withdraw(client: redis.Redis, name: str) -> None:
    with client.pipeline() as p:
        p.delete(PREFIX + name)
        p.srem(NAMES, name)
        p.execute()


def live_workers(client: redis.Redis) -> list[dict]:
    """Workers whose heartbeat key is alive. Read through the set of names, not a SCAN: status
    reads (every web page polls once a second) must not walk a keyspace full of artifacts."""
    names = sorted(connection.text(n) for n in client.smembers(NAMES))
    if not names:
        return []
    values = client.mget([PREFIX + n for n in names])
    lost = [n for n, raw in zip(names, values) if raw is None]
    if lost:
        client.srem(NAMES, *lost)
    return [json.loads(raw) for raw in values if raw is not None]


def served_models(workers: list[dict]) -> dict[str, dict]:
    """Model name → its description, over all live workers."""
    models: dict[str, dict] = {}
    for worker in workers:
        for name, info in worker.get("models", {}).items():
            models.setdefault(name, info)
    return models
