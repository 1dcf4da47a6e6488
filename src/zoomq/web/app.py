"""The Flask application factory: settings, the shared producer, guards and error pages."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

import redis
from flask import Flask, abort, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from zoomq.config import Settings, settings as current_settings
from zoomq.errors import InvalidParameter, ZoomqError
from zoomq.producer.api import BrokerUnavailable, Producer
from zoomq.store import ArtifactStoreUnreachable
from zoomq.web import security

log = logging.getLogger(__name__)


@dataclass
class Web:
    """What the views share: settings, the producer and the rate limit."""

    settings: Settings
    producer: Producer
    rate_limit: security.RateLimit


def web() -> Web:
    return current_app.extensions["zoomq"]


def job_or_404(job_id: str) -> dict:
    """The job's status record, or 404 for an unknown, expired or malformed id."""
    try:
        return web().producer.status(job_id)
    except InvalidParameter:
        abort(404)


def create_app(s: Settings | None = None) -> Flask:
    from zoomq.web import api, metrics, pages

    s = s or current_settings()
    app = Flask(__name__)
    producer = Producer(s)
    app.extensions["zoomq"] = Web(s, producer, security.RateLimit(producer.redis, *s.rate_limit))
    app.config.update(
        MAX_CONTENT_LENGTH=s.max_upload,
        SECRET_KEY=s.secret_key or _shared_secret(producer.redis),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    metrics.register(app, producer)
    _register_errors(app)
    return app


def _shared_secret(client: redis.Redis) -> str:
    try:
        return security.shared_secret(client)
    except redis.RedisError as e:
        # Without Redis nothing can be submitted anyway; a process-local key keeps pages working.
        log.warning("Redis unreachable (%s): this web process signs sessions with its own key", e)
        return secrets.token_hex(32)


def wants_json() -> bool:
    return request.path.startswith("/api/")


def _register_errors(app: Flask) -> None:
    def reply(status: int, message: str, **extra):
        if wants_json():
            return jsonify(error=message, **extra), status
        return render_template("error.html", status=status, message=message), status

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        if e.code == 413:
            return reply(413, f"the request is larger than {web().settings.max_upload} bytes (ZOOMQ_MAX_UPLOAD)")
        return reply(e.code or 500, e.description if e.code != 404 else "not found (unknown or expired job?)")

    @app.errorhandler(BrokerUnavailable)
    @app.errorhandler(ArtifactStoreUnreachable)
    def broker_down(e):
        return reply(503, str(e))

    @app.errorhandler(ZoomqError)
    def zoomq_error(e):
        return reply(400 if e.exit_code == 2 else 500, str(e))
