"""The data lifecycle: how long a job's artifacts and uploads are kept, and how they go.

- A job's record shows ``expires_at``: ``ZOOMQ_JOB_TTL`` after it ended (null while it has not).
- ``purge``: cancel the job if it has not ended, stop its running pieces from storing anything
  more, delete every artifact and upload of it, and mark the record purged (its artifacts then
  answer 410). The deletion is repeated ``RECHECK_SECONDS`` later by the sweep, for a piece that
  was storing its result at the very moment of the purge.
- ``drop_uploads``: a cancelled job's uploads (init image, mask) go at once; its other artifacts
  stay readable until the record expires.
- ``sweep``: ended jobs whose record expired lose their artifacts, record and index entries, and
  so do jobs whose record was lost otherwise (a bounded slice of the job index a sweep, ``Jobs.lost``):
  Redis keeps nothing for a job that is gone. A worker's main process runs it every
  ``ZOOMQ_SWEEP_INTERVAL`` seconds (``sweep_if_due``), one worker at a time.

"Every store": the one ``ZOOMQ_ARTIFACTS`` names and, when that is not Redis, the Redis store too
(the default one, where a deployment that moved to a folder or S3 kept its earlier artifacts; its
per-job index makes that a few Redis commands). ``stores`` builds that list.
"""

from __future__ import annotations

import logging
import time

import redis

from zoomq.config import Settings
from zoomq.errors import ZoomqError
from zoomq.queue.connection import text
from zoomq.queue.job_records import ENDED, Jobs
from zoomq.storage import ArtifactStore, RedisStore, open_store
from zoomq.worker.lease import RUNNING_PIECES, lease_key, running_field

log = logging.getLogger("zoomq.retention")

#: The uploads a job starts from (``Producer._put_image``), deleted as soon as the job is cancelled.
UPLOADS = ("init.png", "mask.png")
#: Seconds after a purge when the sweep deletes the job's artifacts once more.
RECHECK_SECONDS = 60.0
#: Jobs one sweep handles at most; the rest wait for the next.
SWEEP_BATCH = 200
SWEEP_LOCK = "zoomq:lock:retention-sweep"


def stores(settings: Settings, client: redis.Redis, configured: ArtifactStore | None = None) -> list[ArtifactStore]:
    """Every store a job's artifacts may be in: the configured one (``configured``, or opened
    here), and the Redis store if that is another (artifacts written before a switch of
    ``ZOOMQ_ARTIFACTS``)."""
    configured = configured if configured is not None else open_store(settings, client)
    if isinstance(configured, RedisStore):
        return [configured]
    return [configured, RedisStore(client, settings.artifact_ttl)]


def drop_uploads(job_id: str, where: list[ArtifactStore]) -> None:
    """Delete the job's uploads (init image, mask) from every store."""
    for store in where:
        for name in UPLOADS:
            store.delete(f"{job_id}/{name}")


def stop_pieces(client: redis.Redis, jobs: Jobs, job_id: str) -> None:
    """Take away the leases of the job's pieces: a piece still running checks its lease before it
    stores its result (``Lease.check``) and drops it. The pieces are those the record lists (no
    SCAN); their running entries go too, so the watchdog does not send them again."""
    pieces = list(jobs.pieces(job_id))
    if not pieces:
        return
    with client.pipeline() as p:
        p.delete(*(lease_key(job_id, piece) for piece in pieces))
        p.hdel(RUNNING_PIECES, *(running_field(job_id, piece) for piece in pieces))
        p.execute()


def purge(client: redis.Redis, jobs: Jobs, job_id: str, where: list[ArtifactStore]) -> dict:
    """Cancel the job if it runs, delete every artifact and upload of it from every store, and mark
    its record purged. Returns ``{"id", "state", "cancelled", "purged"}``. The caller has checked
    that the id exists and that the asker may act on it."""
    cancelled = jobs.cancel(job_id)
    stop_pieces(client, jobs, job_id)
    for store in where:
        store.delete_job(job_id)
    jobs.mark_purged(job_id, RECHECK_SECONDS)
    record = jobs.get(job_id)
    log.info("job %s purged%s", job_id, " (cancelled)" if cancelled else "")
    return {"id": job_id, "state": record["state"] if record else None, "cancelled": cancelled,
            "purged": record.get("purged") if record else None}


def sweep(jobs: Jobs, where: list[ArtifactStore], now: float | None = None, batch: int = SWEEP_BATCH) -> list[str]:
    """Delete the artifacts, records and index entries of ended jobs whose record has expired and of
    up to ``batch`` jobs whose record was lost, and the artifacts once more of jobs purged
    ``RECHECK_SECONDS`` ago. Returns the ids of the jobs removed. A job whose deletion fails (a store
    unreachable) stays due and is tried again next time."""
    now = time.time() if now is None else now
    r = jobs.r
    expired = [text(raw) for raw in r.zrangebyscore(jobs.EXPIRY_SET, "-inf", now, start=0, num=batch)]
    due = []
    for job_id in expired:
        state = jobs.state(job_id)
        if state is not None and state not in ENDED:  # not ended after all (a record written by hand)
            r.zrem(jobs.EXPIRY_SET, job_id)
        else:
            due.append(job_id)
    done = []
    for job_id in due + jobs.lost(batch):
        if _delete(job_id, where):
            jobs.remove(job_id)
            done.append(job_id)
    rechecks = [text(raw) for raw in r.zrangebyscore(jobs.RECHECK_SET, "-inf", now, start=0, num=batch)]
    for job_id in rechecks:
        if _delete(job_id, where):
            r.zrem(jobs.RECHECK_SET, job_id)
    return done


def _delete(job_id: str, where: list[ArtifactStore]) -> bool:
    """Delete the job's artifacts from every store; False (logged) when a store refused."""
    try:
        for store in where:
            store.delete_job(job_id)
    except ZoomqError as e:
        log.warning("retention sweep: the artifacts of job %s stay until the next sweep: %s", job_id, e)
        return False
    return True


def sweep_if_due(jobs: Jobs, where: list[ArtifactStore], holder: str, every: float) -> list[str] | None:
    """Run ``sweep`` if no worker has in the last ``every`` seconds (a Redis lock, SET NX PX, that
    is left to lapse rather than released: the cluster sweeps at most once per ``every``). None
    when another worker holds the lock."""
    if not jobs.r.set(SWEEP_LOCK, holder, nx=True, px=int(every * 1000)):
        return None
    expired = sweep(jobs, where)
    if expired:
        log.info("retention sweep: deleted %d expired job(s) and their artifacts", len(expired))
    return expired
