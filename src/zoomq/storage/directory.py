"""Artifacts as files in a directory that every node mounts (NFS, a shared volume)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from zoomq.errors import ArtifactStoreError
from zoomq.storage.base import CHUNK, Artifact, ArtifactStore, check_key, write_atomic


class DirectoryStore(ArtifactStore):
    """Artifacts as files below ``root`` (a directory every node mounts); writes are atomic."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        write_atomic(self._path(key), data)

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

    def open(self, key: str) -> Artifact | None:
        path = self._path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        if not path.is_file():
            return None

        def read(start: int, stop: int) -> Iterator[bytes]:
            """The file from ``start`` (a seek, not a read) to ``stop``, a chunk at a time."""
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_ino != stat.st_ino:  # replaced since: not the size we answered
                    raise ArtifactStoreError(f"artifact {key} was replaced while being sent; ask again")
                f.seek(start)
                left = stop - start
                while left > 0:
                    chunk = f.read(min(CHUNK, left))
                    if not chunk:
                        raise ArtifactStoreError(f"artifact {key} was shortened while being sent; ask again")
                    left -= len(chunk)
                    yield chunk

        return Artifact(stat.st_size, datetime.fromtimestamp(stat.st_mtime, timezone.utc), read)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def delete_job(self, job_id: str) -> None:
        """The job's folder, never a link out of the store: ``check_key`` keeps the name one plain
        component below the root, and a link in its place is unlinked, not followed."""
        path = self._path(job_id)
        if path.is_symlink():
            path.unlink(missing_ok=True)
            return
        shutil.rmtree(path, ignore_errors=True)
