"""Options shared by ``render`` (in-process) and ``submit`` (queued): one definition, one meaning."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from zoomq.errors import InvalidParameter
from zoomq.render import schedulers
from zoomq.render.request import DECODERS


def parse_size(text: str) -> tuple[int, int]:
    """``768`` or ``768x512`` (width x height)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", text)
    if not m:
        raise InvalidParameter("size", text, "must be WxH or N, e.g. 768x512 or 512")
    width = int(m.group(1))
    return width, int(m.group(2) or width)


#: What the model's defaults are, for help texts (the model's manifest says; see Manifest.defaults).
STEPS_DEFAULT = "20; SD-Turbo 1"
GUIDANCE_DEFAULT = "7.5; SD-Turbo 0"
DECODER_HELP = ("full: the model's VAE decoder (default); tiny: TAESD's, a small fraction of the cost, less fine "
                "detail; needs a model prepared with --tiny-autoencoder")
CACHE_HELP = ("fast mode (DeepCache): run the whole UNet every N-th step and only its shallow branch on the kept "
              "deep features in between (default 1 = off; needs a model prepared by this zoomq)")
BRANCH_HELP = ("DeepCache's branch, block x 3 + layer: which layers run fresh on cached steps (default 0, the "
               "fewest; others need a model prepared with --cache-branches)")
CUTOFF_HELP = ("fast mode: use guidance for this fraction of the steps only, then run the UNet once per "
               "step instead of twice (default 1 = every step; 0.5 saves about a quarter of the time)")


def add_image_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, help=f"denoising steps (default: the model's, {STEPS_DEFAULT})")
    p.add_argument("--guidance", type=float,
                   help=f"guidance scale, ≤ 1 = off (default: the model's, {GUIDANCE_DEFAULT})")
    p.add_argument("--guidance-cutoff", type=float, default=1.0, help=CUTOFF_HELP)
    p.add_argument("--seed", type=int, help="random seed (default: a random one, recorded in the PNG)")
    p.add_argument("--scheduler", default="default", help=f"one of {', '.join(schedulers.NAMES)}")
    p.add_argument("--size", help="WxH or N (default: the model's native size)")
    p.add_argument("--init-image", type=Path, help="start from this image (image-to-image)")
    p.add_argument("--strength", type=float, help="how much to change the init image, (0, 1]")
    p.add_argument("--mask", type=Path, help="inpainting mask, white = repaint")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    p.add_argument("--decoder", choices=DECODERS, default="full", help=DECODER_HELP)
    p.add_argument("--cache-interval", type=int, default=1, help=CACHE_HELP)
    p.add_argument("--cache-branch", type=int, default=0, help=BRANCH_HELP)


def image_options(args: argparse.Namespace) -> dict:
    """``RenderRequest`` fields from the parsed options, images loaded."""
    from zoomq.render import png

    width = height = None
    if args.size:
        width, height = parse_size(args.size)
    return dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps, guidance=args.guidance,
        guidance_cutoff=args.guidance_cutoff, seed=args.seed, scheduler=args.scheduler, width=width, height=height,
        strength=args.strength, eta=args.eta,
        decoder=args.decoder, cache_interval=args.cache_interval, cache_branch=args.cache_branch,
        init_image=png.load_image(args.init_image, "init_image") if args.init_image else None,
        mask=png.load_image(args.mask, "mask", mode="L") if args.mask else None,
    )


def add_zoom_options(p: argparse.ArgumentParser) -> None:
    from zoomq.zoom.settings import DEFAULT_SEAM, DIRECTIONS, ZoomSettings

    d = ZoomSettings(prompt="")
    p.add_argument("prompt")
    p.add_argument("--negative-prompt", default=d.negative_prompt)
    p.add_argument("--keyframes", type=int, default=d.keyframes, help=f"keyframes, ≥ 2 (default {d.keyframes})")
    p.add_argument("--size", type=int, default=d.size, help=f"frame side in px (default {d.size})")
    p.add_argument("--mask-width", type=int, default=d.mask_width,
                   help=f"outpainted border per keyframe in px (default {d.mask_width}: 2x zoom per keyframe at 512)")
    p.add_argument("--interpolation-frames", type=int, default=d.interpolation_frames,
                   help=f"frames per keyframe step (default {d.interpolation_frames})")
    p.add_argument("--fps", type=int, default=d.fps, help=f"frames per second (default {d.fps})")
    p.add_argument("--direction", choices=DIRECTIONS, default=d.direction, help="zoom out (default) or in")
    p.add_argument("--seed", type=int, help="job seed; each keyframe's seed derives from it (default: random)")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"denoising steps per keyframe (default: the model's, {STEPS_DEFAULT})")
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help=f"guidance scale (default: the model's, {GUIDANCE_DEFAULT})")
    p.add_argument("--guidance-cutoff", type=float, default=d.guidance_cutoff, help=CUTOFF_HELP)
    p.add_argument("--scheduler", default=d.scheduler, help=f"one of {', '.join(schedulers.NAMES)}")
    p.add_argument("--decoder", choices=DECODERS, default=d.decoder, help=DECODER_HELP)
    p.add_argument("--cache-interval", type=int, default=d.cache_interval, help=CACHE_HELP)
    p.add_argument("--cache-branch", type=int, default=d.cache_branch, help=BRANCH_HELP)
    p.add_argument("--seam", type=int, default=None,  # None: the default, narrowed where it does not fit
                   help=f"px of feathered blend at the pasted square (default {DEFAULT_SEAM}, or the most that "
                   "--size and --mask-width leave room for; 0 = the notebook exactly)")
    p.add_argument("--prompt-schedule", type=Path,
                   help='JSON file: [{"keyframe": 4, "prompt": "...", "negative_prompt": "..."}, ...]')
    p.add_argument("--init-image", type=Path, help="use this image as keyframe 0")
    p.add_argument("--gif", action="store_true", help="also write a looping GIF")


def zoom_options(args: argparse.Namespace) -> dict:
    """``ZoomSettings`` fields from the parsed options (the schedule read and checked)."""
    from zoomq.zoom.settings import load_schedule

    if args.init_image is not None and not args.init_image.is_file():
        raise InvalidParameter("init_image", str(args.init_image), "no such file")
    return dict(
        prompt=args.prompt, negative_prompt=args.negative_prompt, keyframes=args.keyframes, size=args.size,
        mask_width=args.mask_width, interpolation_frames=args.interpolation_frames, fps=args.fps,
        direction=args.direction, seed=args.seed, steps=args.steps, guidance=args.guidance,
        guidance_cutoff=args.guidance_cutoff, scheduler=args.scheduler, seam=args.seam, decoder=args.decoder,
        cache_interval=args.cache_interval, cache_branch=args.cache_branch,
        schedule=load_schedule(args.prompt_schedule) if args.prompt_schedule else (),
        gif=args.gif, init_image=str(args.init_image) if args.init_image else None,
    )


def check_out(path: Path | None, suffix: str) -> None:
    if path is not None and path.suffix.lower() != suffix:
        raise InvalidParameter("out", str(path), f"must end in {suffix}")


# Parameters whose CLI option is not simply --name-with-dashes.
_OPTIONS = {"width": "--size", "height": "--size", "prompt": "PROMPT", "job_id": "JOB_ID",
            "Idempotency-Key": "--idempotency-key"}


def option_name(param: str) -> str:
    """The option (or setting) a user writes for an error's parameter name."""
    if param.startswith("ZOOMQ_"):
        return param  # a setting (environment variable), not an option
    return _OPTIONS.get(param, "--" + param.replace("_", "-"))
