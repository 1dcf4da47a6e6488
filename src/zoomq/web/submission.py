"""Turn a web submission — a JSON body or an HTML form with uploads — into producer arguments.

Form values arrive as text and are converted here; JSON values keep their types and are checked by
the producer. Every problem is collected, one per field, so the form and the API can show them all.
Uploads are checked to be PNG, JPEG or WebP images of sane size before anything decodes them fully.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from zoomq.errors import Checks, InvalidParameter

KINDS = ("image", "zoom")
IMAGE_TYPES = ("PNG", "JPEG", "WEBP")
MAX_PIXELS = 4096 * 4096

# Parameter → type, for each kind (the producer's names; ``model`` and ``prompt`` come separately).
IMAGE_FIELDS = {
    "negative_prompt": str, "steps": int, "guidance": float, "guidance_cutoff": float, "seed": int,
    "scheduler": str, "width": int, "height": int, "strength": float, "eta": float, "decoder": str,
    "cache_interval": int, "cache_branch": int,
}
ZOOM_FIELDS = {
    "negative_prompt": str, "keyframes": int, "size": int, "mask_width": int, "interpolation_frames": int,
    "fps": int, "direction": str, "seed": int, "steps": int, "guidance": float, "guidance_cutoff": float,
    "scheduler": str,
    "seam": int, "gif": bool, "decoder": str, "cache_interval": int, "cache_branch": int,
}
UPLOADS = {"image": ("init_image", "mask"), "zoom": ("init_image",)}


@dataclass
class Submission:
    kind: str
    model: str
    prompt: str
    options: dict = field(default_factory=dict)
    webhook: str | None = None  # checked by the producer (zoomq.webhooks.address)

    def submit(self, producer, **who) -> str:
        submit = producer.submit_zoom if self.kind == "zoom" else producer.submit_image
        return submit(self.prompt, model=self.model, **who, webhook=self.webhook, **self.options)

    def check(self, producer) -> None:
        check = producer.check_zoom if self.kind == "zoom" else producer.check_image
        checks = Checks()
        checks(lambda: check(self.prompt, model=self.model, **self.options))
        checks(producer.check_webhook, self.webhook)
        checks.raise_errors()

    def estimate(self, producer) -> dict:
        """What submitting would cost; refused as submitting would be, the webhook included."""
        estimate = producer.estimate_zoom if self.kind == "zoom" else producer.estimate_image
        checks = Checks()
        checks(producer.check_webhook, self.webhook)
        result = checks(lambda: estimate(self.prompt, model=self.model, **self.options))
        checks.raise_errors()
        return result


def _checked(producer, sub: Submission, checks: Checks) -> None:
    """Raise ``InvalidParameter(s)`` with every field's error when ``sub``, or what parsing found
    (``checks``), is wrong. The model must be one a live worker serves (the producer alone would
    let a job wait for one)."""
    served = producer.models()
    if isinstance(sub.model, str) and sub.model and sub.model not in served:  # any JSON type may come
        names = ", ".join(sorted(served)) or "none: start a worker"
        checks.add(InvalidParameter("model", sub.model, f"no worker serves this model; the workers serve: {names}"))
    if checks.errors:
        checks(sub.check, producer)
        checks.raise_errors()


def enqueue(producer, sub: Submission, checks: Checks, owner: str | None = None, submitter: str | None = None) -> str:
    """Enqueue ``sub`` for ``owner`` (see ``Producer.submit_image``), or raise and enqueue nothing."""
    _checked(producer, sub, checks)
    return sub.submit(producer, owner=owner, submitter=submitter)


def estimate(producer, sub: Submission, checks: Checks) -> dict:
    """The dry run of ``enqueue``: the job's work and expected time, or the same errors."""
    _checked(producer, sub, checks)
    return sub.estimate(producer)


def _from_text(param: str, raw: str, kind: type):
    if kind is str:
        return raw
    if kind is bool:
        if raw.lower() in ("1", "true", "on", "yes"):
            return True
        if raw.lower() in ("0", "false", "off", "no"):
            return False
        raise InvalidParameter(param, raw, "must be true or false")
    try:
        return int(raw) if kind is int else float(raw)
    except ValueError:
        raise InvalidParameter(param, raw, "must be a whole number" if kind is int else "must be a number") from None


def check_upload(param: str, data: bytes) -> bytes:
    """``data`` if it is a PNG, JPEG or WebP image of at most ``MAX_PIXELS`` pixels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except (OSError, Image.DecompressionBombError, ValueError):
        raise InvalidParameter(param, f"<{len(data)} bytes>", "must be a PNG, JPEG or WebP image") from None
    if kind not in IMAGE_TYPES:
        raise InvalidParameter(param, kind, "must be a PNG, JPEG or WebP image")
    if width * height > MAX_PIXELS:
        raise InvalidParameter(param, f"{width}x{height}", "is too large; at most 4096x4096 pixels")
    return data


def _decode_base64(param: str, value) -> bytes:
    if not isinstance(value, str):
        raise InvalidParameter(param, type(value).__name__, "must be a base64 string or a data: URL")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidParameter(param, value[:40], "is not valid base64") from None


def _common(checks: Checks, values: Mapping) -> tuple[str, Any, Any]:
    """The kind, model and prompt; the model and prompt as sent (any JSON type) when ``checks``
    holds their errors."""
    kind = values.get("kind", "image")
    if kind not in KINDS:
        checks.add(InvalidParameter("kind", kind, "must be image or zoom"))
    model, prompt = values.get("model"), values.get("prompt")
    if not isinstance(model, str) or not model:
        checks.add(InvalidParameter("model", model, "required: the name of a model the workers serve"))
    if not isinstance(prompt, str) or not prompt.strip():
        checks.add(InvalidParameter("prompt", prompt, "required: describe the picture"))
    return kind if kind in KINDS else "image", model, prompt


def json_body(request):
    """The request's JSON body, or None when there is none to read: malformed, in a charset that is
    not JSON's, or nested deeper than the parser recurses (its RecursionError would be a 500)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def from_json(body) -> tuple[Submission, Checks]:
    """A JSON submission: producer parameter names; images as base64 strings or data: URLs."""
    checks = Checks()
    if not isinstance(body, dict):
        checks.add(InvalidParameter("body", type(body).__name__, "must be a JSON object"))
        return Submission("image", "", ""), checks
    kind, model, prompt = _common(checks, body)
    fields = ZOOM_FIELDS if kind == "zoom" else IMAGE_FIELDS
    allowed = {"kind", "model", "prompt", "webhook", *fields, *UPLOADS[kind],
               *(("schedule",) if kind == "zoom" else ())}
    for name in sorted(set(body) - allowed):
        checks.add(InvalidParameter(name, body[name], f"is not a parameter of {kind} jobs"))
    options = {k: v for k, v in body.items() if k in fields or k == "schedule"}
    for name in UPLOADS[kind]:
        if body.get(name) is not None:
            data = checks(_decode_base64, name, body[name])
            options[name] = checks(check_upload, name, data) if data is not None else None
    webhook = body.get("webhook")
    if webhook is not None:
        webhook = checks(_webhook_text, webhook)
    return Submission(kind, model, prompt, {k: v for k, v in options.items() if v is not None}, webhook), checks


def _webhook_text(value) -> str:
    if not isinstance(value, str):
        raise InvalidParameter("webhook", value, "must be an https URL (a string)")
    return value


def from_form(form: Mapping, files: Mapping) -> tuple[Submission, Checks]:
    """An HTML form submission: text fields, file uploads, schedule rows of keyframe → prompt."""
    checks = Checks()
    kind, model, prompt = _common(checks, form)
    fields = ZOOM_FIELDS if kind == "zoom" else IMAGE_FIELDS
    options = {}
    for name, type_ in fields.items():
        raw = form.get(name, "").strip()
        if type_ is bool:
            options[name] = bool(raw)  # a checkbox: sent when ticked
        elif raw:
            options[name] = checks(_from_text, name, raw, type_)
    for name in UPLOADS[kind]:
        upload = files.get(name)
        data = upload.read() if upload is not None else b""
        if data:
            options[name] = checks(check_upload, name, data)
    if kind == "zoom":
        options["schedule"] = checks(_schedule_rows, form)
    webhook = form.get("webhook", "").strip() or None
    return Submission(kind, model, prompt, {k: v for k, v in options.items() if v not in (None, [])}, webhook), checks


def _schedule_rows(form) -> list[dict]:
    """Rows of the schedule editor; rows without a prompt are ignored."""
    keyframes, prompts = form.getlist("schedule_keyframe"), form.getlist("schedule_prompt")
    rows = []
    for i, (keyframe, text) in enumerate(zip(keyframes, prompts)):
        if not text.strip():
            continue
        try:
            k = int(keyframe)
        except ValueError:
            raise InvalidParameter(f"schedule[{i}].keyframe", keyframe, "must be a whole number ≥ 0") from None
        rows.append({"keyframe": k, "prompt": text.strip()})
    return rows


def field_name(param: str) -> str:
    """The web name of a parameter: the producer's ``schedule`` is ``prompt_schedule`` in the
    shared checks (after the CLI's --prompt-schedule)."""
    return "schedule" + param[len("prompt_schedule"):] if param.startswith("prompt_schedule") else param


def errors_json(errors: list[InvalidParameter]) -> list[dict]:
    return [{"field": field_name(e.param), "value": _jsonable(e.value), "rule": e.rule} for e in errors]


def _jsonable(value):
    try:
        json.dumps(value, allow_nan=False)  # NaN and Infinity are not JSON: echo them as text
        return value
    except (TypeError, ValueError):
        return repr(value)
