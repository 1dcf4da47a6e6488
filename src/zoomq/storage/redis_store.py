"""Artifacts as Redis strings with an expiry: the default store, nothing to mount or configure.

Each job's artifact names are kept in a set (``zoomq:artifacts-of:<job id>``, expiring with them),
so deleting a job's artifacts reads that set: no request or sweep walks the keyspace.

A download is streamed out of Redis with ``GETRANGE``, a chunk at a time: the artifact is whole in
Redis's memory (where the store keeps it), never in the web process's."""

from __future__ import annotations

from collections.abc import Iterator

import redis

from zoomq.errors import ArtifactStoreError
from zoomq.storage.base import CHUNK, Artifact, ArtifactStore, check_key


class RedisStore(ArtifactStore):
    """Artifacts as Redis strings that expire after ``ttl`` seconds."""

    def __init__(self, client: redis.Redis, ttl: int):
        self.client = client
        self.ttl = ttl

    def _k(self, key: str) -> str:
        return f"zoomq:artifact:{check_key(key)}"

    @staticmethod
    def _index(job_id: str) -> str:
        return f"zoomq:artifacts-of:{check_key(job_id)}"

    def put(self, key: str, data: bytes) -> None:
        name = self._k(key)
        with self.client.pipeline() as p:  # MULTI: an artifact is never stored without its index entry
            if "/" in key:
                index = self._index(key.split("/", 1)[0])
                p.sadd(index, name)
                p.expire(index, self.ttl)
            p.set(name, data, ex=self.ttl)
            p.execute()

    def get(self, key: str) -> bytes | None:
        data = self.client.get(self._k(key))
        assert not isinstance(data, str)  # the client returns bytes (it does not set decode_responses)
        return data

    def open(self, key: str) -> Artifact | None:
        name = self._k(key)
        size = int(self.client.strlen(name))
        if not size and not self.client.exists(name):
            return None

        def read(start: int, stop: int) -> Iterator[bytes]:
            at = start
            while at < stop:
                chunk = self.client.getrange(name, at, min(at + CHUNK, stop) - 1)
                assert isinstance(chunk, bytes)
                if not chunk:  # expired or deleted since: GETRANGE of no key is empty
                    raise ArtifactStoreError(f"artifact {key} expired while being sent")
                at += len(chunk)
                yield chunk

        return Artifact(size, None, read)

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(self._k(key)))

    def delete(self, key: str) -> None:
        name = self._k(key)
        with self.client.pipeline() as p:
            if "/" in key:
                p.srem(self._index(key.split("/", 1)[0]), name)
            p.delete(name)
            p.execute()

    def delete_job(self, job_id: str) -> None:
        """Every artifact of the job, found by its index set (no SCAN), and the set."""
        index = self._index(job_id)
        names = [n for n in self.client.smembers(index)]
        for at in range(0, len(names), 500):
            self.client.delete(*names[at:at + 500])
        self.client.delete(index)
