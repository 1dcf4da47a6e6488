"""The JSON API under ``/api``, described by ``/api/openapi.json``. Views are thin: parsing lives
in ``submission``, presentation in ``present``, the work in the producer."""

from __future__ import annotations

import io
from importlib import resources

from flask import Blueprint, Response, abort, jsonify, request, send_file, url_for

from zoomq import jobs as jobs_mod
from zoomq.errors import InvalidParameter, InvalidParameters
from zoomq.web import present, security, submission
from zoomq.web.app import job_or_404, web
from zoomq.zoom.keyframe import keyframe_name

bp = Blueprint("api", __name__, url_prefix="/api")

ARTIFACT_TYPES = {"image/png": ".png", "video/mp4": ".mp4"}


def _errors(errors: list[InvalidParameter]):
    return jsonify(error="invalid parameters", errors=submission.errors_json(errors)), 400


def _unauthorized():
    """401 unless the request may submit and cancel (no token configured, or it carries it)."""
    if security.authorized(request, web().settings.api_token):
        return None
    return jsonify(error="this server needs an API token: send Authorization: Bearer <token>"), 401


def _guard():
    """Token and rate limit for submitting; returns an error response or None."""
    refused = _unauthorized()
    if refused:
        return refused
    limit = web().rate_limit
    wait = limit.hit(request.remote_addr or "unknown")
    if wait is not None:
        response = jsonify(error=limit.refusal(wait))
        response.headers["Retry-After"] = str(wait)
        return response, 429
    return None


@bp.post("/jobs")
def create_job():
    refused = _guard()
    if refused:
        return refused
    if request.mimetype == "application/json":
        sub, checks = submission.from_json(request.get_json(silent=True), web().settings.max_prompt)
    else:
        sub, checks = submission.from_form(request.form, request.files, web().settings.max_prompt)
    try:
        job_id = submission.enqueue(web().producer, sub, checks)
    except InvalidParameters as e:
        return _errors(e.errors)
    except InvalidParameter as e:
        return _errors([e])
    body = {"id": job_id, "status_url": url_for(".job", job_id=job_id),
            "page_url": url_for("pages.job", job_id=job_id)}
    return jsonify(body), 202, {"Location": body["status_url"]}


@bp.get("/jobs")
def list_jobs():
    limit = request.args.get("limit", "20")
    if not limit.isdigit() or not 1 <= int(limit) <= 200:
        return _errors([InvalidParameter("limit", limit, "must be a whole number from 1 to 200")])
    records = web().producer.jobs.recent(int(limit))
    return jsonify(jobs=[present.job_summary(r) for r in records])


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    return jsonify(present.job_json(job_or_404(job_id)))


@bp.delete("/jobs/<job_id>")
def cancel(job_id: str):
    refused = _unauthorized()
    if refused:
        return refused
    job_or_404(job_id)
    producer = web().producer
    cancelled = producer.cancel(job_id)
    state = producer.jobs.state(job_id)
    if not cancelled:
        return jsonify(error=f"job {job_id} has already ended ({state})", state=state), 409
    return jsonify(id=job_id, state=state)


def _artifact(job_id: str, name: str, mimetype: str, download_name: str):
    data = web().producer.artifact(job_id, name)
    if data is None:
        abort(404)
    # conditional=True answers Range requests (206), so players can seek in videos.
    return send_file(io.BytesIO(data), mimetype=mimetype, conditional=True, etag=f"{job_id}-{name}",
                     as_attachment=request.args.get("download") == "1", download_name=download_name,
                     max_age=3600)


@bp.get("/jobs/<job_id>/result")
def result(job_id: str):
    record = job_or_404(job_id)
    if record["state"] != jobs_mod.DONE:
        return jsonify(error=f"job {job_id} is {record['state']}, not done", state=record["state"]), 409
    mimetype = record.get("result_type", "application/octet-stream")
    name = record["result"].rsplit("/", 1)[-1]
    return _artifact(job_id, name, mimetype, f"zoomq-{job_id}{ARTIFACT_TYPES.get(mimetype, '')}")


@bp.get("/jobs/<job_id>/sidecar")
def sidecar(job_id: str):
    job_or_404(job_id)
    return _artifact(job_id, "sidecar.json", "application/json", f"zoomq-{job_id}.json")


@bp.get("/jobs/<job_id>/gif")
def gif(job_id: str):
    job_or_404(job_id)
    return _artifact(job_id, "result.gif", "image/gif", f"zoomq-{job_id}.gif")


@bp.get("/jobs/<job_id>/keyframes/<int:k>")
def keyframe(job_id: str, k: int):
    record = job_or_404(job_id)
    if record["kind"] != "zoom" or k >= int(record.get("keyframes_total") or 0):
        abort(404)
    return _artifact(job_id, keyframe_name(k), "image/png", f"zoomq-{job_id}-{keyframe_name(k)}")


@bp.get("/health")
def health():
    body = present.health(web().producer)
    return jsonify(body), 200 if body["broker"]["reachable"] else 503


@bp.get("/openapi.json")
def openapi():
    spec = resources.files("zoomq.web").joinpath("openapi.json").read_text()
    return Response(spec, mimetype="application/json")
