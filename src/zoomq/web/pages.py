"""The HTML pages: submit form, job status page, jobs and cluster overview.

Forms post back here (CSRF-checked) and work without JavaScript; the status page's script only
polls the JSON API to update itself.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields

from flask import Blueprint, abort, redirect, render_template, request, url_for

from zoomq.errors import BrokerUnavailable, InvalidParameter, InvalidParameters, QueueFull
from zoomq.queue.job_records import ENDED
from zoomq.render.request import RenderRequest
from zoomq.render.schedulers import NAMES as SCHEDULERS
from zoomq.web import present, security, submission
from zoomq.web.context import job_or_404, web
from zoomq.zoom.settings import DIRECTIONS, DefaultSeam, ZoomSettings

bp = Blueprint("pages", __name__)


def _defaults(cls) -> dict:
    """Pre-filled form values; the default seam is left blank, as it narrows to fit small sizes."""
    return {f.name: f.default for f in fields(cls)
            if f.default not in (None, MISSING) and not isinstance(f.default, DefaultSeam)}


def _who() -> security.Caller | None:
    """The caller, or None when signed out, or when Redis (holding the sessions) cannot say."""
    w = web()
    try:
        return security.identify(request, w.keys, w.sessions)
    except BrokerUnavailable:
        return None


@bp.app_context_processor
def _common():
    who = _who()
    return {
        "csrf_token": security.csrf_token,
        "csrf_field": security.CSRF_FIELD,
        "needs_token": who is None,
        "signed_in": who is not None and who.by_cookie,
    }


def _form_page(kind: str = "zoom", values: dict | None = None, errors: dict | None = None, status: int = 200):
    try:
        models = web().producer.models()
        broker_error = None
    except BrokerUnavailable as e:
        models, broker_error = {}, str(e)
    values = values or {}
    schedule = [(k, p) for k, p in zip(values.get("schedule_keyframe", []), values.get("schedule_prompt", []))]
    return render_template(
        "submit.html", kind=kind, values=values, errors=errors or {}, broker_error=broker_error,
        image_models=sorted(models), zoom_models=sorted(models, key=lambda m: (models[m]["task"] != "inpainting", m)),
        image_defaults=_defaults(RenderRequest), zoom_defaults=_defaults(ZoomSettings),
        schedulers=SCHEDULERS, directions=DIRECTIONS, schedule=schedule + [("", "")] * max(0, 3 - len(schedule)),
        max_prompt=web().settings.max_prompt, max_upload=web().settings.max_upload,
    ), status


@bp.get("/")
def index():
    return _form_page(request.args.get("kind", "zoom"))


@bp.post("/submit")
def submit_form():
    w = web()
    values = {k: request.form.getlist(k) if k.startswith("schedule_") else request.form.get(k) for k in request.form}
    kind = request.form.get("kind", "zoom")
    if not security.csrf_ok(request):
        expired = {"form": "the form has expired or was not sent by this site; submit it again"}
        return _form_page(kind, values, expired, 400)
    _count_key_attempt()
    who = security.accept_key(request.form.get("token"), w.keys, w.sessions)
    if who is None:
        return _form_page(kind, values, {"token": "wrong or missing API key"}, 401)
    wait = w.rate_limit.hit(who.submitter)
    if wait is not None:
        return _form_page(kind, values, {"form": w.rate_limit.refusal(wait)}, 429)
    sub, checks = submission.from_form(request.form, request.files)
    try:
        job_id = submission.enqueue(w.producer, sub, checks, owner=who.owner, submitter=who.submitter)
    except InvalidParameters as e:
        return _form_page(kind, values, _by_field(e.errors), 400)
    except InvalidParameter as e:
        return _form_page(kind, values, _by_field([e]), 400)
    except QueueFull as e:
        page, status = _form_page(kind, values, {"form": str(e)}, e.status)
        return page, status, {"Retry-After": str(e.retry_after)}
    return redirect(url_for(".job", job_id=job_id), 303)


def _by_field(errors: list[InvalidParameter]) -> dict:
    out: dict[str, str] = {}
    for e in errors:
        name = submission.field_name(e.param)
        key = "schedule" if name.startswith("schedule") else name
        out.setdefault(key, f"{e.rule} (got {e.value!r})" if e.value is not None else e.rule)
    return out


def _count_key_attempt() -> None:
    """A wrong key typed into a form counts against the client's address like a wrong Bearer key;
    past ``ZOOMQ_KEY_ATTEMPTS`` every key from it is refused (``TooManyKeyAttempts``, 429)."""
    w = web()
    w.key_attempts.key(w.keys, request.remote_addr or "unknown", request.form.get("token"))


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    record = job_or_404(job_id)
    if record["state"] not in ENDED:
        web().producer.watch(job_id)  # its worker starts on previews before the page's first poll
    return render_template("job.html", job=present.job_json(record), ended=record["state"] in ENDED,
                           prompt=present.prompt(record), recipe=json.dumps(record["params"], indent=2))


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    w = web()
    if not security.csrf_ok(request):
        abort(400, "the form has expired; reload the page")
    _count_key_attempt()
    if security.accept_key(request.form.get("token"), w.keys, w.sessions) is None:
        return render_template("error.html", status=401, message="wrong or missing API key"), 401
    job_or_404(job_id)
    w.producer.cancel(job_id)
    return redirect(url_for(".job", job_id=job_id), 303)


@bp.get("/jobs")
def overview():
    w = web()
    cluster = present.health(w.producer)
    who = _who()  # signed out: the cluster, but nobody's jobs
    owner = None if who is None or who.key is None or who.key.admin else who.key.owner
    reachable = cluster["broker"]["reachable"] and who is not None
    jobs = [present.job_summary(r) for r in w.producer.jobs.recent(50, owner)] if reachable else []
    if who is None or (who.key is not None and not who.key.admin):  # workers and hosts: admins only
        cluster = present.public_health(cluster)
    return render_template("overview.html", jobs=jobs, cluster=cluster)


@bp.post("/logout")
def logout():
    """Sign the browser out: its session ends on the server, so the old cookie, replayed, is refused."""
    if not security.csrf_ok(request):
        abort(400, "the form has expired; reload the page")
    security.sign_out(web().sessions)
    return redirect(url_for(".index"), 303)
