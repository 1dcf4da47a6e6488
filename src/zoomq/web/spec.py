"""The OpenAPI document served at ``/api/openapi.json``: ``openapi.json`` (which holds the default
limits) with this server's limits, its key requirement and the models its workers serve filled in,
so that schema-driven clients and testers generate exactly the requests this server accepts."""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources

from zoomq.config import Settings
from zoomq.render.request import MAX_SIDE

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # the producer's rule for model names
_KEYS: list[dict[str, list[str]]] = [{"apiKey": []}]


@lru_cache(maxsize=1)
def template() -> dict:
    """The document as shipped; callers get copies (``spec``), never this object."""
    return json.loads(resources.files("zoomq.web").joinpath("openapi.json").read_text())


def spec(settings: Settings, models: Mapping[str, dict] | None = None) -> dict:
    """The document for a server with ``settings`` whose workers serve ``models`` (name →
    description, as ``Producer.models()``); ``None`` (Redis unreachable) leaves model names open."""
    doc = copy.deepcopy(template())
    schemas = doc["components"]["schemas"]
    image, zoom = schemas["ImageJob"], schemas["ZoomJob"]
    _limits(settings, image, zoom)
    if settings.api_keys_file or settings.api_token:  # every job route needs a key (see zoomq.web.api_keys)
        for operations in doc["paths"].values():
            for operation in operations.values():
                if isinstance(operation, dict) and "security" in operation:
                    operation["security"] = copy.deepcopy(_KEYS)
    if models is not None:
        _models(models, image, zoom)
    return doc


def _limits(s: Settings, image_job: dict, zoom_job: dict) -> None:
    """The ``ZOOMQ_MAX_*`` limits as maxima; a field whose default is above its maximum must be
    given. Products of fields (width × height, the frame count) stay in the descriptions: JSON
    Schema cannot state them."""
    image, zoom = image_job["properties"], zoom_job["properties"]
    for props in (image, zoom):
        props["prompt"]["maxLength"] = props["negative_prompt"]["maxLength"] = s.max_prompt
        props["steps"]["maximum"] = s.max_steps
    change = zoom["schedule"]["items"]["properties"]
    change["prompt"]["maxLength"] = change["negative_prompt"]["maxLength"] = s.max_prompt
    change["keyframe"]["maximum"] = s.max_keyframes - 1
    zoom["keyframes"]["maximum"] = s.max_keyframes
    zoom["interpolation_frames"]["maximum"] = s.max_interpolation_frames
    side = min(MAX_SIDE, math.isqrt(s.max_pixels)) // 8 * 8  # the largest square keyframe
    zoom["size"]["maximum"] = side
    zoom["mask_width"]["maximum"] = (side - 1) // 2  # less than half the size
    zoom["seam"]["maximum"] = (side - 2 * zoom["mask_width"]["minimum"]) // 4
    widest = min(MAX_SIDE, s.max_pixels // image["height"]["minimum"]) // 8 * 8  # beside the lowest height
    image["width"]["maximum"] = image["height"]["maximum"] = widest
    for job in (image_job, zoom_job):
        for name, field in job["properties"].items():
            default, maximum = field.get("default"), field.get("maximum")
            if name != "seam" and default is not None and maximum is not None and default > maximum:  # seams narrow
                job["required"].append(name)  # leaving it out asks for the default, which is refused
                del field["default"]
                field["type"] = [t for t in field["type"] if t != "null"]


def _models(models: Mapping[str, dict], image: dict, zoom: dict) -> None:
    """Model names as enums; the tiny decoder only for models that carry it; and what each task
    needs of an image job: an inpainting model an init image and a mask, a text-to-image model no
    mask. (Any model zooms: see ``Producer.check_zoom``.)"""
    names = sorted(n for n in models if isinstance(n, str) and _MODEL_NAME.fullmatch(n))
    if not names:
        return  # no worker online: nothing can be accepted, and the rule says so (400 names the model)
    inpainting = [n for n in names if models[n].get("task") == "inpainting"]
    image["properties"]["model"]["enum"] = names
    zoom["properties"]["model"]["enum"] = names
    no_tiny = [n for n in names if "tiny" not in models[n].get("decoders", ("full",))]
    for job in (image, zoom):
        if no_tiny and "decoder" in job["properties"]:  # TAESD only where the model carries it
            job.setdefault("allOf", []).append({
                "if": {"required": ["model"], "properties": {"model": {"enum": no_tiny}}},
                "then": {"properties": {"decoder": {"enum": ["full", None]}}},
            })
    carried: dict[tuple, list[str]] = {}  # DeepCache's branches (None: not said, an older worker) → models
    for n in names:
        if models[n].get("cache_branches") is not None:
            carried.setdefault(tuple(models[n]["cache_branches"]), []).append(n)
    for branches, which in carried.items():
        for job in (image, zoom):
            if "cache_interval" not in job["properties"]:
                continue
            cached = {"required": ["model", "cache_interval"],
                      "properties": {"model": {"enum": which}, "cache_interval": {"type": "integer", "minimum": 2}}}
            if branches:  # with caching on, only the branches the model carries (null: branch 0)
                allowed = [*branches, None] if 0 in branches else list(branches)
                job.setdefault("allOf", []).append(
                    {"if": cached, "then": {"properties": {"cache_branch": {"enum": allowed}}}}
                )
            else:  # prepared without DeepCache's parts: caching off only
                job.setdefault("allOf", []).append(
                    {"if": {"required": ["model"], "properties": {"model": {"enum": which}}},
                     "then": {"properties": {"cache_interval": {"enum": [1, None]}}}}
                )
    no_mask = {"properties": {"mask": {"type": "null"}}}
    if inpainting:
        image["allOf"].append({
            "if": {"required": ["model"], "properties": {"model": {"enum": inpainting}}},
            "then": {"required": ["init_image", "mask"],
                     "properties": {"init_image": {"type": "string"}, "mask": {"type": "string"}}},
            "else": no_mask,
        })
    else:
        image["allOf"].append(no_mask)
