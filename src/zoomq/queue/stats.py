"""Cluster-wide counters and piece timings, kept in Redis so any web process can report them.

Workers and the producer write here as things happen (jobs submitted and ended, pieces timed,
failed or sent again); ``zoomq.web.metrics`` reads it all back at scrape time. Two hashes hold
everything, so a reader needs two HGETALLs: ``zoomq:stats`` (counters, one field each) and
``zoomq:stats:piece-seconds`` (a histogram per piece kind: per-bucket counts, sum and count).
Every write is one command, or a few in one MULTI, so concurrent writers never lose a count.
"""

from __future__ import annotations

from dataclasses import dataclass

COUNTERS = "zoomq:stats"
DURATIONS = "zoomq:stats:piece-seconds"
RATES = "zoomq:stats:rates"  # per model: seconds per UNet evaluation and per video frame, per megapixel
_RATE_EMA = 0.2  # weight of the newest measurement in the cluster's rates

JOB_KINDS = ("image", "zoom")
PIECE_KINDS = ("image", "keyframe", "segment", "stitch")
#: Upper bounds of the duration buckets, in seconds: a miniature image takes a fraction of a
#: second, a full-size keyframe tens of seconds, a long zoom's stitch minutes.
BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)
INF = "+Inf"


def piece_kind(piece: str) -> str:
    """``keyframe:3`` → ``keyframe``; a task name ``zoomq.segment`` → ``segment``."""
    return piece.split(":", 1)[0].removeprefix("zoomq.")


# -- writing: ``r`` is a client or a pipeline (then the caller executes it) --------------------

def count_submitted(r, kind: str) -> None:
    r.hincrby(COUNTERS, f"submitted|{kind}", 1)


def count_ended(r, kind: str, state: str) -> None:
    r.hincrby(COUNTERS, f"ended|{kind}|{state}", 1)


def count_piece_failed(r, piece: str) -> None:
    r.hincrby(COUNTERS, f"failed|{piece_kind(piece)}", 1)


def count_piece_busy(r, piece: str) -> None:
    """A task of a piece another live worker holds: a duplicate delivery, tried again later."""
    r.hincrby(COUNTERS, f"busy|{piece_kind(piece)}", 1)


def count_piece_resent(r, piece: str) -> None:
    r.hincrby(COUNTERS, f"resent|{piece_kind(piece)}", 1)


def observe_piece(client, piece: str, seconds: float) -> None:
    """Add one completed piece's wall time to its kind's histogram (one MULTI)."""
    kind = piece_kind(piece)
    bucket = next((str(b) for b in BUCKETS if seconds <= b), INF)
    with client.pipeline() as p:
        p.hincrby(DURATIONS, f"{kind}|{bucket}", 1)  # this bucket only: read() makes them cumulative
        p.hincrby(DURATIONS, f"{kind}|count", 1)
        p.hincrbyfloat(DURATIONS, f"{kind}|sum", seconds)
        p.execute()


def observe_rate(client, model: str, what: str, seconds_per_megapixel: float) -> None:
    """Fold one measurement of ``what`` ("unet": one UNet evaluation, "frame": one video frame)
    on ``model`` into the cluster's running average, which dry runs estimate from. Two workers
    writing at once may lose one of the two measurements: harmless for an average."""
    field = f"{model}|{what}"
    old = client.hget(RATES, field)
    new = seconds_per_megapixel if old is None else (1 - _RATE_EMA) * float(old) + _RATE_EMA * seconds_per_megapixel
    client.hset(RATES, field, new)


def read_rates(client, model: str) -> dict[str, float]:
    """{"unet": s, "frame": s} per megapixel, as measured on ``model``; a kind never measured is absent."""
    unet, frame = client.hmget(RATES, f"{model}|unet", f"{model}|frame")
    return {k: float(v) for k, v in (("unet", unet), ("frame", frame)) if v is not None}


# -- reading ----------------------------------------------------------------------------------

@dataclass
class Histogram:
    buckets: list[tuple[str, int]]  # (upper bound, cumulative count), ending with ("+Inf", count)
    total: float
    count: int


def read_counters(raw: dict) -> dict[tuple[str, ...], int]:
    """HGETALL of ``COUNTERS`` → {("submitted", kind): n, ("ended", kind, state): n,
    ("failed", piece): n, ("resent", piece): n}."""
    return {tuple(k.decode().split("|")): int(v) for k, v in raw.items()}


def read_durations(raw: dict) -> dict[str, Histogram]:
    """HGETALL of ``DURATIONS`` → a histogram per piece kind, every kind of ``PIECE_KINDS`` included."""
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    kinds = list(PIECE_KINDS) + sorted({f.split("|", 1)[0] for f in fields} - set(PIECE_KINDS))
    out = {}
    for kind in kinds:
        running, buckets = 0, []
        for bound in [str(b) for b in BUCKETS] + [INF]:
            running += int(fields.get(f"{kind}|{bound}", 0))
            buckets.append((bound, running))
        out[kind] = Histogram(buckets, float(fields.get(f"{kind}|sum", 0.0)), int(fields.get(f"{kind}|count", 0)))
    return out
