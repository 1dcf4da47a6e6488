"""The headers every answer carries: jobs, results and pages are private to their key, so no shared
cache (CDN, proxy) may keep them; browsers must not sniff types, frame the pages, or send job URLs
to other sites; and pages run only the site's own scripts and styles (the templates have no inline
ones: tests/test_web_security.py checks)."""

from __future__ import annotations

from flask import Flask, Response, request

CONTENT_SECURITY_POLICY = "; ".join((
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob: data:",  # live previews are shown from blob: URLs
    "media-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
))

EVERY_ANSWER = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
    # same-origin, not no-referrer: browsers then still send Origin on the site's own form posts.
    "Referrer-Policy": "same-origin",
}


def secure(response: Response) -> Response:
    """Add the headers: every answer but the static files is private (``no-store``, or ``private``
    where a route allows caching, as artifacts do) and varies with the key and the session."""
    response.headers.update(EVERY_ANSWER)
    if request.endpoint == "static":
        return response
    cache = response.cache_control
    cache.public = False
    if not cache.private:
        cache.no_store = True
    response.vary.add("Authorization")
    response.vary.add("Cookie")
    return response


def register(app: Flask) -> None:
    app.after_request(secure)
