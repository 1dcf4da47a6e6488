"""Every connection to Redis, made in one place from the settings, and its failures in one line.

``ZOOMQ_REDIS_URL`` may carry a password (``redis://:PASSWORD@host``, or ``redis://USER:PASSWORD@host``
for an ACL user), and ``rediss://`` turns TLS on, with the server's certificate checked against
``ZOOMQ_REDIS_CA`` (else the system's CAs). A ``sentinel://`` URL (``sentinels://`` with TLS) makes
clients that ask the sentinels for the master at each new connection, so a failover is followed.
The redis-py clients (job records, registry, artifacts) and the Celery broker take their options from
here, so no caller can forget them; a refused or failed connection becomes a ``BrokerUnavailable``
naming the setting to fix, never the password.
"""

from __future__ import annotations

import os
import re
import ssl

import redis
import redis.sentinel

from zoomq.config import Settings, redacted
from zoomq.errors import BrokerRefused, BrokerUnavailable
from zoomq.queue import sentinel


def uses_tls(url: str) -> bool:
    return url.lower().startswith(("rediss://", "sentinels://"))


def _has_password(url: str) -> bool:
    return redacted(url) != url


def tls_options(url: str, ca: str = "") -> dict:
    """redis-py's (and kombu's) TLS options for a ``rediss://`` or ``sentinels://`` URL: the certificate
    is always verified, against the CA file ``ca`` when given; none for a plain URL."""
    if not uses_tls(url):
        return {}
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_ca_certs": os.path.expanduser(ca) if ca else None}


# A Redis that vanishes without a word (a partitioned node) must not hang a call for the kernel's
# TCP timeout (many minutes): calls give up after these, and idle connections are checked first.
TIMEOUTS = {"socket_connect_timeout": 10, "socket_timeout": 60, "socket_keepalive": True,
            "health_check_interval": 30}


def client_for(url: str, ca: str = "", **kwargs) -> redis.Redis:
    """A redis-py client of ``url`` with its TLS options and ``TIMEOUTS``; ``kwargs`` override them.
    For a Sentinel URL, a client of the master the sentinels name now and after any failover."""
    if sentinel.is_sentinel(url):
        return _master_client(sentinel.parse(url, redacted(url)), ca, {**TIMEOUTS, **kwargs})
    return redis.Redis.from_url(url, **tls_options(url, ca), **{**TIMEOUTS, **kwargs})


def _master_client(parsed: sentinel.SentinelURL, ca: str, options: dict) -> redis.Redis:
    """Every connection of the returned client's pool asks the sentinels where the master is as it
    connects; one that finds a demoted master (``READONLY``) is dropped, so the next command reconnects."""
    sentinels = redis.sentinel.Sentinel(list(parsed.sentinels), sentinel_kwargs=_reach_sentinels(parsed, ca, options))
    return sentinels.master_for(parsed.master, redis_class=redis.Redis, db=parsed.db, **parsed.credentials(),
                                **_sentinel_tls(parsed, ca), **options)


def _reach_sentinels(parsed: sentinel.SentinelURL, ca: str, options: dict) -> dict:
    """How to talk to the sentinels themselves: the URL's credentials and TLS, ``options``' socket timeouts."""
    timeouts = {k: v for k, v in options.items() if k in ("socket_connect_timeout", "socket_timeout")}
    return {**parsed.credentials(), **_sentinel_tls(parsed, ca), **timeouts}


def _sentinel_tls(parsed: sentinel.SentinelURL, ca: str) -> dict:
    """redis-py's keywords for TLS (``from_url`` reads ``rediss://`` itself; ``Sentinel`` needs ``ssl``)."""
    return {"ssl": True, **tls_options("rediss://", ca)} if parsed.tls else {}


def client(s: Settings, **kwargs) -> redis.Redis:
    """A redis-py client of ``ZOOMQ_REDIS_URL``, with ``ZOOMQ_REDIS_CA`` for TLS."""
    return client_for(s.redis_url, s.redis_ca, **kwargs)


def text(reply: object) -> str:
    """A Redis reply (a value, a member, a field) as text. zoomq's clients return bytes (they do
    not set ``decode_responses``); redis-py's types allow str, and for some commands scored pairs."""
    if isinstance(reply, bytes):
        return reply.decode()
    if isinstance(reply, str):
        return reply
    raise TypeError(f"not a text reply from Redis: {reply!r}")


def broker_url(s: Settings) -> str:
    """The Celery broker's URL: ``ZOOMQ_REDIS_URL``, or for Sentinel kombu's ``sentinel://…;sentinel://…``."""
    if sentinel.is_sentinel(s.redis_url):
        return sentinel.parse(s.redis_url, redacted(s.redis_url)).broker_url()
    return s.redis_url


def celery_options(s: Settings) -> dict:
    """Celery settings that give the broker connection the clients' TLS options and timeouts; for
    Sentinel, the master's name and how to reach the sentinels (kombu's Sentinel transport)."""
    options = tls_options(s.redis_url, s.redis_ca)
    transport: dict = {"visibility_timeout": s.visibility_timeout, **TIMEOUTS}
    if sentinel.is_sentinel(s.redis_url):
        parsed = sentinel.parse(s.redis_url, redacted(s.redis_url))
        transport |= {"master_name": parsed.master, "sentinel_kwargs": _reach_sentinels(parsed, s.redis_ca, TIMEOUTS)}
    return {"broker_transport_options": transport, **({"broker_use_ssl": options} if options else {})}


def check(s: Settings, timeout: float = 10) -> None:
    """Raise ``BrokerRefused`` when Redis answers but refuses zoomq (password, TLS, CA file). An
    unreachable Redis passes: a worker started before its Redis waits for it."""
    try:
        with client(s, socket_connect_timeout=timeout, socket_timeout=timeout) as probe:
            probe.ping()
    except redis.RedisError as e:
        error = unavailable(e, s)
        if isinstance(error, BrokerRefused):
            raise error from None


def unavailable(error: BaseException, s: Settings, unreachable_hint: str = "start Redis or set ZOOMQ_REDIS_URL"
                ) -> BrokerUnavailable:
    """What a failed connection to ``ZOOMQ_REDIS_URL`` means and what to do about it, in one line
    without the password: ``BrokerRefused`` for credentials and TLS, ``BrokerUnavailable`` else."""
    url, ca = redacted(s.redis_url), s.redis_ca
    where = f"Redis at ZOOMQ_REDIS_URL={url}"
    chain = _chain(error)
    said = _one_line(error)
    if any(isinstance(e, redis.sentinel.MasterNotFoundError) for e in chain):
        said = said.rpartition(" - ")[2]  # redis-py's message lists whole clients, then the last error
        if said.startswith("auth:"):  # redis-py took the sentinels' refusal for one sentinel unreachable
            given = "refused the user name or password in it" if _has_password(s.redis_url) else "want a password"
            return BrokerRefused(f"the sentinels of ZOOMQ_REDIS_URL={url} {given} ({said}); put the password of "
                                 "the sentinels and of Redis (zoomq gives both the same one) in ZOOMQ_REDIS_URL: "
                                 "sentinel://:PASSWORD@HOST:PORT,HOST:PORT/MASTER/DB")
        return BrokerUnavailable(f"the sentinels of ZOOMQ_REDIS_URL={url} name no reachable master ({said}); "
                                 "check the master's name in the URL (the one in their `sentinel monitor` line), "
                                 "that they run, and that a failover is not under way")
    if any(isinstance(e, redis.AuthenticationError) for e in chain):
        if _has_password(s.redis_url):
            return BrokerRefused(f"{where} refused the user name or password in it ({said}); "
                                 "put the right ones in ZOOMQ_REDIS_URL")
        form = ("sentinel://:PASSWORD@HOST:PORT,HOST:PORT/MASTER/DB" if sentinel.is_sentinel(s.redis_url) else
                "redis://:PASSWORD@HOST:PORT/DB, or redis://USER:PASSWORD@HOST:PORT/DB for an ACL user")
        return BrokerRefused(f"{where} wants a password, and the URL has none; put it in ZOOMQ_REDIS_URL: {form}")
    if any(isinstance(e, redis.exceptions.NoPermissionError) for e in chain):
        return BrokerRefused(f"{where}: its user may not run what zoomq needs ({said}); "
                             "give that ACL user all keys, channels and commands (~* &* +@all)")
    if uses_tls(s.redis_url) and ca and not os.path.isfile(os.path.expanduser(ca)):
        return BrokerRefused(f"ZOOMQ_REDIS_CA={ca}: no such file; point it at the PEM file of the CA that "
                             f"signed the TLS certificate of Redis at {url}")
    tls_error = next((e for e in chain if isinstance(e, ssl.SSLError)), None)
    if isinstance(tls_error, ssl.SSLCertVerificationError):
        reason = tls_error.verify_message or _one_line(tls_error)
        if "mismatch" in reason:
            return BrokerRefused(f"the TLS certificate of {where} is not for that host ({reason}); put a name or "
                                 "address the certificate holds in ZOOMQ_REDIS_URL")
        if ca:
            return BrokerRefused(f"the TLS certificate of {where} is not trusted by ZOOMQ_REDIS_CA={ca} ({reason}); "
                                 "point ZOOMQ_REDIS_CA at the PEM file of the CA that signed it")
        return BrokerRefused(f"the TLS certificate of {where} is not trusted by this system's CAs ({reason}); set "
                             "ZOOMQ_REDIS_CA to the PEM file of the CA that signed it")
    if tls_error is not None:
        return BrokerRefused(f"TLS with {where} failed ({_one_line(tls_error)}); check that the port serves TLS, "
                             "or use redis:// for a Redis without TLS")
    hint = unreachable_hint
    if not uses_tls(s.redis_url) and re.search(r"reset by peer|closed by server", said, re.I):
        hint += "; if that port serves TLS, use rediss:// (and ZOOMQ_REDIS_CA)"
    return BrokerUnavailable(f"cannot reach Redis at {url} ({said}); {hint}")


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions it was raised from or while handling (redis-py and kombu wrap theirs)."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__
