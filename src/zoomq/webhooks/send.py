"""One webhook POST, to the address the SSRF guard checked (``address.resolve``).

The connection goes to that IP address; the ``Host`` header, TLS's SNI and the certificate check
stay on the URL's name. No redirect is followed, the whole attempt has a short timeout, and at most
``MAX_BODY`` bytes of the answer are read.
"""

from __future__ import annotations

import http.client
import socket
import ssl
from dataclasses import dataclass

from zoomq.webhooks.address import Target

TIMEOUT = 10.0
MAX_BODY = 4096


@dataclass(frozen=True)
class Outcome:
    """What an attempt got: the status code (None when none came) or the error, in one line."""

    status: int | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class _Pinned(http.client.HTTPConnection):
    def __init__(self, target: Target, ip: str, timeout: float):
        super().__init__(target.host, target.port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, target: Target, ip: str, timeout: float, context: ssl.SSLContext):
        super().__init__(target.host, target.port, timeout=timeout, context=context)
        self._ip = ip
        self._tls = context

    def connect(self) -> None:
        raw = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)  # SNI and the name checked


def post(target: Target, ip: str, body: bytes, headers: dict[str, str], timeout: float = TIMEOUT,
         context: ssl.SSLContext | None = None) -> Outcome:
    """POST ``body`` to ``target`` through ``ip``; never raises for what the network or receiver does."""
    connection: http.client.HTTPConnection
    if target.scheme == "https":
        connection = _PinnedTLS(target, ip, timeout, context or ssl.create_default_context())
    else:
        connection = _Pinned(target, ip, timeout)
    try:
        connection.request("POST", target.path, body=body, headers={
            **headers, "content-type": "application/json", "user-agent": "zoomq-webhooks"})
        response = connection.getresponse()
        response.read(MAX_BODY)
        return Outcome(response.status, None)
    except (OSError, http.client.HTTPException) as e:
        return Outcome(None, f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
    finally:
        connection.close()
