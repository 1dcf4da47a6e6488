"""``zoomq render image``: render one image in-process with a progress bar."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from zoomq.errors import InvalidParameter
from zoomq.render import schedulers


def parse_size(text: str) -> tuple[int, int]:
    """``768`` or ``768x512`` (width x height)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", text)
    if not m:
        raise InvalidParameter("size", text, "must be WxH or N, e.g. 768x512 or 512")
    width = int(m.group(1))
    return width, int(m.group(2) or width)


def add_parser(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="render in this process (no queue)")
    what = render.add_subparsers(dest="what", required=True)
    p = what.add_parser(
        "image",
        help="text-to-image, image-to-image or inpainting",
        description="Render one image. --init-image makes it image-to-image; --mask (white = repaint) "
        "with an inpainting model makes it inpainting.",
    )
    p.add_argument("prompt")
    p.add_argument("--model", required=True, type=Path, help="prepared model folder")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--steps", type=int, default=20, help="denoising steps (default 20)")
    p.add_argument("--guidance", type=float, default=7.5, help="guidance scale (default 7.5; ≤ 1 = off)")
    p.add_argument("--seed", type=int, help="random seed (default: a random one, recorded in the PNG)")
    p.add_argument("--scheduler", default="default", help=f"one of {', '.join(schedulers.NAMES)}")
    p.add_argument("--size", help="WxH or N (default: the model's native size)")
    p.add_argument("--init-image", type=Path, help="start from this image (image-to-image)")
    p.add_argument("--strength", type=float, help="how much to change the init image, (0, 1]")
    p.add_argument("--mask", type=Path, help="inpainting mask, white = repaint")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0)")
    p.add_argument("--out", required=True, type=Path, help="output PNG")
    p.set_defaults(run=run)
    add_zoom_parser(what)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zoomq.render import png
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    width = height = None
    if args.size:
        width, height = parse_size(args.size)
    init = png.load_image(args.init_image, "init_image") if args.init_image else None
    mask = png.load_image(args.mask, "mask", mode="L") if args.mask else None
    request = RenderRequest(
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        steps=args.steps,
        guidance=args.guidance,
        seed=args.seed,
        scheduler=args.scheduler,
        width=width,
        height=height,
        strength=args.strength,
        eta=args.eta,
        init_image=init,
        mask=mask,
    )
    renderer = Renderer(args.model)
    bars: list[tqdm] = []  # made on the first step, so bad input fails before a bar appears

    def progress(step: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="step", desc="denoising", file=sys.stderr))
        bars[0].update(step - bars[0].n)

    try:
        result = renderer.render(request, progress)
    finally:
        for bar in bars:
            bar.close()
    for warning in result.warnings:
        print(f"zoomq: warning: {warning}", file=sys.stderr)
    png.save(result.image, args.out, result.recipe)
    print(f"{args.out} (seed {result.recipe['seed']})")
    return 0


def add_zoom_parser(what: argparse._SubParsersAction) -> None:
    from zoomq.zoom.settings import DIRECTIONS, ZoomSettings

    d = ZoomSettings(prompt="")
    p = what.add_parser(
        "zoom",
        help="an infinite-zoom video (needs an inpainting model)",
        description="Render an infinite-zoom video: keyframes by outpainting, frames interpolated "
        "between them, H.264 MP4 plus a sidecar JSON and the keyframes as PNGs.",
    )
    p.add_argument("prompt")
    p.add_argument("--model", required=True, type=Path, help="prepared inpainting model folder")
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
    p.add_argument("--steps", type=int, default=d.steps, help=f"denoising steps per keyframe (default {d.steps})")
    p.add_argument("--guidance", type=float, default=d.guidance, help=f"guidance scale (default {d.guidance})")
    p.add_argument("--scheduler", default=d.scheduler, help=f"one of {', '.join(schedulers.NAMES)}")
    p.add_argument("--seam", type=int, default=d.seam,
                   help=f"px of feathered blend at the pasted square (default {d.seam}; 0 = the notebook exactly)")
    p.add_argument("--prompt-schedule", type=Path,
                   help='JSON file: [{"keyframe": 4, "prompt": "...", "negative_prompt": "..."}, ...]')
    p.add_argument("--init-image", type=Path, help="use this image as keyframe 0")
    p.add_argument("--gif", action="store_true", help="also write a looping GIF")
    p.add_argument("--out", required=True, type=Path, help="output MP4")
    p.set_defaults(run=run_zoom)


def run_zoom(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from zoomq.render.pipeline import Renderer
    from zoomq.zoom.compose import render_zoom
    from zoomq.zoom.keyframe import check_model
    from zoomq.zoom.settings import ZoomSettings, load_schedule, validate

    if args.out.suffix.lower() != ".mp4":
        raise InvalidParameter("out", str(args.out), "must end in .mp4")
    if args.init_image is not None and not args.init_image.is_file():
        raise InvalidParameter("init_image", str(args.init_image), "no such file")
    settings = validate(ZoomSettings(
        prompt=args.prompt, negative_prompt=args.negative_prompt, keyframes=args.keyframes, size=args.size,
        mask_width=args.mask_width, interpolation_frames=args.interpolation_frames, fps=args.fps,
        direction=args.direction, seed=args.seed, steps=args.steps, guidance=args.guidance,
        scheduler=args.scheduler, seam=args.seam,
        schedule=load_schedule(args.prompt_schedule) if args.prompt_schedule else (),
        gif=args.gif, init_image=str(args.init_image) if args.init_image else None,
    ))
    renderer = Renderer(args.model)
    check_model(renderer)
    bars: list[tqdm] = []

    def progress(stage: str, done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(total=total, unit="step", file=sys.stderr))
        bars[0].set_description(stage, refresh=False)
        bars[0].update(done - bars[0].n)

    try:
        result = render_zoom(renderer, settings, args.out, progress)
    finally:
        for bar in bars:
            bar.close()
    v = result.sidecar["video"]
    print(f"{result.video}: {v['frames']} frames, {v['fps']:g} fps, {v['size'][0]}x{v['size'][1]} "
          f"(seed {settings.seed}; keyframes in {result.keyframes_dir})")
    return 0
