"""The web front end: a Flask app with a JSON API (``/api``) and server-rendered pages.

``create_app()`` builds it from the settings; views stay thin over ``zoomq.producer.Producer``.
Development: ``zoomq web``; production: ``gunicorn 'zoomq.web.wsgi:app'``.
"""

from zoomq.web.app import create_app

__all__ = ["create_app"]
