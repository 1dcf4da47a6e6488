"""The interface every artifact store offers, and the rule for artifact keys."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from zoomq.errors import InvalidParameter

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


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
        write_atomic(Path(path), data)
        return True


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
