"""The interface every artifact store offers, and the rule for artifact keys."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from zoomq.errors import InvalidParameter

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def check_key(key: str) -> str:
    """Keys are relative names of safe characters: nothing from a request can climb out of the store."""
    if not _KEY.fullmatch(key) or ".." in key:
        raise InvalidParameter("artifact", key, "is not a valid artifact key")
    return key


#: How much of an artifact is read at a time when it is streamed: the web process holds about this
#: much per download, whatever the artifact's size.
CHUNK = 256 * 1024


@dataclass(frozen=True)
class Artifact:
    """An artifact found in a store, not yet read: its size, when it was written (None where the
    store does not say) and ``chunks(start, stop)``, its bytes ``[start, stop)`` a ``CHUNK`` at a
    time. Nothing is read until the chunks are iterated, and a range reads only that range."""

    size: int
    modified: datetime | None
    _read: Callable[[int, int], Iterator[bytes]]

    def chunks(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        stop = self.size if stop is None else min(stop, self.size)
        if start >= stop:
            return iter(())
        return self._read(start, stop)


class ArtifactStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def open(self, key: str) -> Artifact | None:
        """The artifact at ``key``, to be streamed; None when there is none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove the artifact at ``key``; nothing happens when there is none."""
        ...

    def delete_job(self, job_id: str) -> None:
        """Remove every artifact under ``<job id>/``; nothing happens when there is none."""
        ...

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
