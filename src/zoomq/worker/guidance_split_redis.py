"""The guidance split over Redis: an idle worker runs the unconditional half of a render's guided steps.

How it goes (``render.guidance_split`` has the render's side):
1. A guided image or keyframe starts. If a live worker serving the model is idle (a process to
   spare, nothing waiting in the render queues of its models), the leader posts an offer
   (``zoomq:split:<sid>:offer``) and sends the small task ``zoomq.split`` to ``split.<model>``,
   a queue every worker of that model consumes. An idle worker process takes it at once (prefetch 1);
   a busy one takes it late, finds the offer claimed or withdrawn, and drops it.
2. Claiming is race-free: the helper sets ``zoomq:split:<sid>:claim`` to its name with SET NX; a
   leader that has heard nothing within ``claim_window`` (1 s) sets it to ``-`` the same way and
   goes on alone. Whoever sets it first wins.
3. Each guided call the leader pushes the unconditional model input onto ``…:ask`` (the
   unconditional embeddings once), runs its conditional half, and pops the helper's prediction
   from ``…:answer`` (BLPOP). The leader keeps the scheduler, so the two cannot diverge.
4. The leader pushes ``stop`` when its denoising loop ends (before decoding), when the render
   is cancelled, or when it goes on alone. A helper that hears nothing from its leader for its
   patience, sees the job cancelled, or sees work waiting in its own render queues (throughput
   first) stops, in the last case saying so (``leave``), so the leader goes on alone at once
   instead of waiting.
Messages are a JSON header and raw float32 arrays, never pickles: 64 KiB a way per step at 512 px
(the 9-channel inpainting input: 144 KiB towards the helper).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import redis

from zoomq import logs
from zoomq.config import Settings
from zoomq.errors import LinkLost, RenderCancelled
from zoomq.queue import registry
from zoomq.queue.celery_app import TASK_SPLIT, render_queue, split_queue
from zoomq.queue.job_records import CANCELLED
from zoomq.render.guidance_split import Patience, SplitUNet

if TYPE_CHECKING:
    import torch

    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest
    from zoomq.render.unet_call import UNetCall, WrapUNet
    from zoomq.worker.pieces import Context

log = logging.getLogger(__name__)

PREFIX = "zoomq:split:"
#: Helps under way: members ``worker|sid``, scored by when they lapse unless refreshed.
HELPING = PREFIX + "helping"
#: Every key of a split expires after this long, whatever happens to its two workers.
KEY_TTL = 3600
CLAIM_WINDOW = 1.0  # seconds a leader waits for a helper to claim its offer
_NOBODY = "-"  # the claim a leader sets when it withdraws its offer
_PATIENCE = Patience()  # a leader's waits when none are given (workers give ``patience(settings)``)


def _key(sid: str, what: str) -> str:
    return f"{PREFIX}{sid}:{what}"


def patience(s: Settings) -> Patience:
    """Production waits scaled from the worker's liveness settings: twice the heartbeat beyond a
    step's own time (10 s by default), the stale time for the first call (45 s), which may
    include the helper compiling the half-batch UNet."""
    return Patience(floor=2.0 * s.heartbeat, first=float(s.stale_after), factor=3.0)


# -- messages -------------------------------------------------------------------------------

def pack(header: dict, **arrays: np.ndarray | None) -> bytes:
    """A JSON header (with each array's dtype and shape) and the arrays' raw bytes; None arrays are left out."""
    given = {k: np.ascontiguousarray(v) for k, v in arrays.items() if v is not None}
    meta = {**header, "arrays": [[k, v.dtype.str, list(v.shape)] for k, v in given.items()]}
    head = json.dumps(meta).encode()
    return len(head).to_bytes(4, "big") + head + b"".join(v.tobytes() for v in given.values())


def unpack(data: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    size = int.from_bytes(data[:4], "big")
    header = json.loads(data[4:4 + size])
    arrays, at = {}, 4 + size
    for name, dtype, shape in header.pop("arrays", []):
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dt, count, at).reshape(shape).copy()
        at += count * dt.itemsize
    return header, arrays


def _push(client: redis.Redis, key: str, message: bytes) -> None:
    with client.pipeline() as p:
        p.rpush(key, message)
        p.expire(key, KEY_TTL)
        p.execute()


def _pop(client: redis.Redis, key: str, seconds: float) -> bytes | None:
    """BLPOP for at most ``seconds`` (never 0, which would block forever)."""
    got = client.blpop([key], timeout=max(0.01, seconds))
    if got is None:
        return None
    data = got[1]
    return data if isinstance(data, bytes) else data.encode()


def _text(value: object) -> str:
    """A Redis reply as text: zoomq's clients answer bytes (their types allow text too)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, str):
        return value
    raise TypeError(f"Redis answered {value!r} where text was expected")


# -- who may help ---------------------------------------------------------------------------

def helping(client: redis.Redis) -> Counter:
    """Worker name → helps it runs now."""
    now = time.time()
    client.zremrangebyscore(HELPING, "-inf", now)
    return Counter(_text(m).split("|", 1)[0] for m in client.zrangebyscore(HELPING, now, "+inf"))


def idle_helpers(client: redis.Redis, model: str) -> list[str]:
    """Live workers that could help a render of ``model`` now: they consume ``split.<model>``,
    have a slot to spare (their processes x slots less their running pieces and helps), and nothing
    waits in the render queue of any model they serve (they will take that first: throughput)."""
    from zoomq.worker.lease import RUNNING_PIECES

    queue = split_queue(model)
    candidates = [w for w in registry.live_workers(client) if queue in w.get("queues", [])]
    if not candidates:
        return []
    busy = Counter(json.loads(raw).get("worker") for raw in client.hvals(RUNNING_PIECES))
    busy.update(helping(client))
    waiting_in = sorted({render_queue(m) for w in candidates for m in w.get("models", {})})
    with client.pipeline(transaction=False) as p:
        for q in waiting_in:
            p.llen(q)
        waiting = dict(zip(waiting_in, p.execute()))
    return [w["name"] for w in candidates
            if max(1, int(w.get("concurrency") or 1)) * max(1, int(w.get("slots") or 1)) > busy[w["name"]]
            and not any(waiting[render_queue(m)] for m in w.get("models", {}))]


def unet_options(params: dict) -> dict:
    """The request's scalar fields, for the helper to build the same kind of UNetCall
    (``Renderer.unet_call``) for its half: a feature cache then sees the same call indices."""
    from zoomq.render.request import RenderRequest

    names = {f.name for f in fields(RenderRequest)} - {"init_image", "mask"}
    return {k: v for k, v in params.items() if k in names and isinstance(v, (str, int, float, bool, type(None)))}


def _request(options: dict):
    from zoomq.render.request import RenderRequest

    return RenderRequest(**{"prompt": "", **unet_options(options)})


# -- the leader -----------------------------------------------------------------------------

@dataclass
class Outcome:
    """How a piece's split went: who helped, and whether the leader finished alone."""

    helper: str | None = None
    alone_from: int | None = None
    reason: str = ""
    split_calls: int = 0
    exchange_seconds: float = 0.0
    own_seconds: float = 0.0


class Leader:
    """A render's offer of its unconditional halves, and then its ``Link`` to the helper."""

    def __init__(self, client: redis.Redis, sid: str, patience: Patience = _PATIENCE,
                 claim_window: float = CLAIM_WINDOW, on_claim=None, on_alone=None):
        self.r, self.sid, self.patience = client, sid, patience
        self.claim_window = claim_window
        self.offered = time.monotonic()
        self.on_claim, self.on_alone = on_claim, on_alone
        self.helper: str | None = None
        self.closed = False
        self.split: SplitUNet | None = None

    @classmethod
    def offer(cls, client: redis.Redis, send, model: str, about: dict, **options) -> Leader:
        """Post an offer for ``model`` (``about``: the job, piece, leader and UNet options the
        helper needs) and send the task that lets an idle worker claim it."""
        sid = uuid.uuid4().hex
        client.set(_key(sid, "offer"), json.dumps({**about, "model": model}), ex=KEY_TTL)
        send(TASK_SPLIT, [sid], split_queue(model))
        return cls(client, sid, **options)

    def wrap(self, inner: UNetCall) -> SplitUNet:
        """The ``WrapUNet`` for ``Renderer.render``."""
        self.split = SplitUNet(inner, self, self.patience, self._alone)
        return self.split

    def __call__(self, inner: UNetCall) -> SplitUNet:
        return self.wrap(inner)

    def _alone(self, call: int, reason: str) -> None:
        if self.on_alone is not None and self.helper is not None:
            self.on_alone(self.helper, call, reason)

    def _await_claim(self) -> str:
        """The helper's name, once it has claimed; ``LinkLost`` when none did within the window
        (the offer is then withdrawn, atomically against a late claim)."""
        claim = _key(self.sid, "claim")
        while True:
            left = self.offered + self.claim_window - time.monotonic()
            name = self.r.get(claim)
            if name is not None or left <= 0:
                break
            # The helper pushes a hello as it claims: wait for it rather than poll.
            if _pop(self.r, _key(self.sid, "answer"), min(left, 0.25)) is not None:
                continue
        if name is None and self.r.set(claim, _NOBODY, nx=True, ex=KEY_TTL):
            self.closed = True
            raise LinkLost(f"no helper claimed the offer within {self.claim_window:g} s")
        name = _text(name if name is not None else self.r.get(claim))
        if name == _NOBODY:
            self.closed = True
            raise LinkLost("the offer was withdrawn")
        self.helper = name
        if self.on_claim is not None:
            self.on_claim(name)
        return name

    # -- Link -----------------------------------------------------------------------------

    def ask(self, call: int, t: torch.Tensor, sample: np.ndarray, embeds: np.ndarray | None,
            timesteps: np.ndarray | None = None) -> None:
        if self.closed:
            raise LinkLost("the split has ended")
        if self.helper is None:
            self._await_claim()
        header = {"kind": "step", "call": call, "t": t.item(), "t_dtype": str(t.dtype).replace("torch.", "")}
        try:
            _push(self.r, _key(self.sid, "ask"), pack(header, sample=sample, embeds=embeds, timesteps=timesteps))
        except redis.RedisError as e:
            raise LinkLost(f"Redis failed: {e}") from None

    def answer(self, call: int, timeout: float) -> np.ndarray:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LinkLost(f"the helper {self.helper} sent nothing for {timeout:.1f} s")
            try:
                data = _pop(self.r, _key(self.sid, "answer"), min(left, 1.0))
            except redis.RedisError as e:
                raise LinkLost(f"Redis failed: {e}") from None
            if data is None:
                continue
            header, arrays = unpack(data)
            if header["kind"] == "leave":
                raise LinkLost(f"the helper {self.helper} left: {header.get('reason', '')}")
            if header["kind"] == "pred" and header["call"] == call:
                return arrays["noise"]
            # a hello, or an answer to a call already given up on: skip it

    def close(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.helper is None and self.r.set(_key(self.sid, "claim"), _NOBODY, nx=True, ex=KEY_TTL):
                return  # withdrawn before anyone claimed it
            _push(self.r, _key(self.sid, "ask"), pack({"kind": "stop", "reason": reason}))
        except redis.RedisError as e:
            log.warning("could not tell the helper of split %s to stop: %s", self.sid, e)

    def outcome(self) -> Outcome:
        r = self.split.record if self.split is not None else None
        if r is None:
            return Outcome(helper=self.helper)
        return Outcome(helper=self.helper, alone_from=r.alone_from if self.helper else None,
                       reason=r.reason if self.helper else "", split_calls=r.split_calls,
                       exchange_seconds=r.exchange_seconds, own_seconds=r.own_seconds)


def wants_split(ctx: Context, model: str, options: dict) -> bool:
    """Whether this worker leads splits and the render is guided."""
    guidance = options.get("guidance")
    if guidance is None:
        guidance = ctx.models.get(model, {}).get("defaults", {}).get("guidance", 0)
    return ctx.settings.guidance_split and float(guidance) > 1.0


def _offer(ctx: Context, job_id: str, piece: str, model: str, options: dict) -> Leader | None:
    """The offer of a render's unconditional halves when a worker is idle to take it, its claim and
    early end recorded in the job's record; None when none is idle or Redis fails (a split is never
    worth failing a render for)."""
    try:
        if not idle_helpers(ctx.redis, model):
            return None
        about = {"job": job_id, "piece": piece, "leader": ctx.worker, "options": unet_options(options),
                 "patience": vars(patience(ctx.settings))}

        def claimed(helper: str) -> None:
            logs.event(log, "split started", job=job_id, piece=piece, worker=ctx.worker, helper=helper)
            ctx.jobs.update(job_id, split_with=helper, split_piece=piece, split_note="")

        def alone(helper: str, call: int, reason: str) -> None:
            logs.event(log, "split ended early", job=job_id, piece=piece, worker=ctx.worker,
                       helper=helper, call=call, reason=reason)
            ctx.jobs.update(job_id, split_note=f"{piece}: from UNet call {call + 1} alone ({reason})")

        return Leader.offer(ctx.redis, ctx.send, model, about, patience=patience(ctx.settings),
                            on_claim=claimed, on_alone=alone)
    except redis.RedisError as e:
        log.warning("no guidance split for %s of job %s: %s", piece, job_id, e)
        return None


@contextmanager
def leading(ctx: Context, job_id: str, piece: str, model: str, options: dict) -> Iterator[WrapUNet | None]:
    """Around one render: the ``wrap_unet`` that shares its guided calls with an idle worker, or
    None (split off, unguided, or no worker idle). Records the split in the job's record."""
    leader = _offer(ctx, job_id, piece, model, options) if wants_split(ctx, model, options) else None
    if leader is None:
        yield None
        return
    reason = "render ended"
    try:
        yield leader
    except BaseException as e:
        reason = "render cancelled" if isinstance(e, RenderCancelled) else f"render stopped: {type(e).__name__}"
        raise
    finally:
        leader.close(reason)
        done = leader.outcome()
        if done.helper:
            logs.event(log, "split finished", job=job_id, piece=piece, worker=ctx.worker, helper=done.helper,
                       split_calls=done.split_calls, exchange_seconds=round(done.exchange_seconds, 3),
                       own_seconds=round(done.own_seconds, 3))


# -- the helper -----------------------------------------------------------------------------

def _leave_reason(ctx: Context, offer: dict, models_queues: list[str]) -> str | None:
    """Why a helper should stop now, between calls: the job cancelled, or work waiting for it."""
    if ctx.jobs.state(offer["job"]) == CANCELLED:
        return "job cancelled"
    with ctx.redis.pipeline(transaction=False) as p:
        for q in models_queues:
            p.llen(q)
        if any(p.execute()):
            return "work is waiting in its render queue"
    return None


def _dropped(sid: str, reason: str) -> dict:
    log.info("split offer %s dropped: %s", sid, reason)
    return {"helped": 0, "ended": reason}


def _claim(ctx: Context, sid: str) -> tuple[dict | None, str]:
    """The offer of split ``sid``, claimed by this worker (SET NX: race-free), or None and why not."""
    raw = ctx.redis.get(_key(sid, "offer"))
    if raw is None:
        return None, "no such offer"
    offer = json.loads(raw)
    if offer["model"] not in ctx.models:
        return None, f"model {offer['model']} not served here"
    if not ctx.redis.set(_key(sid, "claim"), ctx.worker, nx=True, ex=KEY_TTL):
        return None, "offer taken or withdrawn"
    return offer, ""


class _Helper:
    """A claimed split from the helper's side: it waits for its leader's calls, runs their
    unconditional halves and replies, until the leader stops, falls silent or it must leave."""

    def __init__(self, ctx: Context, sid: str, offer: dict):
        self.ctx, self.r, self.sid, self.offer = ctx, ctx.redis, sid, offer
        self.wait = Patience(**offer.get("patience", {}))
        self.member = f"{ctx.worker}|{sid}"
        self.queues = sorted({render_queue(m) for m in ctx.models})
        self.helped, self.own = 0, 0.0  # calls answered; the last one's own seconds
        self.unet: UNetCall | None = None
        self.embeds: np.ndarray | None = None

    def run(self) -> dict:
        """Help until the split ends; returns what happened (``helped``: calls run, ``ended``: why it stopped)."""
        self.r.zadd(HELPING, {self.member: time.time() + self.wait.first + 5})
        _push(self.r, _key(self.sid, "answer"), pack({"kind": "hello", "worker": self.ctx.worker}))
        logs.event(log, "split helping", job=self.offer["job"], piece=self.offer["piece"], worker=self.ctx.worker,
                   leader=self.offer.get("leader"))
        ended = ""
        try:
            ended = self._serve()
            if ended.startswith(("work is waiting", "job cancelled")):
                self._leave(ended)
        except Exception as e:  # the leader goes on alone at once rather than after its patience
            ended = f"failed: {type(e).__name__}: {e}"
            try:
                self._leave(ended)
            except redis.RedisError:
                pass
            raise
        finally:
            self.r.zrem(HELPING, self.member)
            logs.event(log, "split help ended", job=self.offer["job"], piece=self.offer["piece"],
                       worker=self.ctx.worker, calls=self.helped, reason=ended or "failed")
        return {"helped": self.helped, "ended": ended}

    def _leave(self, reason: str) -> None:
        _push(self.r, _key(self.sid, "answer"), pack({"kind": "leave", "reason": reason}))

    def _serve(self) -> str:
        """Answer the leader's calls until the split ends; returns why it ended."""
        renderer = self.ctx.renderer(self.offer["model"])
        request = _request(self.offer.get("options", {}))
        while True:
            data, ended = self._next_call()
            if data is None:
                return ended
            header, arrays = unpack(data)
            if header["kind"] == "stop":
                return f"the leader stopped it: {header.get('reason', '')}"
            self._reply(header["call"], self._compute(renderer, request, header, arrays))
            leave = _leave_reason(self.ctx, self.offer, self.queues)
            if leave:
                return leave

    def _next_call(self) -> tuple[bytes | None, str]:
        """The leader's next message; or None and why the helper stops waiting: the leader silent for
        its patience, or (asked every second) the job cancelled or work waiting in its queues."""
        limit = self.wait.wait(self.own, self.helped == 0)
        deadline = time.monotonic() + limit
        while (left := deadline - time.monotonic()) > 0:
            data = _pop(self.r, _key(self.sid, "ask"), min(left, 1.0))
            if data is not None:
                return data, ""
            leave = _leave_reason(self.ctx, self.offer, self.queues)
            if leave:
                return None, leave
        return None, f"the leader sent nothing for {limit:.1f} s"

    def _compute(self, renderer: Renderer, request: RenderRequest, header: dict,
                 arrays: dict[str, np.ndarray]) -> torch.Tensor:
        """The unconditional half of the leader's call, by the same kind of UNetCall as the leader's
        (made on the first call), counting calls as it does."""
        import torch

        self.embeds = arrays.get("embeds", self.embeds)
        if self.embeds is None:
            raise ValueError(f"split {self.sid}: the leader's call {header['call']} came without embeddings")
        if self.unet is None:
            self.unet = renderer.unet_call(request, arrays.get("timesteps"))
        began = time.perf_counter()
        t = torch.tensor(header["t"], dtype=getattr(torch, header.get("t_dtype", "float32")))
        noise = self.unet(torch.from_numpy(arrays["sample"]), t, self.embeds, header["call"])
        self.own = time.perf_counter() - began
        return noise

    def _reply(self, call: int, noise: torch.Tensor) -> None:
        """Send the prediction and stretch this help's lease in ``HELPING`` by the next wait."""
        with self.r.pipeline() as p:
            p.rpush(_key(self.sid, "answer"), pack({"kind": "pred", "call": call}, noise=noise.numpy()))
            p.expire(_key(self.sid, "answer"), KEY_TTL)
            p.zadd(HELPING, {self.member: time.time() + self.wait.wait(self.own, False) + 5})
            p.execute()
        self.helped += 1


def help_render(ctx: Context, sid: str) -> dict:
    """Claim split ``sid`` and run its unconditional halves until its leader stops (or vanishes);
    returns what happened (``helped``: calls run, ``ended``: why it stopped)."""
    offer, refused = _claim(ctx, sid)
    if offer is None:
        return _dropped(sid, refused)
    return _Helper(ctx, sid, offer).run()
