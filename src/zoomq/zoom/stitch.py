"""Stitch unit: the segments, in playing order, into the final MP4 (no re-encode), the optional
GIF, and a sidecar JSON with everything needed to render the same video again."""

from __future__ import annotations

import json
import os
from pathlib import Path

from zoomq import __version__
from zoomq.zoom import video
from zoomq.zoom.settings import ZoomSettings


def keyframe_entry(k: int, recipe: dict, file: str) -> dict:
    """What the sidecar says of keyframe k, from its PNG recipe."""
    return {"index": k, "file": file, "seed": recipe.get("seed"), "prompt": recipe.get("prompt"),
            "negative_prompt": recipe.get("negative_prompt")}


def sidecar_path(out: Path) -> Path:
    return Path(out).with_suffix(".json")


def gif_path(out: Path) -> Path:
    return Path(out).with_suffix(".gif")


def stitch(segments: list[Path], settings: ZoomSettings, out: Path, keyframes: list[dict], model: dict) -> dict:
    """``segments`` in zoom-out order (segment k joins keyframes k and k+1); returns the sidecar."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ordered = list(segments)[::-1] if settings.direction == "in" else list(segments)
    video.concat(ordered, out)
    info = video.probe(out)
    if settings.gif:
        video.gif_from(out, gif_path(out))
    sidecar = {
        "zoomq_version": __version__,
        "model": model,
        "settings": settings.to_dict(),
        "keyframes": keyframes,
        "video": {
            "file": out.name,
            "frames": info.frames,
            "fps": info.fps,
            "size": list(info.size),
            "codec": info.codec,
            "pix_fmt": info.pix_fmt,
        },
        "gif": gif_path(out).name if settings.gif else None,
        "warnings": list(settings.warnings),  # what validation chose on its own, e.g. a narrower seam
    }
    tmp = sidecar_path(out).with_suffix(".json.part")
    tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
    os.replace(tmp, sidecar_path(out))
    return sidecar
