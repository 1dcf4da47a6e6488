"""What each API key has used: jobs submitted, UNet evaluations, megapixel-steps and render seconds,
kept in Redis so every web process answers ``GET /api/usage`` and ``/metrics`` alike.

One hash, ``zoomq:usage``, holds every figure as a field ``IDENTITY|FIGURE``: the producer counts a
job when it records it (in the same MULTI), a worker counts the rest when a piece completes
(``count_piece``, one MULTI), so concurrent writers never lose a count and a reader needs one
HGETALL (everyone) or one HMGET (one key).

The identity is the job's owner: a key's identity (``alice#1f2e...``: its name and the start of its
hash, never the key) or the API token's. Jobs without an owner (no keys configured, or submitted
with the CLI, which has no key) all count under ``anonymous``: one bucket, not one per client
address, so the hash and the metric's labels grow with the keys file, never with the number of
addresses a client can come from; and without keys every caller sees every job anyway. A key's
identity always holds ``#`` or ``$``, so none is ``anonymous``.

Figures are counted for completed pieces only (as the piece-duration histogram is): a piece that
failed, was cancelled or lost its worker counts nothing, and the piece run again in its place counts
once. UNet evaluations are counted as the dry-run estimate counts them (a guided step is two; those
DeepCache answers with its shallow branch count as whole ones, a guidance split's helper's are the
job's); megapixel-steps are denoising steps times the image or keyframe's megapixels; render seconds
are the wall time of the job's completed pieces, video encoding and stitching included.
"""

from __future__ import annotations

from collections.abc import Iterable

from zoomq.queue.connection import text

USAGE = "zoomq:usage"
ANONYMOUS = "anonymous"
JOBS, UNET, MEGAPIXEL_STEPS, SECONDS = "jobs", "unet_evaluations", "megapixel_steps", "render_seconds"
FIGURES = (JOBS, UNET, MEGAPIXEL_STEPS, SECONDS)
_WHOLE = (JOBS, UNET)  # counted in whole numbers; the others in floats
STEP_PIECES = ("image", "keyframe")  # pieces that denoise; segments and the stitch only take time


def identity(owner: str | bytes | None) -> str:
    """Whose figures a job of ``owner`` adds to."""
    return text(owner) if owner else ANONYMOUS


def _field(who: str, figure: str) -> str:
    return f"{who}|{figure}"


def count_job(r, owner: str | None) -> None:
    """One job submitted by ``owner``; ``r`` a client or a pipeline (then the caller executes it)."""
    r.hincrby(USAGE, _field(identity(owner), JOBS), 1)


def count_piece(client, job_id: str, piece: str, seconds: float) -> dict[str, float]:
    """Add a completed piece of job ``job_id`` to its owner's figures; returns what was added. The
    steps it denoised are the units it reported (the record's ``:work`` hash), each costing the
    record's ``unet_per_step`` evaluations and ``megapixels``. A record gone (expired) counts nothing."""
    key = f"zoomq:job:{job_id}"
    with client.pipeline(transaction=False) as p:
        p.hmget(key, "owner", "unet_per_step", "megapixels", "state")
        p.hget(f"{key}:work", piece)
        (owner, unet_per_step, megapixels, state), units = p.execute()
    if state is None:
        return {}
    steps = int(units or 0) if piece.split(":", 1)[0] in STEP_PIECES else 0
    added = {SECONDS: max(0.0, seconds), UNET: round(steps * float(unet_per_step or 1)),
             MEGAPIXEL_STEPS: steps * float(megapixels or 0)}
    who = identity(owner)
    with client.pipeline() as p:
        p.hincrbyfloat(USAGE, _field(who, SECONDS), added[SECONDS])
        if steps:
            p.hincrby(USAGE, _field(who, UNET), int(added[UNET]))
            p.hincrbyfloat(USAGE, _field(who, MEGAPIXEL_STEPS), added[MEGAPIXEL_STEPS])
        p.execute()
    return added


def empty() -> dict[str, float]:
    return {figure: 0 if figure in _WHOLE else 0.0 for figure in FIGURES}


def _number(figure: str, raw) -> float:
    return int(float(raw)) if figure in _WHOLE else float(raw)


def read_all(client) -> dict[str, dict[str, float]]:
    """identity → its figures (every figure present, 0 where never counted), for every identity counted."""
    return parse(client.hgetall(USAGE))


def parse(raw: dict) -> dict[str, dict[str, float]]:
    """HGETALL of ``USAGE`` → identity → figures."""
    out: dict[str, dict[str, float]] = {}
    for field, value in raw.items():
        who, _, figure = text(field).rpartition("|")
        if who and figure in FIGURES:
            out.setdefault(who, empty())[figure] = _number(figure, text(value))
    return out


def read(client, identities: Iterable[str]) -> dict[str, dict[str, float]]:
    """The figures of ``identities`` only (one HMGET), 0 where never counted."""
    wanted = list(dict.fromkeys(identities))
    fields = [_field(who, figure) for who in wanted for figure in FIGURES]
    values = client.hmget(USAGE, fields) if fields else []
    out = {who: empty() for who in wanted}
    for field, value in zip(fields, values):
        if value is not None:
            who, _, figure = field.rpartition("|")
            out[who][figure] = _number(figure, text(value))
    return out
