"""Fixtures for tests of the web front end (a pytest plugin, see conftest.py): test clients of apps
on the private redis-server (``cluster.server``) where a worker serving the miniature models is
announced in the real registry (no worker process is needed to accept or queue a job)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from zoomq.config import settings
from zoomq.producer import Producer
from zoomq.queue import registry
from zoomq.web import create_app


class Client(FlaskClient):
    """A test client that carries its app's producer, for tests that look at the queue behind the API."""

    producer: Producer


@pytest.fixture
def make_client(server, tiny_t2i, tiny_inpaint):
    """``make_client(**settings)``: a test client of an app on the private Redis, where one
    worker serving the miniature models ``t2i`` and ``inpaint`` is announced."""
    apps = []

    def make(workers: bool = True, **overrides):
        s = replace(settings(), **{"redis_url": server.url, "rate_limit": (0, 0), "key_attempts": (0, 0), **overrides})
        app = create_app(s)
        app.test_client_class = Client
        producer = app.extensions["zoomq"].producer
        if workers:
            info = {"models": registry.describe_models([tiny_t2i, tiny_inpaint]), "queues": ["render", "encode"]}
            registry.announce(producer.redis, "w1@test", info, heartbeat=600)
        apps.append(app)
        client = app.test_client()
        assert isinstance(client, Client)
        client.producer = producer
        return client

    return make


@pytest.fixture
def client(make_client):
    return make_client()
