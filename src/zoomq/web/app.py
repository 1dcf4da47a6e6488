"""The Flask application factory: settings, the shared producer, guards and error pages."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.middleware.proxy_fix import ProxyFix

from zoomq import config
from zoomq.config import Settings
from zoomq.errors import (
    ArtifactStoreUnreachable,
    BrokerUnavailable,
    IdempotencyConflict,
    IdempotencyMismatch,
    KeysUnavailable,
    QueueFull,
    TooManyKeyAttempts,
    Unauthorized,
    ZoomqError,
)
from zoomq.producer.producer import Producer
from zoomq.web import api, headers, metrics, pages, security
from zoomq.web.api_keys import KeyRing
from zoomq.web.context import Web, web
from zoomq.web.throttle import KeyAttempts

log = logging.getLogger(__name__)


def create_app(s: Settings | None = None) -> Flask:
    s = s or config.settings()
    app = Flask(__name__)
    if s.trusted_proxies:
        # The client address is the one that many proxies back in X-Forwarded-For, not the
        # leftmost (which any client can write); the scheme is the nearest proxy's
        # X-Forwarded-Proto, so a TLS-terminating proxy makes the session cookie Secure.
        # Flask's documented way to add WSGI middleware, which its types call assigning to a method.
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=s.trusted_proxies, x_proto=1, x_host=0, x_port=0, x_prefix=0
        )
    producer = Producer(s)
    keys = KeyRing(s.api_keys_file, s.api_token)
    app.extensions["zoomq"] = Web(s, producer, security.RateLimit(producer.redis, *s.rate_limit), keys,
                                  sessions=security.Sessions(producer.redis, s),
                                  key_attempts=KeyAttempts(producer.redis, *s.key_attempts))
    app.config.update(
        MAX_CONTENT_LENGTH=s.max_upload,
        # zoomq's sessions are security.Sessions; without ZOOMQ_SECRET_KEY, Flask's own signed
        # cookie session stays off (using it fails loudly), and no secret is kept anywhere.
        SECRET_KEY=s.secret_key or None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        JSON_SORT_KEYS=False,
    )
    app.after_request(security.save_cookie)
    app.register_blueprint(api.bp)
    app.register_blueprint(pages.bp)
    metrics.register(app, producer)
    headers.register(app)
    _register_errors(app)
    return app


def wants_json() -> bool:
    return request.path.startswith("/api/")


def _register_errors(app: Flask) -> None:
    def reply(status: int, message: str, headers: dict | None = None, **extra):
        if wants_json():
            return jsonify(error=message, **extra), status, headers or {}
        return render_template("error.html", status=status, message=message), status, headers or {}

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        # Keep the exception's own headers but its body's type: a 405 must say Allow (RFC 9110).
        headers = {k: v for k, v in e.get_headers() if k.lower() != "content-type"}
        if e.code == 413:
            return reply(413, f"the request is larger than {web().settings.max_upload} bytes (ZOOMQ_MAX_UPLOAD)")
        # every werkzeug error has a description; a bare HTTPException says its name
        message = (e.description or e.name) if e.code != 404 else "not found (unknown or expired job?)"
        return reply(e.code or 500, message, headers)

    @app.errorhandler(Unauthorized)
    def unauthorized(e):
        return reply(401, str(e), {"WWW-Authenticate": 'Bearer realm="zoomq"'})

    @app.errorhandler(TooManyKeyAttempts)
    def too_many_key_attempts(e):
        return reply(429, str(e), {"Retry-After": str(e.retry_after)})

    @app.errorhandler(KeysUnavailable)
    def keys_unavailable(e):
        # Plain text for pages too: the error page's own template would ask for the keys again.
        if wants_json():
            return jsonify(error=str(e)), 503
        return Response(str(e) + "\n", 503, mimetype="text/plain")

    @app.errorhandler(QueueFull)
    def queue_full(e):
        return reply(e.status, str(e), {"Retry-After": str(e.retry_after)})

    @app.errorhandler(IdempotencyConflict)
    def idempotency_conflict(e):
        return reply(409, str(e), {"Retry-After": str(e.retry_after)})

    @app.errorhandler(IdempotencyMismatch)
    def idempotency_mismatch(e):
        return reply(422, str(e))

    @app.errorhandler(BrokerUnavailable)
    @app.errorhandler(ArtifactStoreUnreachable)
    def broker_down(e):
        return reply(503, str(e))

    @app.errorhandler(ZoomqError)
    def zoomq_error(e):
        return reply(400 if e.exit_code == 2 else 500, str(e))
