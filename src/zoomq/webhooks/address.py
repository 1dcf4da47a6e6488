"""The SSRF guard of webhooks: which URLs a job may name, and which addresses a delivery may reach.

A webhook is an ``https`` URL; ``http``, and hosts that are or resolve to loopback, private,
link-local, multicast, reserved or unspecified addresses (the cloud metadata addresses among them),
only for hosts listed in ``ZOOMQ_WEBHOOK_ALLOW``. A URL is checked at submit (``check_url``), and its
host resolved again at every delivery (``resolve``): the delivery connects to the address checked
here, never to a second lookup, so a name that changes its answer (DNS rebinding) gains nothing.
Numeric hosts in any form ``inet_aton`` reads (``2130706433``, ``0x7f.1``, ``127.1``) are read as
the addresses they are, and IPv4-mapped IPv6 addresses as their IPv4 address.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from zoomq.errors import InvalidParameter

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Cloud metadata services: refused like private addresses (one is link-local, one unique-local).
METADATA = (ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"))
MAX_URL = 2000
_HOST_NAME = re.compile(r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]"
                        r"([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?")
_NUMERIC = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+)){0,3}", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """A checked webhook URL: its scheme, host name (lowercase, without brackets), port and the
    path with its query, as the request line sends it."""

    scheme: str
    host: str
    port: int
    path: str


def parse_allow(value: str) -> frozenset[str]:
    """``ZOOMQ_WEBHOOK_ALLOW``: host names or addresses separated by ``,`` (lowercase, no brackets)."""
    return frozenset(h.strip().lower().strip("[]") for h in value.split(",") if h.strip())


def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` writes, in any form (dotted, decimal, hex, octal, short IPv4; IPv6,
    IPv4-mapped read as IPv4), or None for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _NUMERIC.fullmatch(host):
            return None
        try:
            address = ipaddress.ip_address(socket.inet_aton(host))  # what a resolver would make of it
        except OSError:
            return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def forbidden(address: IPAddress) -> str | None:
    """Why a delivery may not go to ``address`` without the allow list, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA:
        return "a cloud metadata address"
    for kind, refused in (("loopback", address.is_loopback), ("link-local", address.is_link_local),
                          ("multicast", address.is_multicast), ("unspecified", address.is_unspecified),
                          ("reserved", address.is_reserved), ("private", address.is_private),
                          ("not a global", not address.is_global)):
        if refused:
            return f"a {kind} address"
    return None


def check_url(url: object, allow: frozenset[str] = frozenset()) -> Target:
    """The checked ``url``, or ``InvalidParameter`` naming ``webhook`` and what to do. A host in
    ``allow`` may use ``http`` and any address; a literal address outside it must be public (a
    name is resolved, and checked, at delivery)."""
    if not isinstance(url, str) or not url:
        raise InvalidParameter("webhook", url, "must be an https URL")
    if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise InvalidParameter("webhook", url[:100], f"must be a URL of at most {MAX_URL} characters, without spaces")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise InvalidParameter("webhook", url, f"is not a valid URL ({e})") from None
    host = (parts.hostname or "").lower()
    allowed = host in allow
    if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not allowed):
        raise InvalidParameter("webhook", url, "must be an https URL (http only for hosts in ZOOMQ_WEBHOOK_ALLOW)")
    if parts.username is not None or parts.password is not None:
        raise InvalidParameter("webhook", "<URL with credentials>", "must not hold a user name or password")
    if parts.fragment:
        raise InvalidParameter("webhook", url, "must not have a #fragment")
    address = literal_address(host)
    if address is None and not _HOST_NAME.fullmatch(host):
        raise InvalidParameter("webhook", url, "must name a host (a DNS name or an IP address)")
    if address is not None and not allowed:
        why = forbidden(address)
        if why:
            raise InvalidParameter("webhook", url, f"points to {why}; only public addresses, unless the host "
                                   "is in ZOOMQ_WEBHOOK_ALLOW")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)


def resolve(target: Target, allow: frozenset[str] = frozenset()) -> str:
    """The address a delivery to ``target`` connects to, resolved now; ``InvalidParameter`` when
    the name does not resolve, or when any address it resolves to is refused (outside ``allow``)."""
    try:
        infos = socket.getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise InvalidParameter("webhook", target.host, f"does not resolve ({e})") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    if not addresses:
        raise InvalidParameter("webhook", target.host, "does not resolve to any address")
    if target.host not in allow:
        for address in addresses:
            why = forbidden(address)
            if why:
                raise InvalidParameter("webhook", target.host, f"resolves to {why} ({address}); only public "
                                       "addresses, unless the host is in ZOOMQ_WEBHOOK_ALLOW")
    first = addresses[0]
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
        first = first.ipv4_mapped
    return str(first)
