"""A worker's lease on one piece of a job: only its holder writes the piece's results, and a piece
whose holder stops renewing it (a lost worker) can be handed to another."""

from __future__ import annotations

import json

import redis

from zoomq.errors import LeaseLost, PieceBusy

#: Every piece under way: ``job id|piece`` → its task, arguments, queue and worker (JSON), so a
#: lost worker's pieces can be sent again (``watchdog``, ``recovery``).
RUNNING_PIECES = "zoomq:running"


class Lease:
    """A worker's claim on a piece. ``check()`` before writing results: only the holder writes."""

    # Release only a lease that is still ours, and only then the piece's running entry (the next
    # holder's entry has the same field) — or, once the piece is done, a lease that lapsed with no
    # one taking it (a heartbeat late on a loaded node): its entry would be sent again until the job ends.
    _RELEASE = """
    local holder = redis.call('GET', KEYS[1])
    if holder == ARGV[1] or (ARGV[3] == '1' and not holder) then
        redis.call('DEL', KEYS[1])
        redis.call('HDEL', KEYS[2], ARGV[2])
        return 1
    end
    return 0
    """

    def __init__(self, client: redis.Redis, job_id: str, piece: str, holder: str):
        self.client, self.job_id, self.piece, self.holder = client, job_id, piece, holder
        self.key = lease_key(job_id, piece)

    @classmethod
    def claim(cls, client: redis.Redis, job_id: str, piece: str, holder: str, ttl: int, entry: dict) -> Lease:
        """Take the piece's lease for ``ttl`` seconds and record it as running with ``entry``;
        ``PieceBusy`` when another live worker holds it."""
        lease = cls(client, job_id, piece, holder)
        if not client.set(lease.key, holder, nx=True, ex=ttl):
            raise PieceBusy(f"{piece} of job {job_id} is being rendered elsewhere")
        client.hset(RUNNING_PIECES, running_field(job_id, piece), json.dumps(entry))
        return lease

    def held(self) -> bool:
        return self.client.get(self.key) == self.holder.encode()

    def check(self) -> None:
        if not self.held():
            raise LeaseLost(f"{self.piece} of job {self.job_id} was handed to another worker; this result is dropped")

    def release(self, done: bool = False) -> bool:
        """Give the piece up; ``done``: its result is written, so a lapsed lease goes too."""
        return bool(self.client.eval(self._RELEASE, 2, self.key, RUNNING_PIECES, self.holder,
                                     running_field(self.job_id, self.piece), int(done)))


def lease_key(job_id: str, piece: str) -> str:
    return f"zoomq:lease:{job_id}:{piece}"


def running_field(job_id: str, piece: str) -> str:
    return f"{job_id}|{piece}"
