"""Standard Webhooks signatures: receivers verify them with the specification's libraries.

The signed content is ``{webhook-id}.{webhook-timestamp}.{body}``; the key is the base64 after
``whsec_`` in ``ZOOMQ_WEBHOOK_SECRET``; the ``webhook-signature`` header is ``v1,`` and the base64
of its HMAC-SHA256. A few lines with ``hmac`` rather than a dependency for every node.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from zoomq.errors import InvalidParameter

PREFIX = "whsec_"
MIN_KEY_BYTES = 24


def key_of(secret: str) -> bytes:
    """The HMAC key of a ``whsec_…`` secret; ``InvalidParameter`` naming ZOOMQ_WEBHOOK_SECRET (never
    showing it) when it is not one."""
    if not secret.startswith(PREFIX):
        raise InvalidParameter("ZOOMQ_WEBHOOK_SECRET", "<hidden>", f"must start with {PREFIX} followed by base64; "
                               "make one with python -c \"import base64, secrets; "
                               "print('whsec_' + base64.b64encode(secrets.token_bytes(32)).decode())\"")
    try:
        key = base64.b64decode(secret[len(PREFIX):], validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter("ZOOMQ_WEBHOOK_SECRET", "<hidden>", f"the part after {PREFIX} must be base64") from None
    if len(key) < MIN_KEY_BYTES:
        raise InvalidParameter("ZOOMQ_WEBHOOK_SECRET", "<hidden>",
                               f"must hold at least {MIN_KEY_BYTES} random bytes (base64 after {PREFIX})")
    return key


def headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one delivery attempt of ``body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key_of(secret), signed, hashlib.sha256).digest()
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": "v1," + base64.b64encode(digest).decode()}
