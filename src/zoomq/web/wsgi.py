"""The WSGI entry point for production servers: ``gunicorn 'zoomq.web.wsgi:app'``.

Before it serves, it checks the addresses gunicorn listens on (``zoomq.web.exposure``): one other
hosts reach, with no API key configured and ``ZOOMQ_ALLOW_ANONYMOUS`` not ``1``, is refused in one
line, and the worker exits with gunicorn's "App failed to load" code, which stops gunicorn.
"""

import sys

from zoomq import config
from zoomq.errors import OpenWithoutKeys
from zoomq.web import exposure
from zoomq.web.app import create_app

APP_LOAD_ERROR = 4  # gunicorn's Arbiter.APP_LOAD_ERROR: the master halts instead of starting another worker

try:
    exposure.check(config.settings(), exposure.listening_hosts() or ["(none found: gunicorn --preload?)"],
                   "this server's listening address")
except OpenWithoutKeys as e:
    print(f"zoomq: error: {e}", file=sys.stderr, flush=True)
    sys.exit(APP_LOAD_ERROR)

app = create_app()
