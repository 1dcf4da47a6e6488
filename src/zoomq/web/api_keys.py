"""Named API keys: who submits a job, and so who may see and cancel it.

The operator keeps one key per line in ``ZOOMQ_API_KEYS_FILE``: ``NAME SHA256-HEX [admin]``.
Only hashes are stored, and a presented key is hashed and compared with every stored hash in
constant time, so neither the file nor the timing of a refusal gives a key away. Keys are random
256-bit tokens: a fast hash is enough (no password stretching needed for such entropy).
``ZOOMQ_API_TOKEN``, a single key without a file, counts as an admin key named ``$ZOOMQ_API_TOKEN``:
no line of the file can take that name (``$`` is not allowed in one), so a file key named ``admin``
is not the token and owns none of its jobs. Jobs are owned by a key's identity: its name and the
start of its hash (``alice#1f2e...``), so a name removed from the file and given to a new key later
owns none of the old key's jobs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path

from zoomq.errors import InvalidParameter, KeysUnavailable

log = logging.getLogger(__name__)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_HASH = re.compile(r"[0-9a-f]{64}")
TOKEN_NAME = "$ZOOMQ_API_TOKEN"  # not a valid name in the file (see _NAME): the token's own identity


IDENTITY_HASH = 16  # hex digits of the key's hash in its identity: 64 bits, no two keys of a file share them


@dataclass(frozen=True)
class Key:
    name: str
    admin: bool
    identity: str = ""  # who owns the jobs this key submits (see the module docstring); the name if empty

    @property
    def owner(self) -> str:
        return self.identity or self.name


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "zq_" + secrets.token_urlsafe(32)


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name or ""):
        raise InvalidParameter("name", name, "must be 1 to 64 letters, digits, '.', '_', '@' or '-'")
    return name


def parse(text: str, source: str = "ZOOMQ_API_KEYS_FILE") -> dict[str, Key]:
    """hash → Key from the file's text; a malformed line raises naming the file and the line."""
    keys: dict[str, Key] = {}
    names: set[str] = set()
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{source} line {number}"
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "admin"):
            raise InvalidParameter(where, line.strip(), "must be NAME SHA256-OF-KEY, optionally followed by admin")
        name, hashed = words[0], words[1].lower()
        if not _NAME.fullmatch(name) or name in names:
            raise InvalidParameter(where, name, "the name must be unique: letters, digits, '.', '_', '@', '-'")
        if not _HASH.fullmatch(hashed):
            raise InvalidParameter(where, words[1], "the hash must be 64 hex digits (zoomq keys add writes it)")
        names.add(name)
        keys[hashed] = Key(name, len(words) == 3, f"{name}#{hashed[:IDENTITY_HASH]}")
    return keys


def line(name: str, key: str, admin: bool) -> str:
    return f"{check_name(name)} {digest(key)}" + (" admin" if admin else "")


class KeyRing:
    """The keys in force: the file's (read again whenever it changes) and ``ZOOMQ_API_TOKEN``'s."""

    def __init__(self, path: str = "", token: str = ""):
        self.path = Path(path) if path else None
        self.token_hash = digest(token) if token else None
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, Key] = {}
        if self.path is not None:
            self._load()

    @property
    def enabled(self) -> bool:
        """Whether any key is configured: then every job route needs one."""
        return self.path is not None or self.token_hash is not None

    def _load(self) -> dict[str, Key]:
        path = self.path
        if path is None:  # no keys file: callers check first
            return {}
        try:
            info = os.stat(path)
        except OSError as e:
            raise InvalidParameter("ZOOMQ_API_KEYS_FILE", str(path), f"cannot be read ({e.strerror})") from None
        stamp = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._keys = parse(path.read_text(), f"ZOOMQ_API_KEYS_FILE {path}")
                self._stamp = stamp
            return self._keys

    def _serving(self) -> dict[str, Key]:
        """The file's keys while serving: a file gone bad since the start is the operator's to fix,
        so its error (path, line, perhaps a name and a hash) goes to the log, and clients get a 503."""
        try:
            return self._load()
        except InvalidParameter as e:
            log.error("API keys cannot be checked: %s", e)
            raise KeysUnavailable("the server cannot check API keys right now; try again later") from None

    def find(self, presented: str | None) -> Key | None:
        """The key ``presented`` is, or None."""
        return self.by_digest(digest(presented)) if presented else None

    def by_digest(self, hashed: str | None) -> Key | None:
        """The key whose hash is ``hashed``, or None. Every stored hash is compared, in constant time."""
        if not hashed:
            return None
        given = hashed.encode()
        known = dict(self._serving()) if self.path is not None else {}
        if self.token_hash is not None:
            known.setdefault(self.token_hash, Key(TOKEN_NAME, True))
        found = None
        for hashed, key in known.items():
            if hmac.compare_digest(given, hashed.encode()):
                found = key
        return found
