"""``sentinel://`` URLs, read and checked: the sentinels to ask, the master's name, the database and the
credentials, so every client follows a failover. Pure parsing (no Redis, no settings), so that
``zoomq.config`` can refuse a bad URL up front, naming the part that is wrong.

``sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB]``; ``sentinels://…`` speaks TLS to
the sentinels and to Redis alike. The password is the master's and the sentinels' (Bitnami's chart and
``requirepass`` plus ``sentinel auth-pass`` set them so); a port left out is the sentinels' 26379.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import quote, unquote

from zoomq.errors import InvalidParameter

SCHEMES = ("sentinel", "sentinels")
DEFAULT_PORT = 26379
FORM = "sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]…]/MASTER[/DB] (sentinels://… for TLS)"
_HOST = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::(?P<port>[^:]*))?$")
_MASTER = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``sentinel://`` URL. ``repr`` leaves the password out."""

    sentinels: tuple[tuple[str, int], ...]
    master: str
    db: int
    username: str | None
    password: str | None = field(repr=False)
    tls: bool

    def credentials(self) -> dict:
        """redis-py's ``username``/``password`` keywords, the ones given."""
        return {k: v for k, v in (("username", self.username), ("password", self.password)) if v is not None}

    def broker_url(self) -> str:
        """kombu's form: one ``sentinel://[[USER]:PASSWORD@]HOST:PORT/DB`` a sentinel, joined by ``;`` (kombu
        reads the credentials and the database from the first). TLS is Celery's ``broker_use_ssl``."""
        userinfo = ""
        if self.password is not None:
            userinfo = f"{quote(self.username or '', safe='')}:{quote(self.password, safe='')}@"
        hosts = (f"[{h}]" if ":" in h else h for h, _ in self.sentinels)
        return ";".join(f"sentinel://{userinfo}{host}:{port}/{self.db}"
                        for host, (_, port) in zip(hosts, self.sentinels))


def is_sentinel(url: str) -> bool:
    return url.partition("://")[0].lower() in SCHEMES


def parse(url: str, shown: str) -> SentinelURL:
    """``url`` read, or ``InvalidParameter`` on ``ZOOMQ_REDIS_URL`` naming the part that is wrong;
    ``shown`` is the URL as errors may show it (its password hidden)."""
    def bad(rule: str) -> InvalidParameter:
        return InvalidParameter("ZOOMQ_REDIS_URL", shown, f"{rule}; the form is {FORM}")

    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise bad("a sentinel URL starts with sentinel:// or sentinels://")
    at = rest.rfind("@")  # a password may hold '/', '@' and the rest: it runs to the last '@'
    username = password = None
    if at >= 0:
        user, colon, secret = rest[:at].partition(":")
        if not colon:
            raise bad("the credentials before '@' must be :PASSWORD or USER:PASSWORD")
        username, password = (unquote(user) or None), unquote(secret)
        rest = rest[at + 1:]
    if "?" in rest or "#" in rest:
        raise bad("a sentinel URL takes no ?options or #fragment")
    hosts, _, path = rest.partition("/")
    sentinels = tuple(_sentinel(entry, bad) for entry in hosts.split(","))
    master, _, db_text = path.partition("/")
    if not master:
        raise bad("the URL names no master: put the name the sentinels monitor (e.g. mymaster) after the hosts")
    if not _MASTER.match(master):
        raise bad(f"the master name {master!r} may hold only letters, digits, '.', '_' and '-'")
    db_text = db_text.rstrip("/")
    if db_text and not (db_text.isdigit() and int(db_text) < 16):
        raise bad(f"the database {db_text!r} after the master's name must be a number from 0 to 15")
    return SentinelURL(sentinels, master, int(db_text or 0), username, password, scheme.lower() == "sentinels")


def _sentinel(entry: str, bad) -> tuple[str, int]:
    if not entry:
        raise bad("a sentinel address is empty: list HOST:PORT,HOST:PORT… with no empty one")
    match = _HOST.match(entry)
    if not match:
        raise bad(f"the sentinel address {entry!r} is not HOST:PORT")
    port_text = match["port"]
    if port_text is None:
        port = DEFAULT_PORT
    elif port_text.isdigit() and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise bad(f"the port of sentinel address {entry!r} must be a number from 1 to 65535")
    return (match["v6"] or match["name"]), port
