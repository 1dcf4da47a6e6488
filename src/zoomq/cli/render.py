"""``zoomq render image|zoom``: render in this process, with a progress bar."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from zoomq.cli.options import add_image_options, add_zoom_options, check_out, image_options, option_name, zoom_options
from zoomq.cli.progress import Bar


def add_parser(sub: argparse._SubParsersAction) -> None:
    render = sub.add_parser("render", help="render in this process (no queue)")
    what = render.add_subparsers(dest="what", required=True)
    p = what.add_parser(
        "image",
        help="text-to-image, image-to-image or inpainting",
        description="Render one image. --init-image makes it image-to-image; --mask (white = repaint) "
        "with an inpainting model makes it inpainting.",
    )
    add_image_options(p)
    p.add_argument("--model", required=True, type=Path, help="prepared model folder")
    p.add_argument("--out", required=True, type=Path, help="output PNG")
    p.set_defaults(run=run_image)

    p = what.add_parser(
        "zoom",
        help="an infinite-zoom video (an inpainting model is best; any text-to-image model works)",
        description="Render an infinite-zoom video: keyframes by outpainting, frames interpolated "
        "between them, H.264 MP4 plus a sidecar JSON and the keyframes as PNGs. An inpainting model "
        "outpaints best; a text-to-image model (SD-Turbo included) outpaints by latent blending.",
    )
    add_zoom_options(p)
    p.add_argument("--model", required=True, type=Path,
                   help="prepared model folder (inpainting recommended, or text-to-image)")
    p.add_argument("--out", required=True, type=Path, help="output MP4")
    p.set_defaults(run=run_zoom)


def run_image(args: argparse.Namespace) -> int:
    from zoomq.render import png
    from zoomq.render.pipeline import Renderer
    from zoomq.render.request import RenderRequest

    check_out(args.out, ".png")
    request = RenderRequest(**image_options(args))
    renderer = Renderer(args.model)
    bar = Bar("step")
    try:
        result = renderer.render(request, lambda done, total: bar.update(done, total, "denoising"))
    finally:
        bar.close()
    for warning in result.warnings:
        print(f"zoomq: warning: {warning}", file=sys.stderr)
    png.save(result.image, args.out, result.recipe)
    print(f"{args.out} (seed {result.recipe['seed']})")
    return 0


def as_option(warning: str) -> str:
    """``seam: ...`` → ``--seam: ...``: a warning that starts with a parameter names the option
    the user would change, as the CLI's error lines do."""
    param, sep, rest = warning.partition(": ")
    if not sep or not param.isidentifier():
        return warning
    return f"{option_name(param)}: {rest}"


def run_zoom(args: argparse.Namespace) -> int:
    from zoomq.errors import ModelError
    from zoomq.model import manifest
    from zoomq.render.pipeline import Renderer
    from zoomq.zoom.compose import render_zoom
    from zoomq.zoom.keyframe import BLEND_NOTE
    from zoomq.zoom.settings import ZoomSettings, validate

    check_out(args.out, ".mp4")
    try:  # the model's defaults fill the steps and guidance not given
        defaults = manifest.read(args.model).defaults
    except ModelError:  # bad settings are still named first; Renderer() says what the model lacks
        defaults = None
    settings = validate(ZoomSettings(**zoom_options(args)), defaults)
    for warning in settings.warnings:
        print(f"zoomq: warning: {as_option(warning)}", file=sys.stderr)
    renderer = Renderer(args.model)
    if renderer.task == "text-to-image":
        print(f"zoomq: note: {args.model} {BLEND_NOTE}", file=sys.stderr)
    bar = Bar("step")
    try:
        result = render_zoom(renderer, settings, args.out, lambda stage, done, total: bar.update(done, total, stage))
    finally:
        bar.close()
    v = result.sidecar["video"]
    print(f"{result.video}: {v['frames']} frames, {v['fps']:g} fps, {v['size'][0]}x{v['size'][1]} "
          f"(seed {settings.seed}; keyframes in {result.keyframes_dir})")
    return 0
