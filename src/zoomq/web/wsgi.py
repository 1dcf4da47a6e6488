"""The WSGI entry point for production servers: ``gunicorn 'zoomq.web.wsgi:app'``."""

from zoomq.web.app import create_app

app = create_app()
