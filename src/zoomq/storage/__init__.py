"""The artifact store: images, keyframes, segments and videos that every node can reach.

Tasks carry ids, never images; what they make goes here under a key ``<job id>/<name>``. Three
stores stand behind one small interface (``base.ArtifactStore``): Redis (the default, with an
expiry), a directory every node mounts, and an S3-compatible bucket (imported only when configured).
"""

from __future__ import annotations

from pathlib import Path

import redis

from zoomq.config import Settings, s3_location
from zoomq.storage.base import ArtifactStore
from zoomq.storage.directory import DirectoryStore
from zoomq.storage.redis_store import RedisStore


def open_store(settings: Settings, client: redis.Redis) -> ArtifactStore:
    """The store ``ZOOMQ_ARTIFACTS`` names (already validated by ``config.settings()``)."""
    if settings.artifacts == "redis":
        return RedisStore(client, settings.artifact_ttl)
    if settings.artifacts.startswith("s3://"):
        from zoomq.storage.s3 import S3Store  # boto3 loads only where S3 is configured

        bucket, prefix = s3_location(settings.artifacts)
        return S3Store(bucket, prefix, label=settings.artifacts)
    return DirectoryStore(Path(settings.artifacts))


__all__ = ["ArtifactStore", "DirectoryStore", "RedisStore", "open_store"]
