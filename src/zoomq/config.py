"""All configuration in one place: ``ZOOMQ_*`` environment variables with documented defaults.

``settings()`` reads the environment each time it is called, so tests and subprocesses can change
it freely. docs/configuration.md is generated from ``VARIABLES`` (``make docs``; a test checks it
is current).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from zoomq.errors import InvalidParameter
from zoomq.queue import sentinel


@dataclass(frozen=True)
class Variable:
    name: str
    default: str
    doc: str


VARIABLES: tuple[Variable, ...] = (
    Variable("ZOOMQ_DEVICE", "CPU", "OpenVINO device that compiles and runs the models."),
    Variable(
        "ZOOMQ_INFERENCE_PRECISION",
        "auto",
        "OpenVINO inference precision: `auto` (the faster of bf16 and f32 on this CPU, measured once in "
        "about 2 s and remembered in the cache directory), `f32`, `bf16` or `f16`.",
    ),
    Variable("ZOOMQ_THREADS", "0", "OpenVINO threads per model; 0 uses every core."),
    Variable(
        "ZOOMQ_CACHE_DIR",
        "~/.cache/zoomq",
        "zoomq's own files: the precision measurement, benchmark models and, when on, compiled models "
        "(`ov-cache/<device>-<precision>/`).",
    ),
    Variable(
        "ZOOMQ_COMPILE_CACHE",
        "auto",
        "Keep compiled models on disk for the next process: `auto` keeps what a worker's warm-up compiles "
        "(each model at its native size, default guidance: one blob about the size of its weights, for a "
        "faster cold start); `on` keeps every shape any render compiles (a blob per size, so the folder grows "
        "with the sizes asked for); `off` keeps none. Skipped, with a warning, where the folder is not writable.",
    ),
    Variable(
        "ZOOMQ_WARMUP",
        "on",
        "`on`: a worker process compiles its models for their default render (native size, with guidance) "
        "as soon as it starts, in the background, so the first job does not wait for it; `off`: on the first job.",
    ),
    Variable(
        "ZOOMQ_PREVIEWS",
        "on",
        "`on`: while someone watches a job's page (or polls its preview), the worker decodes a small preview "
        "every few steps of an image or keyframe; `off`: never.",
    ),
    Variable(
        "ZOOMQ_GUIDANCE_SPLIT",
        "on",
        "`on`: a guided image or keyframe that starts while another worker of its model is idle shares its "
        "guided steps with it, each running one half of the batch; the worker also helps others that way when "
        "idle; `off`: neither.",
    ),
    Variable(
        "ZOOMQ_REDIS_URL",
        "redis://127.0.0.1:6379/0",
        "Redis for the queue, job records and artifacts; with a password `redis://:PASSWORD@HOST:PORT/DB` (an ACL "
        "user: `redis://USER:PASSWORD@…`), over TLS `rediss://…`; through Redis Sentinel, following failovers, "
        "`sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]` (`sentinels://…` for TLS; the password is "
        "the master's and the sentinels'). The password is never shown.",
    ),
    Variable(
        "ZOOMQ_REDIS_CA",
        "",
        "For `rediss://` and `sentinels://`: the PEM file of the CA that signed the Redis server's certificate; "
        "empty trusts the system's CAs. The certificate is always verified.",
    ),
    Variable(
        "ZOOMQ_ARTIFACTS",
        "redis",
        "Where images, keyframes, segments and videos live: `redis`, a directory every node mounts, or "
        "`s3://BUCKET[/PREFIX]` (an S3-compatible object store; endpoint and credentials from the AWS_* variables).",
    ),
    Variable("ZOOMQ_ARTIFACT_TTL", "604800", "Seconds artifacts are kept in Redis (7 days)."),
    Variable("ZOOMQ_JOB_TTL", "604800", "Seconds a job record is kept after the job ends (7 days); then its "
             "artifacts are deleted from every store, S3 and directories included, by the workers' retention sweep."),
    Variable("ZOOMQ_SWEEP_INTERVAL", "30", "Seconds between retention sweeps, which one worker at a time runs "
             "(expired jobs lose their artifacts within this, plus a few seconds)."),
    Variable(
        "ZOOMQ_MODELS", "", "Model folders a worker serves, separated by `:` (`zoomq worker --models` overrides)."
    ),
    Variable(
        "ZOOMQ_MODELS_DIR",
        "models",
        "Where `zoomq up` looks for prepared models (each subfolder holding a `zoomq.json`) when neither "
        "`--models` nor `ZOOMQ_MODELS` names any.",
    ),
    Variable(
        "ZOOMQ_DATA_DIR",
        "~/.local/share/zoomq",
        "`zoomq up`'s own folder: the embedded Redis's data with AOF on (`redis/`), so queued and running jobs "
        "survive a restart; the logs of every part (`logs/`); a lock (one stack per folder) and `stack.json` "
        "(what runs where, while it runs).",
    ),
    Variable(
        "ZOOMQ_VISIBILITY_TIMEOUT",
        "21600",
        "Seconds before Redis hands an unacknowledged task to another worker; a live worker renews the tasks it "
        "holds at each heartbeat, so a task may run longer than this; a dead worker's tasks come back after it "
        "(the watchdog hands their pieces on sooner). At least 3 × `ZOOMQ_HEARTBEAT`.",
    ),
    Variable("ZOOMQ_HEARTBEAT", "5", "Seconds between liveness reports of workers and running tasks."),
    Variable(
        "ZOOMQ_HEALTH_FILE",
        "",
        "A file the worker touches at every heartbeat that reaches Redis, for container health checks that must "
        "not import the app (`find FILE -newermt '-30 seconds'`); empty: none.",
    ),
    Variable(
        "ZOOMQ_STALE_AFTER",
        "45",
        "Seconds without a heartbeat after which a running piece is given to another worker.",
    ),
    Variable(
        "ZOOMQ_API_KEYS_FILE",
        "",
        "A file of named API keys, one per line: `NAME SHA256-OF-KEY [admin]` (`zoomq keys add NAME` makes a key "
        "and writes its line; only hashes are kept, and read again when the file changes). With keys, every job "
        "route needs one (`Authorization: Bearer <key>`, or the key field of the web form); a key sees, lists and "
        "cancels only its own jobs, an `admin` key all of them.",
    ),
    Variable(
        "ZOOMQ_API_TOKEN",
        "",
        "A single key, without a file: an admin key (with `ZOOMQ_API_KEYS_FILE` or alone), at least 32 "
        "characters. Its jobs are recorded under `$ZOOMQ_API_TOKEN`, a name no key in the file can have.",
    ),
    Variable(
        "ZOOMQ_KEY_ATTEMPTS",
        "10/300",
        "Wrong API keys (a bad `Authorization: Bearer` key, a bad key on the web form) allowed per client "
        "address: `N/SECONDS`, counted in Redis; past them every key from that address is refused (429 with "
        "`Retry-After`) until the window ends. `0` turns the throttle off.",
    ),
    Variable(
        "ZOOMQ_ALLOW_ANONYMOUS",
        "0",
        "`1`: `zoomq up`, `zoomq web` and `gunicorn zoomq.web.wsgi:app` may listen on an address other hosts "
        "reach (`0.0.0.0`, a LAN address) with no API key configured, open to anyone (a warning is logged at "
        "every start); the same as `--allow-anonymous`. `0`: they refuse to, until a key exists "
        "(`ZOOMQ_API_KEYS_FILE` with a key, or `ZOOMQ_API_TOKEN`). Loopback addresses are always served.",
    ),
    Variable(
        "ZOOMQ_TRUSTED_PROXIES",
        "0",
        "How many reverse proxies in front of the web server append to `X-Forwarded-For`; the client address "
        "(for anonymous rate limits and logs) is taken that many hops from its right end, and the nearest proxy's "
        "`X-Forwarded-Proto` says whether the client used HTTPS (the session cookie is then `Secure`, named "
        "`__Host-zoomq_session`). 0 ignores both headers.",
    ),
    Variable(
        "ZOOMQ_SECRET_KEY",
        "",
        "Flask's `SECRET_KEY`, for code that uses Flask's signed cookie session; zoomq's own sessions do not "
        "(a random id with its record in Redis, the CSRF token derived from it), so no secret is shared between "
        "web processes, nor kept in Redis. Empty: none, and Flask's cookie session stays off.",
    ),
    Variable(
        "ZOOMQ_SESSION_TTL",
        "43200",
        "Seconds a browser stays signed in after entering a key on a form (12 hours); signing out ends it "
        "sooner. The session's record in Redis expires then.",
    ),
    Variable(
        "ZOOMQ_RATE_LIMIT",
        "30/60",
        "Job submissions allowed per API key (per client address without one): `N/SECONDS`, counted in Redis; "
        "`0` turns the limit off.",
    ),
    Variable(
        "ZOOMQ_MAX_QUEUED",
        "1000",
        "Jobs waiting in the queue, all submitters together, beyond which submissions are refused (503 with "
        "`Retry-After`); 0: no cap.",
    ),
    Variable(
        "ZOOMQ_MAX_QUEUED_PER_KEY",
        "20",
        "Unfinished jobs one API key (or one client address without a key) may have; more are refused (429 with "
        "`Retry-After`); 0: no cap.",
    ),
    Variable("ZOOMQ_MAX_STEPS", "150", "Most denoising steps per image or keyframe a queued job may ask for."),
    Variable(
        "ZOOMQ_MAX_PIXELS",
        "1048576",
        "Most pixels per image or keyframe (width × height) a queued job may ask for: 1024 × 1024.",
    ),
    Variable("ZOOMQ_MAX_KEYFRAMES", "120", "Most keyframes per zoom job."),
    Variable("ZOOMQ_MAX_INTERPOLATION_FRAMES", "240", "Most interpolated frames between two keyframes."),
    Variable(
        "ZOOMQ_MAX_FRAMES",
        "9000",
        "Most frames in one zoom video (keyframes − 1) × interpolation frames + 1: 5 minutes at 30 fps.",
    ),
    Variable("ZOOMQ_MAX_UPLOAD", "16777216", "Largest web request in bytes (init images, masks): 16 MiB."),
    Variable("ZOOMQ_MAX_PROMPT", "1000", "Longest prompt or negative prompt, in characters, a queued job may have."),
    Variable(
        "ZOOMQ_LOG_FORMAT",
        "text",
        "How zoomq processes log: `text`, readable lines, or `json`, one JSON object per line (`time`, "
        "`level`, `event`, and for pieces `job`, `piece`, `worker`, `seconds`, `outcome`).",
    ),
    Variable(
        "ZOOMQ_WEBHOOK_SECRET",
        "",
        "The key that signs webhooks (Standard Webhooks): `whsec_` and the base64 of at least 24 random bytes. "
        "Empty: jobs naming a `webhook` are refused. Never shown, never stored in Redis.",
    ),
    Variable(
        "ZOOMQ_WEBHOOK_ALLOW",
        "",
        "Hosts (names or addresses, separated by `,`) a webhook may reach over `http` and at loopback, private, "
        "link-local or other non-public addresses; every other host must be `https` and public.",
    ),
    Variable(
        "ZOOMQ_WEBHOOK_BACKOFF",
        "5,30,120,600,3600",
        "Seconds before each retry of a webhook delivery that got no 2xx answer in time, separated by `,`; "
        "one attempt plus one retry per number.",
    ),
    # Set by `zoomq worker` for its Celery pool processes (WorkerIdentity.environment), rarely by hand.
    Variable(
        "ZOOMQ_WORKER_NAME",
        "",
        "The worker's name in the worker registry, its logs and its leases; empty: `zoomq-<pid>@<host>`. "
        "Set by `zoomq worker` (from `--name`) for its pool processes; rarely set by hand.",
    ),
    Variable(
        "ZOOMQ_WORKER_QUEUES",
        "",
        "The queues the worker listens to, separated by `,`: announced in the registry, and its pool processes "
        "warm up only the models of those queues; empty: not known, every served model is warmed up. Set by "
        "`zoomq worker` for its pool processes; rarely set by hand.",
    ),
    Variable(
        "ZOOMQ_WORKER_CONCURRENCY",
        "0",
        "The worker's pool processes, or `PxS`: P processes with S render slots each (threads sharing one "
        "compiled model), announced in the registry; the slots also set the compiled models' OpenVINO streams; "
        "0: not known. Set by `zoomq worker` (from `--concurrency`) for its pool processes; rarely set by hand.",
    ),
)

URL_FORMS = ("redis://[[USER]:PASSWORD@]HOST[:PORT][/DB], rediss://… for TLS (with ZOOMQ_REDIS_CA), "
             "unix://[[USER]:PASSWORD@]PATH, or sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT…]/MASTER[/DB] "
             "(sentinels://… for TLS)")


_PRECISIONS = ("auto", "f32", "bf16", "f16")
LOG_FORMATS = ("text", "json")


Environment = Mapping[str, str]


@dataclass(frozen=True)
class Settings:
    """The parsed ``ZOOMQ_*`` variables, one field per variable (``ZOOMQ_`` + the field's name in capitals).

    The fields have no defaults of their own: ``VARIABLES`` holds them, and ``Settings.defaults()``
    parses them as ``settings()`` parses the environment.
    """

    device: str
    inference_precision: str
    threads: int
    cache_dir: Path
    redis_url: str
    artifacts: str
    artifact_ttl: int
    job_ttl: int
    sweep_interval: int  # seconds between retention sweeps over the cluster
    models: tuple[Path, ...]
    visibility_timeout: int
    heartbeat: int
    stale_after: int
    api_token: str
    secret_key: str
    session_ttl: int  # seconds a browser session lasts
    rate_limit: tuple[int, int]  # (submissions, per seconds); (0, 0) is off
    key_attempts: tuple[int, int]  # (wrong keys, per seconds) from one address; (0, 0) is off
    max_upload: int
    max_prompt: int
    api_keys_file: str
    trusted_proxies: int
    allow_anonymous: bool  # serve a non-loopback address with no key configured (zoomq.web.exposure)
    max_queued: int  # 0: no cap
    max_queued_per_key: int
    max_steps: int
    max_pixels: int
    max_keyframes: int
    max_interpolation_frames: int
    max_frames: int
    compile_cache: str  # auto (the warm-up's shapes), on (every shape) or off
    warmup: bool
    previews: bool
    guidance_split: bool  # share guided steps with an idle worker (worker.split)
    log_format: str
    redis_ca: str  # CA file for rediss:// (zoomq.queue.connection)
    health_file: str
    models_dir: Path
    data_dir: Path
    webhook_secret: str  # whsec_…: signs webhooks (zoomq.webhooks.signing); empty: no webhooks
    webhook_allow: frozenset[str]  # hosts a webhook may reach over http and at non-public addresses
    webhook_backoff: tuple[float, ...]  # seconds before each retry of a delivery

    @classmethod
    def defaults(cls) -> Settings:
        """Every variable at its default from ``VARIABLES``, whatever the environment holds."""
        return _parse({})

    @property
    def ov_cache_dir(self) -> Path:
        # One folder per device and precision: OpenVINO 2026.4 gives a blob compiled with an f32
        # hint and one compiled with a bf16 hint the same cache key, and loading the f32 blob
        # under the bf16 hint rendered NaN on this project's machines.
        return self.cache_dir / "ov-cache" / f"{self.device}-{self.inference_precision}".lower()


@dataclass(frozen=True)
class WorkerIdentity:
    """What ``zoomq worker`` tells its pool processes about the worker they belong to (``ZOOMQ_WORKER_*``)."""

    name: str
    queues: tuple[str, ...]  # empty: not known (a plain `celery worker`)
    concurrency: tuple[int, int]  # (processes, render slots in each); (0, 1): not known

    @property
    def processes(self) -> int:
        return self.concurrency[0]

    @property
    def slots(self) -> int:
        """Pieces each process renders at once, on one compiled copy of each model."""
        return self.concurrency[1]

    def environment(self) -> dict[str, str]:
        """The variables that hand this identity to child processes: ``worker_identity()`` reads them back."""
        concurrency = str(self.processes) if self.slots == 1 else f"{self.processes}x{self.slots}"
        return {"ZOOMQ_WORKER_NAME": self.name, "ZOOMQ_WORKER_QUEUES": ",".join(self.queues),
                "ZOOMQ_WORKER_CONCURRENCY": concurrency}


def _get(env: Environment, name: str) -> str:
    """The variable's value in ``env``, or its default from ``VARIABLES`` when unset or blank."""
    default = next(v.default for v in VARIABLES if v.name == name)
    return env.get(name, "").strip() or default


def _int(env: Environment, name: str, minimum: int) -> int:
    raw = _get(env, name)
    try:
        value = int(raw)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise InvalidParameter(name, raw, f"must be a whole number ≥ {minimum}")
    return value


def _visibility_timeout(env: Environment) -> int:
    """``ZOOMQ_VISIBILITY_TIMEOUT``: a worker renews its held tasks every ``ZOOMQ_HEARTBEAT``, so the
    timeout must leave room for a renewal or two that come late (a slow Redis)."""
    value, heartbeat = _int(env, "ZOOMQ_VISIBILITY_TIMEOUT", 1), _int(env, "ZOOMQ_HEARTBEAT", 1)
    if value < 3 * heartbeat:
        raise InvalidParameter("ZOOMQ_VISIBILITY_TIMEOUT", str(value),
                               f"must be at least 3 × ZOOMQ_HEARTBEAT ({3 * heartbeat} s): workers renew the tasks "
                               "they hold at each heartbeat; raise it or lower ZOOMQ_HEARTBEAT")
    return value


def _rate(env: Environment, name: str) -> tuple[int, int]:
    raw = _get(env, name)
    if raw == "0":
        return (0, 0)
    count, _, seconds = raw.partition("/")
    if not (count.isdigit() and seconds.isdigit() and int(count) > 0 and int(seconds) > 0):
        raise InvalidParameter(name, raw, "must be N/SECONDS (for example 30/60), or 0 for no limit")
    return (int(count), int(seconds))


def _flag(env: Environment, name: str) -> bool:
    raw = _get(env, name)
    if raw not in ("0", "1"):
        raise InvalidParameter(name, raw, "must be 1 (yes) or 0 (no)")
    return raw == "1"


MIN_TOKEN = 32


def _api_token(env: Environment) -> str:
    """``ZOOMQ_API_TOKEN``: a guessable token would open every job, so a short one is refused (never shown)."""
    token = _get(env, "ZOOMQ_API_TOKEN")
    if token and len(token) < MIN_TOKEN:
        raise InvalidParameter(
            "ZOOMQ_API_TOKEN", f"{len(token)} characters",
            f"must be at least {MIN_TOKEN} characters; make one with "
            "python -c 'import secrets; print(secrets.token_urlsafe(32))', or use named keys (zoomq keys add)",
        )
    return token


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")


def s3_location(value: str) -> tuple[str, str]:
    """``s3://BUCKET[/PREFIX]`` as (bucket, prefix without slashes at its ends); a malformed one
    raises ``InvalidParameter`` naming ZOOMQ_ARTIFACTS. Bucket names follow S3's rules."""
    bucket, _, prefix = value[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/")
    if not bucket:
        raise InvalidParameter("ZOOMQ_ARTIFACTS", value, "must name a bucket: s3://BUCKET or s3://BUCKET/PREFIX")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or _is_ip(bucket):
        raise InvalidParameter(
            "ZOOMQ_ARTIFACTS", value,
            f"bucket name {bucket!r} is not valid: 3 to 63 lowercase letters, digits, dots and hyphens, "
            "starting and ending with a letter or digit",
        )
    if prefix and (not _PREFIX.fullmatch(prefix) or ".." in prefix):
        raise InvalidParameter(
            "ZOOMQ_ARTIFACTS", value,
            f"prefix {prefix!r} is not valid: names of letters, digits, '.', '_' and '-' separated by single '/'",
        )
    return bucket, prefix


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _artifacts(env: Environment) -> str:
    """``ZOOMQ_ARTIFACTS``, validated and normalized: `redis`, an absolute directory or s3://BUCKET[/PREFIX]."""
    raw = _get(env, "ZOOMQ_ARTIFACTS")
    if raw == "redis":
        return raw
    if raw.startswith("s3://"):
        bucket, prefix = s3_location(raw)
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
    path = os.path.expanduser(raw)
    if not os.path.isabs(path):
        raise InvalidParameter(
            "ZOOMQ_ARTIFACTS", raw, "must be `redis`, an absolute directory path or s3://BUCKET[/PREFIX]"
        )
    return path


def _redis_url(env: Environment) -> str:
    """``ZOOMQ_REDIS_URL``, with a scheme redis-py knows, or a Sentinel one read whole; a bad one is
    refused without its password."""
    url = _get(env, "ZOOMQ_REDIS_URL")
    if sentinel.is_sentinel(url):
        sentinel.parse(url, redacted(url))
    elif url.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
        raise InvalidParameter("ZOOMQ_REDIS_URL", redacted(url), f"must be {URL_FORMS}")
    return url


_QUERY_PASSWORD = re.compile(r"(?i)[?&]password=([^&]*)")


def redacted(url: str) -> str:
    """The URL with its password (in the address, or a ``password=`` query) shown as ``***``, whatever
    characters it holds: ``/``, ``#``, ``?``, ``@``, ``:`` and percent-escapes included.

    The address's password runs to the last ``@``, so a password holding ``/``, ``#`` or ``?`` (which
    end the address for ``urlsplit``) is hidden whole; where a URL could be read two ways, every part
    either reading makes a password is hidden (more than the password at worst, never less)."""
    scheme, sep, _ = url.partition("://")
    start = len(scheme) + len(sep) if sep else 0
    spans = []
    at = url.rfind("@", start)
    if at >= 0:
        user, colon, _ = url[start:at].partition(":")
        # Without a colon the one word may well be a password written in the user's place; a "user"
        # holding what ends an address is part of a password too.
        shown_user = bool(colon) and not re.search(r"[/?#@]", user)
        spans.append((start + len(user) + 1 if shown_user else start, at))
    spans += [m.span(1) for m in _QUERY_PASSWORD.finditer(url, start)]
    merged: list[tuple[int, int]] = []
    for begin, end in sorted(spans):
        if merged and begin <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((begin, end))
    pieces, position = [], 0
    for begin, end in merged:
        pieces += [url[position:begin], "***"]
        position = end
    return "".join(pieces) + url[position:]


def is_set(name: str) -> bool:
    """Whether the variable is set (to something other than blanks), rather than defaulted."""
    return bool(os.environ.get(name, "").strip())


def log_format() -> str:
    """``ZOOMQ_LOG_FORMAT``, validated: logging is set up before (and without) the other settings."""
    return _log_format(os.environ)


def _log_format(env: Environment) -> str:
    value = _get(env, "ZOOMQ_LOG_FORMAT").lower()
    if value not in LOG_FORMATS:
        raise InvalidParameter("ZOOMQ_LOG_FORMAT", value, f"must be {' or '.join(LOG_FORMATS)}")
    return value


def worker_identity() -> WorkerIdentity:
    """This worker's name, queues and concurrency, from ``ZOOMQ_WORKER_*`` (set by ``zoomq worker``)."""
    env = os.environ
    return WorkerIdentity(
        name=_get(env, "ZOOMQ_WORKER_NAME") or f"zoomq-{os.getpid()}@{socket.gethostname()}",
        queues=tuple(q for q in (q.strip() for q in _get(env, "ZOOMQ_WORKER_QUEUES").split(",")) if q),
        concurrency=_worker_concurrency(env),
    )


def _worker_concurrency(env: Environment) -> tuple[int, int]:
    """(processes, slots) of ``ZOOMQ_WORKER_CONCURRENCY``: ``P`` (one slot each) or ``PxS``."""
    raw = _get(env, "ZOOMQ_WORKER_CONCURRENCY")
    found = re.fullmatch(r"([0-9]+)(?:[xX]([1-9][0-9]*))?", raw)
    if found is None:
        raise InvalidParameter("ZOOMQ_WORKER_CONCURRENCY", raw,
                               "must be a whole number ≥ 0 of processes, or PxS (P processes with S slots each)")
    return int(found[1]), int(found[2] or 1)


def settings() -> Settings:
    """The current settings, validated; a bad value raises ``InvalidParameter`` naming the variable."""
    return _parse(os.environ)


def _parse(env: Environment) -> Settings:
    """The settings ``env`` gives, every unset variable at its default: the one parser of ``VARIABLES``."""
    precision = _get(env, "ZOOMQ_INFERENCE_PRECISION").lower()
    if precision not in _PRECISIONS:
        raise InvalidParameter(
            "ZOOMQ_INFERENCE_PRECISION", precision, f"must be one of {', '.join(_PRECISIONS)}"
        )
    artifacts = _artifacts(env)
    device = _get(env, "ZOOMQ_DEVICE")
    cache = _get(env, "ZOOMQ_COMPILE_CACHE").lower()
    if cache not in ("auto", "on", "off"):
        raise InvalidParameter("ZOOMQ_COMPILE_CACHE", cache, "must be auto, on or off")
    warmup = _get(env, "ZOOMQ_WARMUP").lower()
    if warmup not in ("on", "off"):
        raise InvalidParameter("ZOOMQ_WARMUP", warmup, "must be on or off")
    previews = _get(env, "ZOOMQ_PREVIEWS").lower()
    if previews not in ("on", "off"):
        raise InvalidParameter("ZOOMQ_PREVIEWS", previews, "must be on or off")
    split = _get(env, "ZOOMQ_GUIDANCE_SPLIT").lower()
    if split not in ("on", "off"):
        raise InvalidParameter("ZOOMQ_GUIDANCE_SPLIT", split, "must be on or off")
    return Settings(
        log_format=_log_format(env),
        guidance_split=split == "on",
        warmup=warmup == "on",
        previews=previews == "on",
        compile_cache=cache,
        device=device,
        inference_precision=precision,
        threads=_int(env, "ZOOMQ_THREADS", 0),
        cache_dir=Path(os.path.expanduser(_get(env, "ZOOMQ_CACHE_DIR"))),
        redis_url=_redis_url(env),
        redis_ca=os.path.expanduser(_get(env, "ZOOMQ_REDIS_CA")),
        artifacts=artifacts,
        artifact_ttl=_int(env, "ZOOMQ_ARTIFACT_TTL", 1),
        job_ttl=_int(env, "ZOOMQ_JOB_TTL", 1),
        sweep_interval=_int(env, "ZOOMQ_SWEEP_INTERVAL", 1),
        models=tuple(Path(p).expanduser() for p in _get(env, "ZOOMQ_MODELS").split(os.pathsep) if p),
        models_dir=Path(_get(env, "ZOOMQ_MODELS_DIR")).expanduser(),
        data_dir=Path(_get(env, "ZOOMQ_DATA_DIR")).expanduser(),
        visibility_timeout=_visibility_timeout(env),
        heartbeat=_int(env, "ZOOMQ_HEARTBEAT", 1),
        health_file=os.path.expanduser(_get(env, "ZOOMQ_HEALTH_FILE")),
        stale_after=_int(env, "ZOOMQ_STALE_AFTER", 2),
        api_token=_api_token(env),
        secret_key=_get(env, "ZOOMQ_SECRET_KEY"),
        session_ttl=_int(env, "ZOOMQ_SESSION_TTL", 60),
        rate_limit=_rate(env, "ZOOMQ_RATE_LIMIT"),
        key_attempts=_rate(env, "ZOOMQ_KEY_ATTEMPTS"),
        max_upload=_int(env, "ZOOMQ_MAX_UPLOAD", 1024),
        max_prompt=_int(env, "ZOOMQ_MAX_PROMPT", 1),
        api_keys_file=os.path.expanduser(_get(env, "ZOOMQ_API_KEYS_FILE")),
        trusted_proxies=_int(env, "ZOOMQ_TRUSTED_PROXIES", 0),
        allow_anonymous=_flag(env, "ZOOMQ_ALLOW_ANONYMOUS"),
        max_queued=_int(env, "ZOOMQ_MAX_QUEUED", 0),
        max_queued_per_key=_int(env, "ZOOMQ_MAX_QUEUED_PER_KEY", 0),
        max_steps=_int(env, "ZOOMQ_MAX_STEPS", 1),
        max_pixels=_int(env, "ZOOMQ_MAX_PIXELS", 64 * 64),
        max_keyframes=_int(env, "ZOOMQ_MAX_KEYFRAMES", 2),
        max_interpolation_frames=_int(env, "ZOOMQ_MAX_INTERPOLATION_FRAMES", 1),
        max_frames=_int(env, "ZOOMQ_MAX_FRAMES", 2),
        webhook_secret=_webhook_secret(env),
        webhook_allow=frozenset(h.strip().lower().strip("[]") for h in _get(env, "ZOOMQ_WEBHOOK_ALLOW").split(",")
                                if h.strip()),  # as zoomq.webhooks.address.parse_allow reads it
        webhook_backoff=_backoff(env),
    )


def _webhook_secret(env: Environment) -> str:
    """``ZOOMQ_WEBHOOK_SECRET``, checked to be a ``whsec_`` secret (a bad one is refused, never shown)."""
    secret = _get(env, "ZOOMQ_WEBHOOK_SECRET")
    if secret:
        from zoomq.webhooks.signing import key_of

        key_of(secret)
    return secret


def _backoff(env: Environment) -> tuple[float, ...]:
    raw = _get(env, "ZOOMQ_WEBHOOK_BACKOFF")
    try:
        pauses = tuple(float(x) for x in raw.split(","))
    except ValueError:
        pauses = (-1.0,)
    if not all(0 < p <= 86400 for p in pauses) or len(pauses) > 20:
        raise InvalidParameter("ZOOMQ_WEBHOOK_BACKOFF", raw, "must be up to 20 numbers of seconds (0 < s ≤ 86400) "
                               "separated by commas, for example 5,30,120,600,3600")
    return pauses


# docs/configuration.md's table is generated from VARIABLES between these markers (`make docs`);
# tests/test_docs.py fails while it differs from what markdown_table() makes now.
DOCS_BEGIN = "<!-- generated from zoomq.config.VARIABLES: make docs -->"
DOCS_END = "<!-- end generated -->"


def markdown_table() -> str:
    """Every variable as a row of a Markdown table: its name, its default (— when empty) and its help."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for v in VARIABLES:
        default = f"`{v.default}`" if v.default else "—"
        meaning = " ".join(v.doc.split()).replace("|", "\\|")  # a bare | would end the cell
        rows.append(f"| `{v.name}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def with_markdown_table(document: str, name: str = "document") -> str:
    """``document`` with what lies between ``DOCS_BEGIN`` and ``DOCS_END`` replaced by ``markdown_table()``."""
    begin, end = document.find(DOCS_BEGIN), document.find(DOCS_END)
    if begin < 0 or end < begin:
        found = "markers in the wrong order" if begin >= 0 and end >= 0 else "no markers"
        raise InvalidParameter(name, found,
                               f"must hold the lines {DOCS_BEGIN} and {DOCS_END}, in that order, around the table")
    return f"{document[:begin]}{DOCS_BEGIN}\n{markdown_table()}{document[end:]}"


if __name__ == "__main__":
    # `python -m zoomq.config`: print the table; `python -m zoomq.config FILE`: regenerate FILE's table in place.
    import sys

    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
        path.write_text(with_markdown_table(path.read_text(), str(path)))
    else:
        sys.stdout.write(markdown_table())
