"""Whether the web server may listen where it is asked to: an address other hosts reach (``0.0.0.0``,
``::``, a LAN address) is served only when an API key is configured, since without one every caller
sees, submits and cancels every job; ``--allow-anonymous`` or ``ZOOMQ_ALLOW_ANONYMOUS=1`` opens it on
purpose, with a warning at every start. Loopback is always served (``make demo``, a developer's
``zoomq up``). ``zoomq up`` and ``zoomq web`` check their ``--host``; ``zoomq.web.wsgi`` checks the
sockets gunicorn listens on.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterable
from pathlib import Path

from zoomq.config import Settings
from zoomq.errors import InvalidParameter, OpenWithoutKeys
from zoomq.web import api_keys

log = logging.getLogger(__name__)

UNIX = "unix:"  # how listening_hosts() names a Unix socket: only this machine reaches it


def is_loopback(host: str) -> bool:
    """Whether only this machine reaches ``host``: 127.0.0.0/8, ``::1``, a Unix socket, or a name that
    resolves to loopback addresses alone (``localhost``). A wildcard (``0.0.0.0``, ``::``, empty) is not."""
    host = host.strip()
    if host.startswith(UNIX):
        return True
    host = host.strip("[]").split("%")[0]
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # a name that resolves to nothing: the server will fail to listen on it anyway
    return bool(found) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in found)


def has_keys(s: Settings) -> bool:
    """Whether any API key is configured: ``ZOOMQ_API_TOKEN``, or a key in ``ZOOMQ_API_KEYS_FILE`` (an
    unreadable or malformed file raises, naming it)."""
    if s.api_token:
        return True
    if not s.api_keys_file:
        return False
    try:
        text = Path(s.api_keys_file).read_text()
    except OSError as e:
        raise InvalidParameter("ZOOMQ_API_KEYS_FILE", s.api_keys_file, f"cannot be read ({e.strerror})") from None
    return bool(api_keys.parse(text, f"ZOOMQ_API_KEYS_FILE {s.api_keys_file}"))


def check(s: Settings, hosts: Iterable[str], where: str, allow_anonymous: bool = False) -> None:
    """Raise ``OpenWithoutKeys`` when one of ``hosts`` is reached from other machines and no key is
    configured, unless anonymous access is allowed (``allow_anonymous``, or ``ZOOMQ_ALLOW_ANONYMOUS=1``):
    then log a warning. ``where`` names what the addresses come from (``--host``, gunicorn's bind)."""
    reachable = [h for h in hosts if not is_loopback(h)]
    if not reachable or has_keys(s):
        return
    shown = " ".join(h or "''" for h in reachable)
    if allow_anonymous or s.allow_anonymous:
        log.warning("serving %s %s with no API key: anyone who reaches it sees, submits and cancels every job "
                    "(allowed by --allow-anonymous or ZOOMQ_ALLOW_ANONYMOUS=1; make keys with zoomq keys add)",
                    where, shown)
        return
    raise OpenWithoutKeys(
        f"{where} {shown} is reached from other hosts and no API key is configured, so anyone could see, submit "
        "and cancel every job: make a key with `zoomq keys add NAME --file FILE` and set ZOOMQ_API_KEYS_FILE=FILE "
        "(or ZOOMQ_API_TOKEN), listen on 127.0.0.1, or serve it open on purpose with --allow-anonymous "
        "(ZOOMQ_ALLOW_ANONYMOUS=1)")


def listening_hosts() -> list[str]:
    """The addresses this process's listening sockets are bound to (a gunicorn worker's, inherited from
    its master), Unix sockets as ``unix:PATH``; empty when it has none yet (``gunicorn --preload``
    loads the app before it listens)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:  # no /proc: try the usual range
        fds = list(range(3, 1024))
    hosts = []
    for fd in fds:
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    continue
                if sock.family == socket.AF_UNIX:
                    hosts.append(f"{UNIX}{sock.getsockname()}")
                elif sock.family in (socket.AF_INET, socket.AF_INET6):
                    hosts.append(sock.getsockname()[0])
        except OSError:
            continue  # closed meanwhile (listdir's own descriptor), or not ours to read
    return hosts
