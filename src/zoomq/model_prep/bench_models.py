"""The random-weight SD2 models the benchmarks run, prepared once into a models folder and shared by
every benchmark that runs the same one (speed does not depend on weight values): whole models
(``cached_model``) and the inpainting UNet alone (``cached_unet``)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from zoomq.errors import InvalidParameter

#: kind → folder suffix: text-to-image, inpainting, and SD-Turbo carrying a random-weight TAESD.
KINDS = {"t2i": "t2i", "inpaint": "inpaint", "turbo": "turbo-taesd"}


def model_folder(models_dir: Path, kind: str, *, full: bool, weights: str = "fp16") -> Path:
    """Where ``cached_model`` keeps a model: ``full-inpaint``, ``tiny-t2i-int8-hybrid``, ..."""
    if kind not in KINDS:
        raise InvalidParameter("kind", kind, f"must be one of {', '.join(KINDS)}")
    suffix = "" if weights == "fp16" else f"-{weights}"
    return Path(models_dir) / f"{'full' if full else 'tiny'}-{KINDS[kind]}{suffix}"


def cached_model(models_dir: Path, kind: str, *, full: bool = True, weights: str = "fp16",
                 say: Callable[[str], None] = lambda _: None) -> Path:
    """The prepared model folder of ``kind`` (see ``KINDS``), full-size or miniature, built on first use."""
    from zoomq.model_prep.prepare import prepare_random

    out = model_folder(models_dir, kind, full=full, weights=weights)
    say(f"preparing the {'full-size' if full else 'miniature'} {kind} model ({weights} weights) in {out}")
    turbo = kind == "turbo"
    return prepare_random(out, full=full, inpainting=kind == "inpaint", weights=weights, turbo=turbo,
                          tiny_autoencoder="random" if turbo else None, report=lambda m: say("  " + m)).folder


def cached_unet(models_dir: Path, *, full: bool = True, branch: int = 0,
                say: Callable[[str], None] = lambda _: None) -> Path:
    """A folder with the inpainting UNet (returning ``branch``'s feature) and its shallow branch as IR:
    the whole inpainting model ``cached_model`` prepared, where it did, or else the UNet alone, built
    once (minutes, not the whole pipeline's conversion; the folder appears only when complete)."""
    from zoomq.model_prep.architectures import build_random_unet
    from zoomq.model_prep.convert import parts
    from zoomq.model_prep.deepcache_export import convert_shallow_parts
    from zoomq.model_prep.export import convert_part

    out = Path(models_dir) / ("full" if full else "tiny") / "inpaint-unet"
    for folder in (model_folder(models_dir, "inpaint", full=full), out):
        if (folder / "unet.xml").exists() and (folder / f"unet_shallow_{branch}.xml").exists():
            return folder
    hidden = 1024 if full else 32  # the text encoder's width: SD2's, the miniature's
    stage = out.with_name(out.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "ir").mkdir(parents=True)
    say(f"building a random-weight {'full-size' if full else 'miniature'} inpainting UNet in {out}")
    build_random_unet(stage / "diffusers", full=full, inpainting=True, size=512 if full else 64)
    unet = next(p for p in parts(stage / "diffusers", 9, hidden, 4, (branch,)) if p.name == "unet")
    convert_part(stage / "diffusers", unet, stage / "ir")
    convert_shallow_parts(stage / "diffusers", stage / "ir", (branch,), 9, hidden)
    shutil.rmtree(out, ignore_errors=True)
    (stage / "ir").rename(out)
    shutil.rmtree(stage)
    return out
