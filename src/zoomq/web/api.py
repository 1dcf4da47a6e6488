"""The JSON API under ``/api``, described by ``/api/openapi.json``. Views are thin: parsing lives
in ``submission``, presentation in ``present``, the work in the producer."""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, make_response, request, url_for

from zoomq.errors import BrokerUnavailable, InvalidParameter, InvalidParameters
from zoomq.producer import idempotency
from zoomq.queue import job_records
from zoomq.web import idempotent, present, security, spec, submission
from zoomq.web.context import caller, is_admin, job_or_404, web
from zoomq.zoom.keyframe import keyframe_name

bp = Blueprint("api", __name__, url_prefix="/api")

ARTIFACT_TYPES = {"image/png": ".png", "video/mp4": ".mp4"}


def _errors(errors: list[InvalidParameter]):
    return jsonify(error="invalid parameters", errors=submission.errors_json(errors)), 400


def _flag(name: str) -> bool:
    """A query flag: absent or ``0`` is off, ``1`` on; anything else is refused."""
    value = request.args.get(name, "0")
    if value not in ("0", "1"):
        raise InvalidParameter(name, value, "must be 0 or 1")
    return value == "1"


def _rate_limited(who: security.Caller):
    """None, or the 429 answer when ``who`` has used up its submissions of this window."""
    limit = web().rate_limit
    wait = limit.hit(who.submitter)
    if wait is None:
        return None
    return jsonify(error=limit.refusal(wait)), 429, {"Retry-After": str(wait)}


@bp.post("/jobs")
def create_job():
    """Validate a submission and enqueue it (202), or with ``?dry_run=1`` answer its estimate (200).
    With an ``Idempotency-Key`` (``producer.idempotency``), the key's first job is answered again."""
    who = caller()
    try:
        dry_run = _flag("dry_run")
        key = idempotent.key(request)
    except InvalidParameter as e:
        return _errors([e])
    if key is None or dry_run:  # a dry run enqueues nothing: there is nothing to answer twice
        return _admit(who, dry_run)[0]
    claim = idempotency.claim(web().producer, idempotent.scope(who), key, idempotent.fingerprint(request))
    if isinstance(claim, str):  # its first job (409 and 422 are raised, see app.py)
        return _accepted(claim, replayed=True)
    try:
        answer, job_id = _admit(who, dry_run=False)
    except BaseException:  # QueueFull (429, 503), Redis down: the same request may come again under the key
        claim.release()
        raise
    if job_id is None:  # refused (400, 429): as above
        claim.release()
    else:
        claim.done(job_id)
    return answer


def _admit(who: security.Caller, dry_run: bool) -> tuple[tuple, str | None]:
    """(the answer, the job id if one was enqueued)."""
    refused = _rate_limited(who)  # a dry run costs Redis reads and the estimate: it counts too
    if refused:
        return refused, None
    if request.mimetype == "application/json":
        sub, checks = submission.from_json(submission.json_body(request))
    else:
        sub, checks = submission.from_form(request.form, request.files)
    try:
        if dry_run:
            return (jsonify(submission.estimate(web().producer, sub, checks)), 200), None
        job_id = submission.enqueue(web().producer, sub, checks, owner=who.owner, submitter=who.submitter)
    except InvalidParameters as e:
        return _errors(e.errors), None
    except InvalidParameter as e:
        return _errors([e]), None
    return _accepted(job_id), job_id


def _accepted(job_id: str, replayed: bool = False):
    body = {"id": job_id, "status_url": url_for(".job", job_id=job_id),
            "page_url": url_for("pages.job", job_id=job_id)}
    headers = {"Location": body["status_url"], **({"Idempotent-Replayed": "true"} if replayed else {})}
    return jsonify(body), 202, headers


@bp.get("/jobs")
def list_jobs():
    """The caller's newest jobs (every job for an admin key, or when no keys are configured)."""
    who = caller()
    limit = request.args.get("limit", "20")
    if not (limit.isascii() and limit.isdigit()) or not 1 <= int(limit) <= 200:  # not "²" or "٣"
        return _errors([InvalidParameter("limit", limit, "must be a whole number from 1 to 200")])
    owner = None if who.key is None or who.key.admin else who.key.owner
    records = web().producer.jobs.recent(int(limit), owner)
    return jsonify(jobs=[present.job_summary(r) for r in records])


@bp.get("/usage")
def usage_figures():
    """What each key has used (``queue.usage``): an admin key (or anyone, with no keys configured)
    every identity counted, any other key only its own, zeros included."""
    who = caller()
    figures = web().producer.usage(None if who.key is None or who.key.admin else [who.key.owner])
    return jsonify(usage=[{"key": name, **values} for name, values in sorted(figures.items())])


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    return jsonify(present.job_json(job_or_404(job_id)))


@bp.delete("/jobs/<job_id>")
def cancel(job_id: str):
    """Cancel the job; with ``?purge=1`` also delete every artifact and upload of it, whatever its state."""
    job_or_404(job_id)
    try:
        purge = _flag("purge")
    except InvalidParameter as e:
        return _errors([e])
    producer = web().producer
    if purge:
        return jsonify(producer.purge(job_id))
    cancelled = producer.cancel(job_id)
    state = producer.jobs.state(job_id)
    if not cancelled:
        return jsonify(error=f"job {job_id} has already ended ({state})", state=state), 409
    return jsonify(id=job_id, state=state)


def _kept(job_id: str) -> dict:
    """``job_or_404``, and 410 Gone for a purged job: its artifacts were deleted on request. A bad
    ``download`` flag is refused before any of that (400), whatever the job's state."""
    try:
        _flag("download")
    except InvalidParameter as e:
        abort(make_response(*_errors([e])))
    record = job_or_404(job_id)
    if record.get("purged") is not None:
        abort(make_response(jsonify(error=f"job {job_id} was purged: its artifacts and uploads are deleted",
                                    state=record["state"], purged=record["purged"]), 410))
    return record


def _artifact(job_id: str, name: str, mimetype: str, download_name: str):
    try:
        download = _flag("download")
    except InvalidParameter as e:
        return _errors([e])
    artifact = web().producer.open_artifact(job_id, name)
    if artifact is None:
        abort(404)
    # Streamed: Werkzeug answers the conditional and Range headers (304, 206, 416) from the size
    # alone, then the body is only the bytes it settled on, read from the store a chunk at a time
    # (a seek or a ranged GET for a range), so players can seek in videos and the web process holds
    # a chunk per download, whatever the video's size.
    response = Response([], mimetype=mimetype, direct_passthrough=True)
    response.content_length = artifact.size
    response.set_etag(f"{job_id}-{name}")
    if artifact.modified is not None:
        response.last_modified = artifact.modified
    response.headers.set("Content-Disposition", "attachment" if download else "inline", filename=download_name)
    # No max_age through Werkzeug's helpers (they would make it public): the result is the key
    # holder's, so only their browser keeps it.
    response.cache_control.private = True
    response.cache_control.max_age = 3600
    response.make_conditional(request, accept_ranges=True, complete_length=artifact.size)
    if response.status_code == 206:
        served = response.content_range  # set by make_conditional for a 206, stop exclusive
        assert served is not None and served.start is not None and served.stop is not None
        response.response = artifact.chunks(served.start, served.stop)
    elif response.status_code == 200 and request.method != "HEAD":
        response.response = artifact.chunks()
    return response


@bp.get("/jobs/<job_id>/result")
def result(job_id: str):
    record = _kept(job_id)
    if record["state"] != job_records.DONE:
        return jsonify(error=f"job {job_id} is {record['state']}, not done", state=record["state"]), 409
    mimetype = record.get("result_type", "application/octet-stream")
    name = record["result"].rsplit("/", 1)[-1]
    return _artifact(job_id, name, mimetype, f"zoomq-{job_id}{ARTIFACT_TYPES.get(mimetype, '')}")


@bp.get("/jobs/<job_id>/sidecar")
def sidecar(job_id: str):
    _kept(job_id)
    return _artifact(job_id, "sidecar.json", "application/json", f"zoomq-{job_id}.json")


@bp.get("/jobs/<job_id>/gif")
def gif(job_id: str):
    _kept(job_id)
    return _artifact(job_id, "result.gif", "image/gif", f"zoomq-{job_id}.gif")


@bp.get("/jobs/<job_id>/preview")
def preview(job_id: str):
    """The newest live preview of a running image or keyframe (200), or 204 while a job that has
    not ended has none yet. Asking for it marks a job that has not ended watched, so its worker
    makes previews for the next few seconds; an ended job's is served while it is kept, else 404
    (410 once purged)."""
    record = _kept(job_id)
    live = record["state"] not in job_records.ENDED
    data = web().producer.preview(job_id, watch=live)
    no_store = {"Cache-Control": "no-store"}
    if data is None:
        if live:
            return Response(status=204, headers=no_store)
        return jsonify(error=f"job {job_id} is {record['state']} and has no preview"), 404, no_store
    return Response(data, mimetype="image/png", headers=no_store)


@bp.get("/jobs/<job_id>/keyframes/<int:k>")
def keyframe(job_id: str, k: int):
    record = _kept(job_id)
    if record["kind"] != "zoom" or k >= int(record.get("keyframes_total") or 0):
        abort(404)
    return _artifact(job_id, keyframe_name(k), "image/png", f"zoomq-{job_id}-{keyframe_name(k)}")


@bp.get("/health")
def health():
    """The cluster in full for an admin key (or when no keys are configured); for anyone else only
    what a load balancer needs: no worker, host or Redis address."""
    body = present.health(web().producer)
    status = 200 if body["broker"]["reachable"] else 503
    try:
        admin = is_admin()
    except BrokerUnavailable:  # a session cookie, with Redis (holding the sessions) down
        admin = False
    return jsonify(body if admin else present.public_health(body)), status


@bp.get("/openapi.json")
def openapi():
    """The API's description, with this server's limits, key requirement and served models."""
    try:
        models = web().producer.models()
    except BrokerUnavailable:
        models = None  # the document stays useful while Redis is down; names are left open
    return jsonify(spec.spec(web().settings, models))
