"""Job records in Redis: one hash per job with its state, stage, progress, queue position, ETA,
error and result — what ``zoomq status``, the API and the web page show.

A job is ``queued`` until its first piece starts, ``running`` until it is ``done``, ``failed`` or
``cancelled``. Progress is counted in work units (denoising steps of keyframes and images, plus
video frames), each running piece reporting its own units, so pieces running side by side on
different workers add up without double counting. Ended records expire after ``ZOOMQ_JOB_TTL``:
each record shows when (``expires_at``), and ended jobs are indexed by that time (``EXPIRY_SET``)
so the retention sweep (``producer.retention``) deletes their artifacts without walking the keyspace.

Every read a request makes costs the same at any job count: a submitter's unfinished jobs are
counted by the size of their index (ZCARD), kept exact at each transition to an ended state; a
record lost otherwise (deleted by hand, evicted) leaves index entries that ``lost`` finds, a bounded
batch per sweep, through the job's owner and submitter kept in ``WHO``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

import redis

from zoomq.errors import InvalidParameter
from zoomq.queue import stats, usage
from zoomq.queue.connection import text
from zoomq.webhooks import outbox, payload

log = logging.getLogger("zoomq.jobs")
QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ENDED = (DONE, FAILED, CANCELLED)
_EMA = 0.3  # weight of the newest measurement in the per-unit time averages


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(job_id: str) -> str:
    try:
        return str(uuid.UUID(str(job_id)))
    except ValueError:
        raise InvalidParameter("job_id", job_id, "is not a job id (a UUID)") from None


def _key(job_id: str) -> str:
    return f"zoomq:job:{job_id}"


#: The artifact holding a running job's newest live preview (``render.preview``).
PREVIEW_NAME = "preview.png"
#: Seconds a look at a job (its preview, its page) keeps its worker making previews.
WATCHED_SECONDS = 10


def watched_key(job_id: str) -> str:
    """Present while someone watches the job: the web sets it (``EX WATCHED_SECONDS``) whenever the
    preview or the job's page is fetched; a worker decodes previews only while it exists."""
    return f"{_key(job_id)}:watched"


class Jobs:
    """Reads and writes job records; every write is a single Redis command or transaction."""

    QUEUED_SET = "zoomq:queued"  # job ids by submit time: the queue position
    RUNNING_SET = "zoomq:running-jobs"  # job ids under way, by start time
    ALL_SET = "zoomq:jobs"  # every job id by submit time
    EXPIRY_SET = "zoomq:expiring"  # ended job ids by the time their record expires (finished + ttl)
    ENDED_OWNERS = "zoomq:ended-owners"  # ended job id -> its owner: only records from before WHO was kept
    WHO = "zoomq:job-who"  # job id -> [owner, submitter] (JSON): its index entries, once the record is gone
    AUDIT_AT = "zoomq:audit-at"  # where in ALL_SET (a rank) the next search for lost records starts
    RECHECK_SET = "zoomq:purged-recheck"  # purged job ids by when their artifacts are deleted once more

    @staticmethod
    def owned_set(owner: str) -> str:
        """Job ids of one API key, by submit time: what that key lists."""
        return f"zoomq:jobs:owner:{owner}"

    @staticmethod
    def unfinished_set(submitter: str) -> str:
        """Job ids of one submitter (a key, or an address) that have not ended: its queue cap."""
        return f"zoomq:unfinished:{submitter}"

    def __init__(self, client: redis.Redis, ttl: int):
        self.r = client
        self.ttl = ttl
        self._set_live = client.register_script(self._WHILE_LIVE)  # EVALSHA: progress runs every step

    # -- writing ---------------------------------------------------------------------------

    def create(self, job_id: str, kind: str, model: str, params: dict, work_total: int, *,
               owner: str | None = None, submitter: str | None = None, **extra) -> None:
        """Record a new queued job; ``owner`` is the API key that may see it (None: anyone),
        ``submitter`` who its queue cap counts against (a key or an address; None: nobody)."""
        with self.r.pipeline() as p:
            self.add_create(p, job_id, kind, model, params, work_total, owner=owner, submitter=submitter, **extra)
            p.execute()

    def add_create(self, p: redis.client.Pipeline, job_id: str, kind: str, model: str, params: dict,
                   work_total: int, *, owner: str | None = None, submitter: str | None = None, **extra) -> None:
        """Queue ``create``'s commands on the transaction ``p``, so the producer sends the record, its
        indexes and the piece's lane entry in one round trip."""
        now = time.time()
        record = {
            "id": job_id, "kind": kind, "model": model, "params": json.dumps(params), "state": QUEUED,
            "stage": "queued", "created": now, "updated": now, "work_total": work_total, **extra,
            **({"owner": owner} if owner is not None else {}),
            **({"submitter": submitter} if submitter is not None else {}),
        }
        p.hset(_key(job_id), mapping={k: _enc(v) for k, v in record.items()})
        p.zadd(self.QUEUED_SET, {job_id: now})
        p.zadd(self.ALL_SET, {job_id: now})
        if owner is not None:
            p.zadd(self.owned_set(owner), {job_id: now})
        if submitter is not None:
            p.zadd(self.unfinished_set(submitter), {job_id: now})
        if owner is not None or submitter is not None:
            p.hset(self.WHO, job_id, json.dumps([owner, submitter]))
        stats.count_submitted(p, kind)
        usage.count_job(p, owner)

    # HSET only while the job has not ended: a worker cut off from Redis that comes back late must
    # not change a finished record (nor recreate an expired one). KEYS: record[, work hash];
    # ARGV: the work hash's field and value (or two empty strings), then the record's fields.
    _WHILE_LIVE = f"""
    local state = redis.call('HGET', KEYS[1], 'state')
    if not state or {" or ".join(f"state == '{s}'" for s in ENDED)} then return 0 end
    if ARGV[1] ~= '' then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
    redis.call('HSET', KEYS[1], unpack(ARGV, 3))
    return 1
    """

    def _set_while_live(self, job_id: str, fields: dict, work: tuple[str, int] | None = None) -> bool:
        fields = {**fields, "updated": time.time()}
        flat = [x for k, v in fields.items() for x in (k, _enc(v))]
        piece, units = work or ("", "")
        return bool(self._set_live(keys=[_key(job_id), f"{_key(job_id)}:work"], args=[piece, units, *flat]))

    def update(self, job_id: str, **fields) -> bool:
        """Set fields of a job that has not ended; False (and nothing written) once it has."""
        return self._set_while_live(job_id, fields)

    def start_piece(self, job_id: str, piece: str, worker: str, pid: int, encoding: bool = False) -> None:
        """A piece begins: the job is running (if it was queued) and leaves the queue. Encoding
        pieces report into ``encode_*`` fields, so ``worker``/``piece`` stay the rendering ones.
        Which worker ran each piece, and how often each was started, stay in side hashes."""
        prefix = "encode_" if encoding else ""
        now = time.time()
        with self.r.pipeline() as p:
            p.hsetnx(_key(job_id), "started", now)
            p.zrem(self.QUEUED_SET, job_id)
            p.hset(_key(job_id), mapping={f"{prefix}worker": worker, f"{prefix}worker_pid": pid,
                                          f"{prefix}piece": piece, "heartbeat": now, "updated": now})
            p.hset(f"{_key(job_id)}:pieces", piece, worker)
            p.hincrby(f"{_key(job_id)}:starts", piece, 1)
            p.execute()
        self._transition(job_id, (QUEUED,), RUNNING)

    def progress(self, job_id: str, piece: str, units: int, stage: str | None = None,
                 stage_field: str = "stage") -> None:
        """Units of work ``piece`` has done so far (absolute, so repeats are harmless). Encoding
        reports into ``encode_stage``, so it does not overwrite the keyframe rendered beside it."""
        fields = {"heartbeat": time.time(), **({stage_field: stage} if stage is not None else {})}
        self._set_while_live(job_id, fields, (piece, units))

    def measure(self, job_id: str, what: str, seconds_per_unit: float) -> None:
        """Fold a measured time per step (``what`` = "step") or per frame into the job's average,
        and into its model's cluster-wide rate per megapixel (what dry runs estimate from). Steps
        of a render with DeepCache or split with another worker are left out of the rate: they
        do not cost one whole UNet evaluation per counted one on this worker."""
        field = f"seconds_per_{what}"
        old, model, unet_per_step, megapixels, cached, split_with = self.r.hmget(
            _key(job_id), field, "model", "unet_per_step", "megapixels", "cache_interval", "split_with")
        value = seconds_per_unit if old is None else (1 - _EMA) * float(old) + _EMA * seconds_per_unit
        self._set_while_live(job_id, {field: value})
        plain = what != "step" or (int(cached or 1) <= 1 and not split_with)
        if model and megapixels and float(megapixels) > 0 and plain:
            per_unit = seconds_per_unit / (float(unet_per_step or 1) if what == "step" else 1.0)
            stats.observe_rate(self.r, text(model), "unet" if what == "step" else what, per_unit / float(megapixels))

    def finish(self, job_id: str, **fields) -> None:
        total = self.r.hget(_key(job_id), "work_total") or 0
        self._transition(job_id, (QUEUED, RUNNING), DONE, finished=time.time(), stage="done",
                         work_done=int(total), **fields)

    def fail(self, job_id: str, error: str) -> None:
        self._transition(job_id, (QUEUED, RUNNING), FAILED, finished=time.time(), stage="failed", error=error)

    def cancel(self, job_id: str) -> bool:
        """Mark the job cancelled; running pieces see it within one step. False if it had ended."""
        return self._transition(job_id, (QUEUED, RUNNING), CANCELLED, finished=time.time(), stage="cancelled")

    def mark_purged(self, job_id: str, recheck_after: float) -> None:
        """The job's artifacts are deleted (``producer.retention.purge``): its record says when, and
        the sweep deletes them once more ``recheck_after`` seconds from now, in case a piece that
        was storing as the job was purged wrote after the deletion. Only an existing record is
        marked (HSET would otherwise make a record without expiry)."""
        now = time.time()
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(_key(job_id))
                    if not p.exists(_key(job_id)):
                        p.unwatch()
                        return
                    p.multi()
                    p.hset(_key(job_id), mapping={"purged": now, "updated": now})
                    p.zadd(self.RECHECK_SET, {job_id: now + recheck_after})
                    p.execute()
                    return
                except redis.WatchError:
                    continue

    def remove(self, job_id: str) -> None:
        """Delete a job's record, side hashes and every index entry (the sweep, after its artifacts):
        what Redis would expire anyway, now, and the indexes Redis cannot."""
        key = _key(job_id)
        with self.r.pipeline(transaction=False) as p:
            p.hget(self.WHO, job_id)
            p.hget(self.ENDED_OWNERS, job_id)
            p.hmget(key, "owner", "submitter")
            who, ended_owner, (owner, submitter) = p.execute()
        if who is not None:
            owner, submitter = json.loads(who)
        owner = owner if owner is not None else ended_owner
        with self.r.pipeline() as p:
            p.delete(key, *(f"{key}:{side}" for side in ("work", "pieces", "starts", "keyframes", "watched",
                                                        "webhooks")))
            for index in (self.ALL_SET, self.QUEUED_SET, self.RUNNING_SET, self.EXPIRY_SET, self.RECHECK_SET):
                p.zrem(index, job_id)
            if owner is not None:
                p.zrem(self.owned_set(text(owner)), job_id)
            if submitter is not None:
                p.zrem(self.unfinished_set(text(submitter)), job_id)
            p.hdel(self.WHO, job_id)
            p.hdel(self.ENDED_OWNERS, job_id)
            p.execute()

    def lost(self, batch: int) -> list[str]:
        """Up to ``batch`` ids, from where the last call stopped in the index of every job, whose
        record is gone though the job is not due to expire (deleted by hand, evicted): ``remove``
        them (and their artifacts) so they hold no cap, no queue place and no list entry. A full
        pass over N jobs takes N / ``batch`` calls; the index is read a slice at a time."""
        at = int(self.r.get(self.AUDIT_AT) or 0)
        ids = [text(raw) for raw in self.r.zrange(self.ALL_SET, at, at + batch - 1)]
        if not ids:
            self.r.set(self.AUDIT_AT, 0)
            return []
        with self.r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.exists(_key(job_id))
                p.zscore(self.EXPIRY_SET, job_id)  # an ended job: its expiry is the sweep's
            found = p.execute()
        lost = [job_id for job_id, exists, expiring in zip(ids, found[::2], found[1::2])
                if not exists and expiring is None]
        self.r.set(self.AUDIT_AT, at + len(ids) - len(lost))
        return lost

    def _transition(self, job_id: str, from_states: tuple[str, ...], to: str, **fields) -> bool:
        """Move the job to ``to`` only if it is in one of ``from_states`` (atomic, by WATCH); the
        set of running jobs and the ended-jobs counters change in the same transaction."""
        key = _key(job_id)
        with self.r.pipeline() as p:
            while True:
                try:
                    p.watch(key)
                    state, kind, submitter, webhook = p.hmget(key, "state", "kind", "submitter", "webhook")
                    if state is None or text(state) not in from_states:
                        p.unwatch()
                        return False
                    p.multi()
                    changes = {"state": to, "updated": time.time(), **fields}
                    if to in ENDED:
                        changes["expires_at"] = float(fields.get("finished") or changes["updated"]) + self.ttl
                    p.hset(key, mapping={k: _enc(v) for k, v in changes.items()})
                    if to == RUNNING:
                        p.zadd(self.RUNNING_SET, {job_id: time.time()})
                    if to in ENDED:
                        p.zrem(self.QUEUED_SET, job_id)
                        p.zrem(self.RUNNING_SET, job_id)
                        if submitter is not None:
                            p.zrem(self.unfinished_set(text(submitter)), job_id)
                        stats.count_ended(p, text(kind or b"unknown"), to)
                        p.expire(key, self.ttl)
                        p.zadd(self.EXPIRY_SET, {job_id: changes["expires_at"]})
                        for side in ("work", "pieces", "starts", "keyframes"):
                            p.expire(f"{key}:{side}", self.ttl)
                    p.execute()
                    if webhook is not None and to in outbox.EVENTS:
                        self._notify(job_id, text(webhook), outbox.EVENTS[to])
                    return True
                except redis.WatchError:
                    continue

    def _notify(self, job_id: str, url: str, event: str) -> None:
        """A webhook delivery of ``event`` with the job's public record as it is now (``zoomq.webhooks``)."""
        try:
            record = self.get(job_id)
            if record is not None:
                outbox.enqueue(self.r, job_id, url, event, payload.public_record(record))
        except redis.RedisError as e:  # the transition stands; its webhook is lost, and the log says so
            log.warning("job %s: %s webhook not queued: %s", job_id, event, e)

    # -- reading ---------------------------------------------------------------------------

    def state(self, job_id: str) -> str | None:
        value = self.r.hget(_key(job_id), "state")
        return text(value) if value is not None else None

    def get(self, job_id: str) -> dict | None:
        """The record with derived fields: progress, queue position, ETA."""
        return self.get_many([job_id])[0]

    def get_many(self, ids: list[str]) -> list[dict | None]:
        """``get`` of each id (None where expired or unknown), read in one pipelined round trip
        (and one more for the webhook attempts of jobs that have a webhook)."""
        with self.r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hgetall(_key(job_id))
                p.hgetall(f"{_key(job_id)}:work")
                p.zrank(self.QUEUED_SET, job_id)
            found = p.execute()
        records = [self._derived(raw, work, rank) for raw, work, rank in zip(found[::3], found[1::3], found[2::3])]
        hooked = [r for r in records if r is not None and "webhook" in r]
        if hooked:  # their deliveries so far: time, event, status or error, next retry
            with self.r.pipeline(transaction=False) as p:
                for record in hooked:
                    outbox.add_attempts(p, record["id"])
                for record, attempts in zip(hooked, p.execute()):
                    record["webhook_attempts"] = outbox.parse_attempts(attempts)
        return records

    def _derived(self, raw: dict, work_raw: dict, rank: int | None) -> dict | None:
        """A record as read, with progress, queue position and ETA; None when it is gone or expired."""
        if not raw:
            return None
        record = {text(k): _dec(text(k), v) for k, v in raw.items()}
        if record["state"] not in ENDED:
            record["expires_at"] = None  # unfinished: ZOOMQ_JOB_TTL after it ends
        else:  # written when it ended; computed for a record that ended before there was the field
            record.setdefault("expires_at", float(record.get("finished") or record["updated"]) + self.ttl)
            if record["expires_at"] <= time.time():
                return None  # expired: the sweep deletes it (and its artifacts) within a minute
        record["params"] = json.loads(record.get("params") or "{}")
        work = {text(k): int(v) for k, v in work_raw.items()}
        frames_done = sum(v for k, v in work.items() if k.startswith("segment"))
        total = int(record.get("work_total") or 0)
        done = record.get("work_done")
        done = int(done) if done is not None else min(total, sum(work.values()))
        record["work_done"] = done
        record["frames_done"] = frames_done
        record["progress"] = round(done / total, 4) if total else 0.0
        record["queue_position"] = rank + 1 if record["state"] == QUEUED and isinstance(rank, int) else None
        record["eta_seconds"] = self._eta(record, total - done)
        if record["state"] == RUNNING and record.get("encode_stage"):
            record["stage"] = f"{record['stage']}; {record['encode_stage']}"
        return record

    @staticmethod
    def _eta(record: dict, remaining_units: int) -> float | None:
        if record["state"] != RUNNING:
            return None
        per_step = record.get("seconds_per_step")
        if per_step is None:
            return None
        # Units are steps and frames; frames are counted at their own measured rate when known.
        frames_left = max(0, int(record.get("frames_total") or 0) - record["frames_done"])
        per_frame = float(record.get("seconds_per_frame") or 0.0)
        steps_left = max(0, remaining_units - frames_left)
        return round(steps_left * float(per_step) + frames_left * per_frame, 1)

    def recent(self, limit: int = 20, owner: str | None = None) -> list[dict]:
        """The newest ``limit`` jobs (of ``owner`` only, when given), newest first: two round trips
        whatever the count. Ids whose record has expired are skipped, and dropped from an owner's
        index; the index of every job is the sweep's to trim (``lost`` walks it)."""
        index = self.ALL_SET if owner is None else self.owned_set(owner)
        ids = [text(raw) for raw in self.r.zrevrange(index, 0, limit - 1)]
        found = self.get_many(ids) if ids else []
        expired = [job_id for job_id, record in zip(ids, found) if record is None]
        if expired and owner is not None:
            self.r.zrem(index, *expired)
        return [record for record in found if record is not None]

    def unfinished(self, submitter: str) -> int:
        """How many of ``submitter``'s jobs have not ended: the size of its index, one command
        whatever the count. Each transition to an ended state leaves it in the same transaction;
        a record lost otherwise leaves it at the next sweeps (``lost``)."""
        return self.r.zcard(self.unfinished_set(submitter))

    def queued(self) -> int:
        """Jobs waiting for their first piece to start, over the whole cluster."""
        return self.r.zcard(self.QUEUED_SET)

    def pieces(self, job_id: str) -> dict[str, dict]:
        """Piece → {"worker": who ran it last, "starts": how often it was started}."""
        workers = self.r.hgetall(f"{_key(job_id)}:pieces")
        starts = self.r.hgetall(f"{_key(job_id)}:starts")
        return {text(k): {"worker": text(v), "starts": int(starts.get(k, 0))} for k, v in workers.items()}


def _enc(value) -> str | float | int:
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, (str, int, float)) else str(value)


_NUMBERS = {
    "created", "updated", "started", "finished", "heartbeat", "work_total", "work_done", "frames_total",
    "keyframes_total", "keyframes_done", "seconds_per_step", "seconds_per_frame", "worker_pid",
    "encode_worker_pid", "unet_per_step", "megapixels", "preview_step", "cache_interval", "purged",
    "expires_at",
}


_FLOATS = {"seconds_per_step", "seconds_per_frame", "unet_per_step", "megapixels", "expires_at", "purged"}


def _dec(field: str, raw: bytes | str):
    value = text(raw)
    if field in _NUMBERS:
        number = float(value)
        return int(number) if number.is_integer() and field not in _FLOATS else number
    return value
