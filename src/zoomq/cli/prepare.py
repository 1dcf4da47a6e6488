"""``zoomq prepare``: convert a model, or build a random one, into a zoomq model folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from zoomq.model_prep.prepare import DEFAULT_CACHE_BRANCHES, WEIGHTS, prepare, prepare_random


def _branches(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(b) for b in text.split(",") if b.strip() != "")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be branch numbers separated by commas, e.g. 0,1") from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="convert a diffusers SD2 model to OpenVINO IR",
        description="Convert a diffusers SD2 model (hub id or local folder) to a zoomq model folder, "
        "or build a random-weight one (--tiny for tests, --full-size-random for benchmarks).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="Hugging Face hub id or local diffusers folder")
    source.add_argument("--tiny", action="store_true", help="a miniature random-weight SD2 model")
    source.add_argument(
        "--full-size-random", action="store_true", help="the real SD2 architecture with random weights"
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--via-onnx", action="store_true", help="export through ONNX (the notebook's route)")
    p.add_argument("--weights", choices=WEIGHTS, default="fp16",
                   help="fp16 (default); int8: weight-only, smaller, not faster; int8-hybrid: the UNet quantized "
                   "with NNCF and calibrated on its own denoising inputs, faster, changes the picture a little")
    p.add_argument("--tiny-autoencoder", metavar="ID|DIR|random",
                   help="also convert this tiny autoencoder (TAESD: madebyollin/taesd, or a folder saved by "
                   "diffusers' AutoencoderTiny; `random`: random weights, for tests and benchmarks) so renders "
                   "can choose --decoder tiny; given for a model already in --out, it is added in place")
    p.add_argument("--cache-branches", type=_branches, default=DEFAULT_CACHE_BRANCHES, metavar="B[,B...]",
                   help="DeepCache branches renders may choose with --cache-branch (default 0; each adds a small "
                   "shallow UNet part); an empty value none")
    random = p.add_argument_group("random models (--tiny, --full-size-random)")
    random.add_argument("--inpainting", action="store_true", help="9-channel inpainting UNet")
    random.add_argument("--size", type=int, help="native size in px (default 256 tiny, 512 full-size)")
    random.add_argument(
        "--prediction-type", choices=("epsilon", "v_prediction"), default="epsilon", help="default epsilon"
    )
    random.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    random.add_argument("--turbo", action="store_true",
                        help="SD-Turbo's scheduler (Euler, trailing spacing): an SD-Turbo kind, 1 step without "
                        "guidance by default")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    route = "onnx" if args.via_onnx else "direct"
    if args.model:
        if args.inpainting or args.size or args.prediction_type != "epsilon" or args.turbo:
            print("zoomq: note: --inpainting/--size/--prediction-type/--turbo apply to random models; "
                  "a real model's kind is read from its config")
        manifest = prepare(args.model, args.out, route=route, weights=args.weights, report=_say,
                           tiny_autoencoder=args.tiny_autoencoder, cache_branches=args.cache_branches)
    else:
        manifest = prepare_random(
            args.out,
            full=args.full_size_random,
            inpainting=args.inpainting,
            size=args.size,
            prediction_type=args.prediction_type,
            seed=args.seed,
            route=route,
            weights=args.weights,
            report=_say,
            turbo=args.turbo,
            tiny_autoencoder=args.tiny_autoencoder,
            cache_branches=args.cache_branches,
        )
    kind = manifest.kind
    defaults = manifest.defaults
    turbo = " (SD-Turbo kind)" if manifest.variant == "turbo" else ""
    print(f"{manifest.folder}: {kind['task']} model{turbo}, {kind['native_size']} px, {kind['prediction_type']}; "
          f"defaults: {defaults['steps']} steps, guidance {defaults['guidance']:g}")
    if "tiny" in manifest.decoders:
        print(f"{manifest.folder}: tiny decoder (TAESD, {manifest.data['tiny_autoencoder']['source']}): "
              "renders may choose --decoder tiny")
    if manifest.cache_branches:
        print(f"{manifest.folder}: DeepCache branch {', '.join(map(str, manifest.cache_branches))}: renders may "
              "choose --cache-interval N")
    return 0


def _say(message: str) -> None:
    print(f"zoomq: {message}", flush=True)
