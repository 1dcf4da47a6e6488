"""Artifacts as Redis strings with an expiry: the default store, nothing to mount or configure."""

from __future__ import annotations

import redis

from zoomq.storage.base import ArtifactStore, check_key


class RedisStore(ArtifactStore):
    """Artifacts as Redis strings that expire after ``ttl`` seconds."""

    def __init__(self, client: redis.Redis, ttl: int):
        self.client = client
        self.ttl = ttl

    def _k(self, key: str) -> str:
        return f"zoomq:artifact:{check_key(key)}"

    def put(self, key: str, data: bytes) -> None:
        self.client.set(self._k(key), data, ex=self.ttl)

    def get(self, key: str) -> bytes | None:
        data = self.client.get(self._k(key))
        assert not isinstance(data, str)  # the client returns bytes (it does not set decode_responses)
        return data

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(self._k(key)))

    def delete_job(self, job_id: str) -> None:
        keys = list(self.client.scan_iter(match=self._k(check_key(job_id)) + "/*", count=500))
        if keys:
            self.client.delete(*keys)
