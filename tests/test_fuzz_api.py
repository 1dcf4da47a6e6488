"""Fuzzing the JSON API (issue #15). Schemathesis drives every operation of the served OpenAPI
document with all its checks; hypothesis puts any JSON value into any field of ``POST /api/jobs``,
under any Content-Type, truncated and oversized. Never a 5xx; every refusal a 4xx that names the
field; nothing enqueued or recorded for a refused request. Both are bounded and derandomized for CI."""

from __future__ import annotations

import base64
import io
import json
import math
import re
from collections import Counter
from contextlib import contextmanager
from traceback import format_exception
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import events, from_schema
from schemathesis.openapi.checks import RejectedPositiveData, UseAfterFree
from werkzeug.serving import make_server

from support.browser import serving
from zoomq.errors import InvalidParameter
from zoomq.render.request import MAX_SIDE
from zoomq.web import spec as spec_mod
from zoomq.web.submission import IMAGE_FIELDS, KINDS, UPLOADS, ZOOM_FIELDS
from zoomq.webhooks.address import check_url

# Work limits low enough that the products JSON Schema cannot state (frames, pixels) are reached;
# no caps on the queue and no rate limit, so every refusal is about the request itself.
LIMITS: dict[str, Any] = dict(max_steps=50, max_keyframes=8, max_interpolation_frames=24, max_frames=120,
                              max_prompt=200, max_queued=0, max_queued_per_key=0, max_upload=256 * 1024,
                              rate_limit=(0, 0))
TOKEN = "fuzz-admin-key"
FLOAT_MAX = 1.7976931348623157e308


@pytest.fixture
def fuzz_client(make_client):
    return make_client(**LIMITS)


# -- what the server holds ------------------------------------------------------------------------

def redis_state(r) -> dict:
    """Key → (type, size) for every key but the rate limiter's, with the content of every hash
    (job records, submission counters): what enqueueing or recording a job would change."""
    keys = sorted(k for k in r.scan_iter(count=1000) if not k.startswith(b"zoomq:rate:"))
    with r.pipeline(transaction=False) as p:
        for k in keys:
            p.type(k)
        types = [t.decode() for t in p.execute()]
    read = {"list": "llen", "zset": "zcard", "set": "scard", "hash": "hgetall", "string": "strlen"}
    with r.pipeline(transaction=False) as p:
        for k, t in zip(keys, types):
            getattr(p, read.get(t, "exists"))(k)
        values = p.execute()
    return {k: (t, v) for k, t, v in zip(keys, types, values)}


def job_keys(state: dict) -> set[bytes]:
    return {k for k in state if k.startswith(b"zoomq:job:") and k.count(b":") == 2}


def strict_json(data: bytes):
    """``data`` parsed as standard JSON: NaN and Infinity, which Python writes, are refused."""
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(data, parse_constant=refuse)


# -- images ---------------------------------------------------------------------------------------

def image_bytes(fmt: str, size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=fmt)
    return buffer.getvalue()


_rgb = st.tuples(*[st.integers(0, 255)] * 3)
_side = st.integers(64, 320)
image_files = st.builds(image_bytes, st.sampled_from(["PNG", "JPEG", "WEBP"]), st.tuples(_side, _side), _rgb)


def as_text(data: bytes, data_url: bool) -> str:
    text = base64.b64encode(data).decode()
    return f"data:image/png;base64,{text}" if data_url else text


# What the "image-data" format promises: a PNG, JPEG or WebP image, base64 or a data: URL.
image_data = st.builds(as_text, image_files, st.booleans())
schemathesis.openapi.format("image-data", image_data)


@st.composite
def broken_images(draw) -> str:
    """Valid image files cut short or with bytes changed, and base64 of things that are no image."""
    data = bytearray(draw(image_files))
    how = draw(st.sampled_from(["truncate", "flip", "garbage"]))
    if how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    else:
        data = bytearray(draw(st.binary(max_size=64)))
    return as_text(bytes(data), draw(st.booleans()))


def image_size(text: str) -> tuple[int, int] | None:
    """The size of the PNG, JPEG or WebP image ``text`` holds (as the API reads it), or None."""
    try:
        data = base64.b64decode(text.partition(",")[2] if text.startswith("data:") else text, validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return image.size if image.format in ("PNG", "JPEG", "WEBP") else None
    except (ValueError, OSError):
        return None


# -- the rules JSON Schema cannot state -------------------------------------------------------------

def cross_field_faults(body: dict, models: dict, s) -> set[str]:
    """Fields a 400 may name for a body that the schema accepts: the rules across fields that the
    document states in words (ImageJob and ZoomJob descriptions). Empty when the body is fine."""
    def given(name, default):
        value = body.get(name)
        return default if value is None else value

    # No waiver for the uploads: the document states them (base64 of at least 24 bytes, image-data),
    # and schema-valid data carries a real image (the "image-data" format above); bytes that are no
    # image, which no schema can tell apart, are only ever negative data.
    faults: set[str] = set()
    if body.get("webhook") is not None:  # refused without ZOOMQ_WEBHOOK_SECRET, or by the SSRF guard
        try:
            if not s.webhook_secret:
                raise InvalidParameter("webhook", body["webhook"], "webhooks are off")
            check_url(body["webhook"], s.webhook_allow)
        except InvalidParameter:
            faults.add("webhook")
    if body.get("kind", "image") == "image":
        inpainting = models[body["model"]]["task"] == "inpainting"
        init = image_size(body["init_image"]) if body.get("init_image") is not None else None
        steps = int(given("steps", (models[body["model"]].get("defaults") or {}).get("steps", 20)))
        strength = given("strength", 1.0 if inpainting else 0.8 if init else None)
        if strength is not None and int(steps * strength) < 1:
            faults.add("strength")
        native = models[body["model"]]["native_size"]
        width = int(given("width", init[0] - init[0] % 8 if init else native))
        height = int(given("height", init[1] - init[1] % 8 if init else native))
        faults |= {name for name, side in (("width", width), ("height", height)) if not 64 <= side <= MAX_SIDE}
        if width * height > s.max_pixels:
            faults.add("width")
        return faults
    size, mask_width = int(given("size", 512)), int(given("mask_width", 128))
    if not mask_width < size / 2:
        faults.add("mask_width")
    elif body.get("seam") is not None and body["seam"] > (size - 2 * mask_width) // 4:
        faults.add("seam")
    keyframes = int(given("keyframes", 3))
    rows = [row["keyframe"] for row in body.get("schedule") or []]
    if len(set(rows)) != len(rows) or any(k >= keyframes for k in rows):
        faults.add("schedule")
    if (keyframes - 1) * int(given("interpolation_frames", 30)) + 1 > s.max_frames:
        faults.add("interpolation_frames")
    return faults


# -- schemathesis --------------------------------------------------------------------------------

def served_schema(client, config: dict, base_url: str | None = None):
    """The document this app serves, which must be ``spec()`` for its settings and workers, loaded
    by schemathesis: to call the app in process, or the server at ``base_url``."""
    web = client.application.extensions["zoomq"]
    served = client.get("/api/openapi.json").get_json()
    assert served == spec_mod.spec(web.settings, web.producer.models())
    loaded = SchemathesisConfig.from_dict(config)
    if base_url:
        return schemathesis.openapi.from_url(base_url + "/api/openapi.json", config=loaded)
    return schemathesis.openapi.from_wsgi("/api/openapi.json", client.application, config=loaded)


def reused_key(case, response) -> bool:
    """A 422 for an ``Idempotency-Key`` sent before with another body: the key answers its first
    job only, whatever this body is (state across requests, which no schema states)."""
    return (case.operation.label == "POST /api/jobs" and response.status_code == 422
            and bool((case.headers or {}).get("Idempotency-Key")))


def purged_read(case, response, web) -> bool:
    """A read of a job that an earlier request of the run purged (``DELETE ?purge=1``): its artifacts
    answer 410 Gone, as the document says; which job was purged is state across requests."""
    job_id = (case.path_parameters or {}).get("job_id")
    if case.method != "GET" or response.status_code != 410 or not job_id:
        return False
    try:
        record = web.producer.jobs.get(str(job_id))
    except Exception:  # noqa: BLE001 — not a job id: no waiver
        return False
    return bool(record and record.get("purged"))


def exempt(failure, case, response, web) -> bool:
    """The four waivers left, each only in its exact circumstances and each for a rule no schema can
    state: a schema-valid body that breaks a rule across fields the document can state only in
    words, refused with a 400 that names nothing but such fields (JSON Schema has no arithmetic
    across fields: "less than half the size", width × height, steps × strength, the frame count,
    schedule rows below the keyframe count); an ``Idempotency-Key`` reused for another body (422,
    ``reused_key``); an artifact of a job purged earlier in the run (410, ``purged_read``); and a job
    read after DELETE that shows it ``cancelled``: DELETE cancels, and the record stays readable (a
    second DELETE is a 409) until ZOOMQ_JOB_TTL, by design, which OpenAPI has no way to say."""
    if isinstance(failure, RejectedPositiveData) and (reused_key(case, response) or purged_read(case, response, web)):
        return True
    if isinstance(failure, RejectedPositiveData) and case.operation.label == "POST /api/jobs":
        faults = cross_field_faults(case.body, web.producer.models(), web.settings)
        named = {e["field"].split("[")[0] for e in response.json().get("errors", [])}
        return response.status_code == 400 and bool(named) and named <= faults
    if isinstance(failure, UseAfterFree) and case.operation.label == "GET /api/jobs/{job_id}":
        return response.json().get("state") == "cancelled"
    return False


def schemathesis_run(client, config: dict, base_url: str | None = None) -> tuple[list[str], Counter]:
    """Every phase and check of ``schemathesis run`` (examples, coverage, fuzzing, stateful) on the
    app, in process or at ``base_url``. Returns the failures, described, and the cases sent per
    operation. Around every call: a 4xx must leave Redis as it was, a 202 add one job, and a body
    that breaks a rule stated in words be refused."""
    web = client.application.extensions["zoomq"]
    r = web.producer.redis
    schema = served_schema(client, config, base_url)
    problems: list[str] = []
    before: dict = {}

    def before_call(context, case, kwargs):
        before["state"] = redis_state(r)

    def after_call(context, case, response):
        where = f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:300]}: {response.status_code}"
        if (case.operation.label == "POST /api/jobs" and case.meta is not None
                and case.meta.generation.mode.is_positive and isinstance(case.body, dict)
                and cross_field_faults(case.body, web.producer.models(), web.settings)
                and response.status_code != 400 and not reused_key(case, response)):
            problems.append(f"a body breaking a rule stated in words was not refused: {where}")
        after = redis_state(r)
        if 400 <= response.status_code < 500 and after != before["state"]:
            problems.append(f"a refused request changed Redis: {where}")
        replayed = {k.lower(): v for k, v in response.headers.items()}.get("idempotent-replayed") == ["true"]
        if response.status_code == 202 and len(job_keys(after) - job_keys(before["state"])) != (0 if replayed else 1):
            problems.append(f"an accepted job is not one new job record: {where}")
        if replayed and after != before["state"]:
            problems.append(f"a repeated Idempotency-Key changed Redis: {where}")

    @schema.hook
    def filter_failure(context, failure, case, response) -> bool:
        return not exempt(failure, case, response, web)

    for hook in (before_call, after_call):  # hooks of every schema: registered for this run only
        schemathesis.hook(hook)
    try:
        stream = list(from_schema(schema).execute())
    finally:
        for hook in (before_call, after_call):
            schemathesis.hooks.GLOBAL_HOOK_DISPATCHER.unregister(hook)
    sent: Counter[str] = Counter()
    for event in stream:
        if isinstance(event, (events.ScenarioFinished, events.FuzzScenarioFinished)):
            for node in event.recorder.cases.values():
                sent[node.value.operation.label] += 1
            for case_id, checks in event.recorder.checks.items():
                case = event.recorder.cases[case_id].value
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        problems.append(f"{check.name}: {case.method} {case.formatted_path} {case.query} "
                                        f"{str(case.body)[:300]}\n{failure.title}: {failure.message[:500]}")
        elif isinstance(event, events.NonFatalError):
            problems.append(f"schemathesis could not test {event.label}: {''.join(format_exception(event.value))}")
        elif isinstance(event, events.FatalError):
            problems.append(f"schemathesis stopped: {''.join(format_exception(event.exception))}")
        elif isinstance(event, events.EngineFinished):
            problems.extend(str(f) for f in event.failures)
    return problems, sent


@contextmanager
def http_server(app):
    """``app`` on a loopback port, one request at a time, for as long as the block runs."""
    with serving(make_server("127.0.0.1", 0, app, threaded=False)) as url:
        yield url


SCHEMATHESIS = {"seed": 15, "generation": {"max-examples": 25}}


def test_schemathesis_every_operation(fuzz_client):
    """Every operation with every schemathesis check (positive and negative data, conformance of
    statuses, headers, content types and bodies, 405s with Allow, stateful use after DELETE),
    in process, no API keys configured."""
    problems, sent = schemathesis_run(fuzz_client, SCHEMATHESIS)
    assert not problems, "\n\n".join(dict.fromkeys(problems))
    operations = {f"{method.upper()} {path}" for path, ops in spec_mod.template()["paths"].items() for method in ops
                  if method != "parameters"}
    # Schemathesis leaves out the document's own URL (served_schema reads it).
    assert set(sent) == operations - {"GET /api/openapi.json"} and min(sent.values()) >= 10, sent


def test_schemathesis_with_an_api_key(make_client):
    """The same with a key configured and sent, so also that no job route ignores a missing or
    wrong key (ignored_auth). Over loopback HTTP: schemathesis 4.32's in-process (WSGI) transport
    cannot send ignored_auth's probes (it passes them max_redirects, which werkzeug refuses)."""
    client = make_client(api_token=TOKEN, **LIMITS)
    config = {**SCHEMATHESIS, "generation": {"max-examples": 10}, "auth": {"openapi": {"apiKey": {"bearer": TOKEN}}}}
    with http_server(client.application) as url:
        problems, sent = schemathesis_run(client, config, base_url=url)
    assert not problems, "\n\n".join(dict.fromkeys(problems))
    assert sent["POST /api/jobs"] >= 10 and sent["DELETE /api/jobs/{job_id}"] >= 10, sent


# -- hypothesis: any JSON in any field ------------------------------------------------------------

# Parameter → the JSON type it takes: the web's own tables, and what they leave out.
TYPES = {**IMAGE_FIELDS, **ZOOM_FIELDS, "kind": str, "model": str, "prompt": str, "init_image": str, "mask": str,
         "schedule": list}
PARAMS = set(TYPES)
IMAGE = {"prompt": "a lighthouse", "model": "t2i", "steps": 2}
ZOOM = {"kind": "zoom", "prompt": "a spiral", "model": "inpaint", "keyframes": 2, "interpolation_frames": 2,
        "steps": 2}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=10**400)
    | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
schedules = st.lists(
    st.fixed_dictionaries({"keyframe": st.integers(-1, 3) | json_values, "prompt": st.text(max_size=8) | json_values},
                          optional={"negative_prompt": st.text(max_size=8) | json_values, "colour": json_values}),
    max_size=3,
)
# A value of each JSON type in turn, with the edges of what the checks convert: integers past every
# float, non-finite and integral floats, texts that read as other types, images whole and broken.
field_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 600) | st.sampled_from([2**63, 2**64 - 1, 2**64, 10**309, -(10**309), 10**400]),
    st.floats() | st.sampled_from([1.5, 2.0, -0.0, 1e-300, 1e308, math.nan, math.inf, -math.inf]),
    st.text(max_size=12) | image_data | broken_images() | st.sampled_from(
        ["", " ", "\u3000", "1", "1.5", "true", "null", "NaN", "default", "out", "image", "zoom", "t2i", "inpaint",
         "data:,", "data:image/png;base64,!!"]),
    st.lists(json_values, max_size=3) | schedules,
    st.dictionaries(st.text(max_size=6), json_values, max_size=3),
)


def well_typed(name: str, value) -> bool:
    """Whether ``value`` has a JSON type parameter ``name`` takes (null: the default)."""
    kind = TYPES[name]
    if value is None:
        return name not in ("kind", "model", "prompt")
    if kind is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if kind is float:
        return not isinstance(value, bool) and (
            (isinstance(value, int) and abs(value) <= FLOAT_MAX) or (isinstance(value, float) and math.isfinite(value)))
    return isinstance(value, kind)


def must_name(body: dict) -> set[str]:
    """Fields of ``body`` a refusal must name whatever else is wrong: a wrong kind, a field that
    is no parameter of the job's kind, or of a JSON type the field never takes. (The mask width is
    checked against a valid size only, the seam against valid size and mask width.)"""
    kind = body.get("kind", "image")
    effective = kind if isinstance(kind, str) and kind in KINDS else "image"
    allowed = {"kind", "model", "prompt", *(ZOOM_FIELDS if effective == "zoom" else IMAGE_FIELDS),
               *UPLOADS[effective], *(("schedule",) if effective == "zoom" else ())}
    names = {name for name, value in body.items() if name not in allowed or not well_typed(name, value)}
    if effective != kind:
        names.add("kind")
    if "size" in body:
        names.discard("mask_width")
    if "size" in body or "mask_width" in body:
        names.discard("seam")
    return names


@st.composite
def submissions(draw) -> dict:
    """One POST /api/jobs: a query, headers and a body, and what the body holds (``fields``, when
    it is a JSON object sent as JSON) so the answer can be judged."""
    query = draw(st.sampled_from(["", "?dry_run=1", "?dry_run=0", "?dry_run=2", "?dry_run=", "?dry_run=1&x=["]))
    json_type = st.sampled_from(["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
    other_type = st.sampled_from(["", "text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                  "multipart/form-data; boundary=zz", "application/octet-stream", "image/png",
                                  "application/merge-patch+json", "application/json; charset=utf-16",
                                  "application/json; charset=nope"]) | st.text(
        st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
    shape = draw(st.sampled_from(["object"] * 6 + ["value", "truncated", "bytes", "nested", "oversized", "form"]))
    fields = None
    if shape in ("object", "truncated", "oversized"):
        body = dict(draw(st.sampled_from([IMAGE, ZOOM])))
        for name in draw(st.lists(st.sampled_from(sorted(body)), max_size=2)):
            body.pop(name, None)
        own = sorted({"kind", "model", "prompt", *(ZOOM_FIELDS if "kind" in body else IMAGE_FIELDS),
                      *UPLOADS["zoom" if "kind" in body else "image"], *(("schedule",) if "kind" in body else ())})
        names = st.sampled_from(own) | st.sampled_from(sorted(PARAMS)) | st.text(max_size=10)
        body.update(draw(st.dictionaries(names, field_values, min_size=1, max_size=4)))
        data = json.dumps(body).encode()  # an oversized body gets its long prompt in the test (short reprs)
        if shape == "truncated":
            data = data[: draw(st.integers(0, len(data) - 1))]
        content_type = draw(json_type if shape != "truncated" else json_type | other_type)
        fields = body if shape == "object" and content_type.lower().startswith("application/json") else None
    elif shape == "value":
        value = draw(json_values)
        data, content_type = json.dumps(value).encode(), draw(json_type)
        fields = value if isinstance(value, dict) else None
    elif shape == "bytes":
        data, content_type = draw(st.binary(max_size=200)), draw(json_type | other_type)
    elif shape == "nested":
        depth = draw(st.integers(1, 50_000))
        data, content_type = ("[" * depth + "]" * draw(st.sampled_from([0, depth]))).encode(), draw(json_type)
    else:  # a form, with uploads
        names = st.sampled_from(sorted(PARAMS | {"schedule_keyframe", "schedule_prompt"})) | st.text(max_size=10)
        texts = st.text(max_size=12) | st.sampled_from(["zoom", "image", "t2i", "inpaint", "2", "64", "on"])
        data = draw(st.dictionaries(names, texts, max_size=6))
        for name in draw(st.lists(st.sampled_from(["init_image", "mask", "other"]), max_size=2)):
            content = draw(image_files | st.binary(max_size=64))
            data[name] = (io.BytesIO(content), draw(st.sampled_from(["a.png", "", "x"])))
        content_type = draw(st.sampled_from(["multipart/form-data", "application/x-www-form-urlencoded"]))
    return {"query": query, "data": data, "content_type": content_type, "fields": fields, "shape": shape}


def regression(body, query: str = "", content_type: str = "application/json", shape: str = "object") -> dict:
    """An example the fuzzer once found (issue #15), kept so every run tries it."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    fields = body if isinstance(body, dict) else None
    return {"query": query, "data": data, "content_type": content_type, "fields": fields, "shape": shape}


@given(sent=submissions())
@example(sent=regression({**IMAGE, "model": {"a": 1}}))  # unhashable: was a TypeError, 500
@example(sent=regression({**IMAGE, "model": [1]}))
@example(sent=regression(b"[" * 50_000, shape="nested"))  # was a RecursionError, 500
@example(sent=regression({**IMAGE, "steps": 10**400}))  # past every float: was an OverflowError, 500
@example(sent=regression({**ZOOM, "gif": "no"}))  # was accepted
@example(sent=regression({**ZOOM, "schedule": 0}))  # was accepted as no schedule
@example(sent=regression({**ZOOM, "schedule": [{"keyframe": 1.0, "prompt": "y"}]}))  # JSON's 1.0 is 1: was refused
@settings(max_examples=1500, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
def test_any_submission_is_accepted_or_a_4xx_naming_the_field(fuzz_client, sent):
    """Never a 5xx. A 4xx is JSON with an error, and leaves the queues and job records as they
    were; a 400 names known fields, among them every field of a kind or type never accepted; 413
    for a body over ZOOMQ_MAX_UPLOAD; 202 (or 200 for a dry run) enqueues exactly one job (or none)."""
    r = fuzz_client.producer.redis
    before = redis_state(r)
    data = sent["data"]
    if sent["shape"] == "oversized":
        data = json.dumps({**json.loads(data), "prompt": "x" * LIMITS["max_upload"]}).encode()
    headers = {"Content-Type": sent["content_type"]} if isinstance(data, bytes) else {}
    kwargs = {"content_type": sent["content_type"]} if not isinstance(data, bytes) else {}
    response = fuzz_client.post("/api/jobs" + sent["query"], data=data, headers=headers, **kwargs)
    answer = f"{response.status_code} {response.get_data()[:600]!r} for {sent['shape']} {sent['content_type']!r}"
    assert response.status_code in (200, 202, 400, 413), answer
    if response.status_code >= 400:
        body = strict_json(response.get_data())
        assert isinstance(body.get("error"), str), answer
        assert redis_state(r) == before, answer
    bad_flag = sent["query"] in ("?dry_run=2", "?dry_run=")  # refused before the body is read
    if response.status_code == 413:
        assert sent["shape"] == "oversized" or len(data) > LIMITS["max_upload"], answer
        return
    assert sent["shape"] != "oversized" or bad_flag, answer
    dry_run = "dry_run=1" in sent["query"]
    if response.status_code == 400:
        given = set(sent["fields"] or ())
        named = {field if field in given else re.split(r"[\[.]", field)[0] for field in
                 (e["field"] for e in body["errors"])}
        assert named and named <= PARAMS | {"body", "dry_run"} | given, answer
        if bad_flag:
            assert named == {"dry_run"}, answer
        elif sent["fields"] is not None:
            assert must_name(sent["fields"]) <= named, answer
        return
    assert response.status_code == (200 if dry_run else 202), answer
    if sent["fields"] is not None:
        assert not must_name(sent["fields"]), answer
    added = job_keys(redis_state(r)) - job_keys(before)
    assert len(added) == (0 if dry_run else 1), answer


# -- the document ---------------------------------------------------------------------------------

def test_the_served_document_carries_this_servers_limits_models_and_keys(make_client):
    """/api/openapi.json is spec(): the limits, the models served, keys required; the file holds
    the defaults, optional keys and open model names."""
    client = make_client(api_token=TOKEN, **LIMITS)
    doc = client.get("/api/openapi.json").get_json()
    image, zoom = (doc["components"]["schemas"][k]["properties"] for k in ("ImageJob", "ZoomJob"))
    assert image["model"]["enum"] == zoom["model"]["enum"] == ["inpaint", "t2i"]
    assert image["steps"]["maximum"] == zoom["steps"]["maximum"] == 50
    assert image["prompt"]["maxLength"] == zoom["schedule"]["items"]["properties"]["prompt"]["maxLength"] == 200
    assert zoom["keyframes"]["maximum"] == 8 and zoom["interpolation_frames"]["maximum"] == 24
    zoom_job = doc["components"]["schemas"]["ZoomJob"]  # its default, 30, is over this server's 24: to be given
    assert "interpolation_frames" in zoom_job["required"] and zoom["interpolation_frames"]["type"] == ["integer"]
    assert zoom["size"]["maximum"] == 1024 and zoom["mask_width"]["maximum"] == 511
    assert doc["paths"]["/api/jobs"]["post"]["security"] == [{"apiKey": []}]
    assert doc["paths"]["/api/health"]["get"].get("security") is None

    template = spec_mod.template()
    assert template["paths"]["/api/jobs"]["post"]["security"] == [{}, {"apiKey": []}]
    assert "enum" not in template["components"]["schemas"]["ImageJob"]["properties"]["model"]
    assert template["components"]["schemas"]["ZoomJob"]["properties"]["size"]["maximum"] == 1024  # the default


def test_the_document_states_every_image_and_zoom_parameter():
    """Every parameter the JSON API takes is in the document, and nothing else."""
    schemas = spec_mod.template()["components"]["schemas"]
    image, zoom = schemas["ImageJob"]["properties"], schemas["ZoomJob"]["properties"]
    assert set(image) == {"kind", "model", "prompt", "webhook", *IMAGE_FIELDS, *UPLOADS["image"]}
    assert set(zoom) == {"kind", "model", "prompt", "webhook", *ZOOM_FIELDS, *UPLOADS["zoom"], "schedule"}
    assert image["width"]["maximum"] == image["height"]["maximum"] == MAX_SIDE


def smallest(fmt: str) -> bytes:
    return image_bytes(fmt, (1, 1), (0, 0, 0))


def test_the_document_refuses_the_empty_and_short_uploads_and_blank_prompts_the_api_refuses(make_client):
    """What the server refuses and a schema can state, the served document states: an empty or
    too-short upload (under 24 bytes: no PNG, JPEG or WebP is that small) and a prompt blank in
    Python's sense (which counts \\x1c-\\x1f and \\x85 as whitespace; ECMA-262's \\S does not).
    Every such value is a 400 naming its field; the smallest real images pass the schema."""
    import jsonschema

    client = make_client(**LIMITS)
    schemas = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    refused = ["", "data:image/png;base64,", "AAAA", "data:,AAAAAAAA", "A" * 28]
    for kind, model in (("image", "inpaint"), ("zoom", "inpaint")):
        props = schemas["ImageJob" if kind == "image" else "ZoomJob"]["properties"]
        for name in UPLOADS[kind]:
            field = jsonschema.Draft202012Validator(props[name])
            for value in refused:
                assert not field.is_valid(value), (kind, name, value)
                answer = client.post("/api/jobs", json={"kind": kind, "model": model, "prompt": "x", name: value})
                assert answer.status_code == 400, (kind, name, value, answer.get_json())
                assert name in {e["field"] for e in answer.get_json()["errors"]}, answer.get_json()
            for fmt in ("PNG", "JPEG", "WEBP"):
                for data_url in (False, True):
                    assert field.is_valid(as_text(smallest(fmt), data_url)), (kind, name, fmt)
            assert props[name]["contentMediaType"] == "image/*"
        prompt = jsonschema.Draft202012Validator(props["prompt"])
        for blank in ("\x1f", " \x1c\x85", "\u3000", "\t \n"):
            assert not prompt.is_valid(blank), repr(blank)
            answer = client.post("/api/jobs", json={"kind": kind, "model": model, "prompt": blank})
            assert answer.status_code == 400 and "prompt" in {e["field"] for e in answer.get_json()["errors"]}
        for text in ("a", "\ufeffx", "\ufeff"):
            assert prompt.is_valid(text), repr(text)
