"""Celery workers: thin tasks over the render core and the zoom engine (see ``pieces``)."""
