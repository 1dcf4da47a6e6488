"""Fair scheduling across submitters: per-submitter lanes in Redis, and one atomic Lua step that
picks the next piece of a model.

Each waiting piece (a task name and its arguments) sits in its submitter's lane
``zoomq:lane:<model>:<submitter>``; the Celery message on ``render.<model>`` is only a token
(``zoomq.next [model]``) meaning "render the next fair piece of this model". When a worker runs a
token, ``claim`` picks, among the submitters with waiting work for that model, the one served least
recently — a submitter never served counts as oldest, ties go to the first to arrive — takes the
oldest piece of its lane (first come, first served within one submitter) and stores it under the
token's id. A token delivered again (a lost worker, a retry of a busy piece) keeps that id and so
resumes its own piece; ``release`` forgets the claim once the piece has ended.

"Least recently" is counted with a per-model Redis counter, not wall time: clocks differ between
hosts. Everything lives in Redis (AOF in the shipped configurations), beside the Celery messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import redis

from zoomq.queue.connection import text

#: The token task: "render the next fair piece of model M".
TASK_NEXT = "zoomq.next"
#: The lane of submitters who give none (the Python API and the CLI share one).
ANONYMOUS = "-"
#: Models that have had lanes, so the watchdog finds them without a SCAN.
MODELS = "zoomq:fair:models"
#: Model → lane entries without a token seen by the last ``top_up``.
_GAPS = "zoomq:fair:gaps"
#: How long a claim is kept when its token never ends it (its worker and message both lost).
CLAIM_TTL = 7 * 24 * 3600
#: How long a model's "last served" figures are kept after its last claim.
SERVED_TTL = 30 * 24 * 3600
#: A never-served submitter's rank: its arrival number less this, so below every served one.
_NEVER = 2 ** 50


def lane_key(model: str, submitter: str) -> str:
    return f"zoomq:lane:{model}:{submitter}"


def _ready_key(model: str) -> str:
    """Zset: submitters with waiting work for the model, ranked by when they were last served."""
    return f"zoomq:fair:{model}:ready"


def _served_key(model: str) -> str:
    """Hash: submitter → the model's counter value when it was last served."""
    return f"zoomq:fair:{model}:served"


def _seq_key(model: str) -> str:
    return f"zoomq:fair:{model}:seq"


def claim_key(token: str) -> str:
    return f"zoomq:claim:{token}"


# KEYS: lane, ready, served, seq, models. ARGV: submitter, piece, model, never.
_PUSH = """
redis.call('RPUSH', KEYS[1], ARGV[2])
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then
    local rank = redis.call('HGET', KEYS[3], ARGV[1])
    if not rank then rank = redis.call('INCR', KEYS[4]) - tonumber(ARGV[4]) end
    redis.call('ZADD', KEYS[2], rank, ARGV[1])
end
redis.call('SADD', KEYS[5], ARGV[3])
return redis.call('LLEN', KEYS[1])
"""

# KEYS: claim, ready, served, seq. ARGV: lane prefix, claim ttl, served ttl.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
while true do
    local first = redis.call('ZRANGE', KEYS[2], 0, 0)
    if #first == 0 then return false end
    local who = first[1]
    local lane = ARGV[1] .. who
    local piece = redis.call('LPOP', lane)
    if piece then
        local seq = redis.call('INCR', KEYS[4])
        redis.call('HSET', KEYS[3], who, seq)
        redis.call('EXPIRE', KEYS[3], tonumber(ARGV[3]))
        if redis.call('LLEN', lane) > 0 then
            redis.call('ZADD', KEYS[2], seq, who)
        else
            redis.call('ZREM', KEYS[2], who)
        end
        local claimed = cjson.encode({submitter = who, piece = cjson.decode(piece)})
        redis.call('SET', KEYS[1], claimed, 'EX', tonumber(ARGV[2]))
        return claimed
    end
    redis.call('ZREM', KEYS[2], who)  -- an empty lane left listed: skip it
end
"""


def lane_of(submitter: str | None) -> str:
    """The lane name of a submitter (a key identity or a client address; None: the shared lane)."""
    return submitter if submitter else ANONYMOUS


def push(client: redis.Redis, model: str, submitter: str | None, task: str, args: list) -> int:
    """Append a piece to the submitter's lane for ``model``; returns the lane's length."""
    with client.pipeline(transaction=False) as p:
        add_push(p, model, submitter, task, args)
        return int(p.execute()[0])


def add_push(p: redis.client.Pipeline, model: str, submitter: str | None, task: str, args: list) -> None:
    """Queue ``push`` on the pipeline ``p`` (the producer sends it with the job's record, in one round trip)."""
    who = lane_of(submitter)
    piece = json.dumps({"task": task, "args": args})
    keys = [lane_key(model, who), _ready_key(model), _served_key(model), _seq_key(model), MODELS]
    p.eval(_PUSH, len(keys), *keys, who, piece, model, _NEVER)


def claim(client: redis.Redis, model: str, token: str) -> dict | None:
    """The piece this token renders: the one it claimed before (a redelivered token), else the next
    fair one, now claimed; None when no piece waits. ``{"submitter", "piece": {"task", "args"}}``."""
    keys = [claim_key(token), _ready_key(model), _served_key(model), _seq_key(model)]
    raw = client.eval(_CLAIM, len(keys), *keys, lane_key(model, ""), CLAIM_TTL, SERVED_TTL)
    return None if raw is None else json.loads(raw)


def release(client: redis.Redis, token: str) -> None:
    """The token's piece has ended (done, failed or cancelled): forget its claim."""
    client.delete(claim_key(token))


def waiting(client: redis.Redis, model: str) -> dict[str, int]:
    """Submitter → how many pieces of ``model`` wait in its lane."""
    who = [text(w) for w in client.zrange(_ready_key(model), 0, -1)]
    with client.pipeline(transaction=False) as p:
        for w in who:
            p.llen(lane_key(model, w))
        lengths = p.execute()
    return {w: int(n) for w, n in zip(who, lengths, strict=True) if n}


def enqueue(client: redis.Redis, send: Callable[[str, list, str], None], model: str, submitter: str | None,
            task: str, args: list, queue: str) -> None:
    """Put a piece in its submitter's lane, then send one token for it to ``queue``. The lane entry
    comes first: a crash between the two leaves an entry without a token, which ``top_up`` finds;
    the other order could leave a token without an entry, harmless too, but a lost piece is not."""
    push(client, model, submitter, task, args)
    send(TASK_NEXT, [model], queue)


def top_up(client: redis.Redis, send: Callable[[str, list, str], None], queue_of: Callable[[str], str]) -> int:
    """Send tokens for lane entries that have none (a producer that died between ``push`` and its
    send): for each model, the pieces waiting in lanes beyond the tokens waiting in its queue. A gap
    is filled only when the previous pass saw it too (a token a worker has just taken, or a send
    under way, opens one for a moment), and by the smaller of the two; a token too many finds no
    piece and ends at once. Returns how many tokens were sent."""
    sent = 0
    for model in sorted(text(m) for m in client.smembers(MODELS)):
        queue = queue_of(model)
        missing = max(0, sum(waiting(client, model).values()) - int(client.llen(queue)))
        before = int(client.hget(_GAPS, model) or 0)
        client.hset(_GAPS, model, missing)
        for _ in range(min(before, missing)):
            send(TASK_NEXT, [model], queue)
            sent += 1
        if min(before, missing):
            client.hset(_GAPS, model, 0)
    return sent
