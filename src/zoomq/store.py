"""The artifact store: images, keyframes, segments and videos that every node can reach.

Tasks carry ids, never images; what they make goes here under a key ``<job id>/<name>``. Three
stores stand behind one small interface: Redis (the default, with an expiry), a directory every
node mounts, and an S3-compatible bucket (``zoomq.s3store``, imported only when configured).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Protocol

import redis

from zoomq.config import Settings, s3_location
from zoomq.errors import InvalidParameter, ZoomqError

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


class ArtifactStoreError(ZoomqError):
    """The store cannot be used as configured: no bucket, no access, no endpoint."""


class ArtifactStoreUnreachable(ArtifactStoreError):
    """The store did not answer (after its client's own retries): perhaps only for a while, so
    tasks retry with backoff and the web answers 503."""


def check_key(key: str) -> str:
    """Keys are relative names of safe characters: nothing from a request can climb out of the store."""
    if not _KEY.fullmatch(key) or ".." in key:
        raise InvalidParameter("artifact", key, "is not a valid artifact key")
    return key


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def exists(self, key: str) -> bool: ...

    def delete_job(self, job_id: str) -> None: ...

    def put_file(self, key: str, path: Path) -> None:
        self.put(key, Path(path).read_bytes())

    def get_file(self, key: str, path: Path) -> bool:
        data = self.get(key)
        if data is None:
            return False
        _write_atomic(Path(path), data)
        return True


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


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
        return self.client.get(self._k(key))

    def exists(self, key: str) -> bool:
        return bool(self.client.exists(self._k(key)))

    def delete_job(self, job_id: str) -> None:
        keys = list(self.client.scan_iter(match=self._k(check_key(job_id)) + "/*", count=500))
        if keys:
            self.client.delete(*keys)


class DirectoryStore(ArtifactStore):
    """Artifacts as files below ``root`` (a directory every node mounts); writes are atomic."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        _write_atomic(self._path(key), data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        os.close(fd)
        shutil.copyfile(path, tmp)
        os.replace(tmp, target)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._path(job_id), ignore_errors=True)


def open_store(settings: Settings, client: redis.Redis) -> ArtifactStore:
    """The store ``ZOOMQ_ARTIFACTS`` names (already validated by ``config.settings()``)."""
    if settings.artifacts == "redis":
        return RedisStore(client, settings.artifact_ttl)
    if settings.artifacts.startswith("s3://"):
        from zoomq.s3store import S3Store  # boto3 loads only where S3 is configured

        bucket, prefix = s3_location(settings.artifacts)
        return S3Store(bucket, prefix, label=settings.artifacts)
    return DirectoryStore(Path(settings.artifacts))
