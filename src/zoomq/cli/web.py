"""``zoomq web``: the web front end on Flask's development server (production: gunicorn)."""

from __future__ import annotations

import argparse

from zoomq.errors import InvalidParameter


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "web",
        help="serve the web front end (development server)",
        description="Serve the submit form, job pages and JSON API on Flask's development server. "
        "In production run gunicorn instead: gunicorn -b 0.0.0.0:8000 'zoomq.web.wsgi:app'.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--debug", action="store_true", help="Flask debug mode: reload on change, tracebacks")
    p.add_argument("--allow-anonymous", action="store_true",
                   help="serve an address other hosts reach with no API key configured, open to anyone "
                   "(as ZOOMQ_ALLOW_ANONYMOUS=1); without a key it is refused")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from zoomq.config import settings
    from zoomq.web import create_app, exposure

    if not 0 < args.port < 65536:
        raise InvalidParameter("port", args.port, "must be between 1 and 65535")
    exposure.check(settings(), [args.host], "--host", args.allow_anonymous)
    app = create_app()
    print(f"zoomq: web front end on http://{args.host}:{args.port}/ (Ctrl-C stops)", flush=True)
    app.run(host=args.host, port=args.port, debug=args.debug, threaded=True, use_reloader=args.debug)
    return 0
