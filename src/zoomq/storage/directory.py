"""Artifacts as files in a directory that every node mounts (NFS, a shared volume)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from zoomq.storage.base import ArtifactStore, check_key, write_atomic


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

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete_job(self, job_id: str) -> None:
        shutil.rmtree(self._path(job_id), ignore_errors=True)
