"""Shared state in Redis: connections, the Celery app and its queues, job records, stats, the worker registry."""
