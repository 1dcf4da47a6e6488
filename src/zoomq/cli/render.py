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
