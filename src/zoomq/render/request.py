"""What a render is asked to do, and the checks that turn bad input into one clear error.

The same checks serve the CLI, the producer and the web API, so every front end rejects the same
things with the same words. Errors name the parameter (``InvalidParameter.param``); front ends map
it to their own spelling (``--steps``, a form field).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field, replace

from PIL import Image

from zoomq.errors import Checks, InvalidParameter
from zoomq.render import schedulers

MAX_SIDE = 2048
MAX_SEED = 2**64 - 1
#: The defaults of a model that records none of its own (as ``detect.DEFAULTS["standard"]``).
STANDARD_DEFAULTS = {"steps": 20, "guidance": 7.5, "scheduler": "default"}


@dataclass(frozen=True)
class RenderRequest:
    """One image render. ``init_image`` makes it image-to-image, ``mask`` (white = repaint)
    makes it inpainting; ``width``/``height`` default to the init image's or the model's size;
    ``steps`` and ``guidance`` left at None take the model's defaults (``Manifest.defaults``:
    20 and 7.5, SD-Turbo's 1 and 0)."""

    prompt: str
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    seed: int | None = None
    scheduler: str = "default"
    width: int | None = None
    height: int | None = None
    strength: float | None = None
    eta: float = 0.0
    init_image: Image.Image | None = field(default=None, repr=False)
    mask: Image.Image | None = field(default=None, repr=False)
    guidance_cutoff: float = 1.0  # fraction of the steps that use guidance; later steps run batch 1
    decoder: str = "full"  # "tiny": TAESD, when the model carries it (faster, less fine detail)
    cache_interval: int = 1  # DeepCache: the whole UNet every N-th call, its shallow branch between; 1 = off
    cache_branch: int = 0  # DeepCache's branch: which layers run fresh on cached calls (render.deepcache)

    @property
    def mode(self) -> str:
        if self.mask is not None:
            return "inpainting"
        return "image-to-image" if self.init_image is not None else "text-to-image"

    def with_seed(self) -> RenderRequest:
        """This request with a concrete seed (a random one when none was given)."""
        return self if self.seed is not None else replace(self, seed=secrets.randbelow(2**32))


def number(param: str, value, kind=float):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameter(param, value, "must be a number")
    try:
        as_float = float(value)
    except OverflowError:  # a JSON integer past every float
        raise InvalidParameter(param, f"<{len(str(abs(value)))}-digit number>", "is too large") from None
    if kind is int and not as_float.is_integer():
        raise InvalidParameter(param, value, "must be a whole number")
    if not math.isfinite(as_float):
        raise InvalidParameter(param, value, "must be finite")
    return kind(value)


def check_text(param: str, value) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(param, value, "must be text")
    return value


def check_steps(value) -> int:
    steps = number("steps", value, int)
    if steps < 1:
        raise InvalidParameter("steps", steps, "must be at least 1")
    return steps


def check_guidance(value) -> float:
    guidance = number("guidance", value)
    if guidance < 0:
        raise InvalidParameter("guidance", guidance, "must be ≥ 0 (≤ 1 turns guidance off)")
    return guidance


def check_guidance_cutoff(value) -> float:
    cutoff = number("guidance_cutoff", value)
    if not 0 < cutoff <= 1:
        raise InvalidParameter("guidance_cutoff", cutoff,
                               "must be in (0, 1]: the fraction of steps that use guidance (1 = all)")
    return cutoff


def check_seed(value) -> int | None:
    if value is None:
        return None
    seed = number("seed", value, int)
    if not 0 <= seed <= MAX_SEED:
        raise InvalidParameter("seed", seed, "must be between 0 and 2**64 - 1")
    return seed


def size_step(latent_factor: int = 8) -> int:
    """What image sides must be a multiple of: 8, and the model's latent factor (whole latents)."""
    return math.lcm(8, latent_factor)


def check_size(param: str, value, latent_factor: int = 8) -> int:
    value = number(param, value, int)
    step = size_step(latent_factor)
    if value % step or not 64 <= value <= MAX_SIDE:
        why = "" if step == 8 else f" (this model's latent factor is {latent_factor})"
        raise InvalidParameter(param, value, f"must be a multiple of {step} between 64 and {MAX_SIDE}{why}")
    return value


def check_eta(value) -> float:
    eta = number("eta", value)
    if eta < 0:
        raise InvalidParameter("eta", eta, "must be ≥ 0")
    return eta


def check_strength(value) -> float:
    strength = number("strength", value)
    if not 0 < strength <= 1:
        raise InvalidParameter("strength", strength, "must be in (0, 1]")
    return strength


#: The decoders a render may ask for: the model's own VAE decoder, or TAESD's (``Manifest.decoders``).
DECODERS = ("full", "tiny")


def check_decoder(value, available: tuple[str, ...] = DECODERS) -> str:
    """``value`` as a decoder name; ``available``: the model's decoders (``Manifest.decoders``)."""
    if not isinstance(value, str) or value not in DECODERS:
        raise InvalidParameter("decoder", value, "must be full or tiny")
    if value not in available:
        from zoomq.model.manifest import TINY_HINT

        raise InvalidParameter("decoder", value, f"this model has no tiny decoder (TAESD); {TINY_HINT}")
    return value


#: DeepCache's limits: an interval past this leaves one full UNet call in any sensible render;
#: branches are ``block * 3 + layer`` over SD2's four blocks (``model_prep.deepcache``).
MAX_CACHE_INTERVAL = 50
CACHE_BRANCHES = 12


def check_cache_interval(value) -> int:
    interval = number("cache_interval", value, int)
    if not 1 <= interval <= MAX_CACHE_INTERVAL:
        raise InvalidParameter("cache_interval", interval,
                               f"must be between 1 (off) and {MAX_CACHE_INTERVAL}: the whole UNet runs every "
                               "N-th step, its shallow branch from cached features in between (DeepCache)")
    return interval


def check_cache_branch(value) -> int:
    branch = number("cache_branch", value, int)
    if not 0 <= branch < CACHE_BRANCHES:
        raise InvalidParameter("cache_branch", branch,
                               f"must be between 0 and {CACHE_BRANCHES - 1} (DeepCache's branch: block × 3 + "
                               "layer; 0, the default, runs the fewest layers fresh)")
    return branch


def check_cache(interval, branch, available: tuple[int, ...] | None = None, prepare: str | None = None) -> None:
    """DeepCache's options against a model carrying the branches ``available`` (``Manifest.cache_branches``;
    None: not known here); ``prepare`` is the command that prepares that model again."""
    interval = check_cache_interval(interval)
    branch = check_cache_branch(branch)
    if interval == 1 or available is None:
        return
    again = prepare or "zoomq prepare --model SOURCE --out MODEL_DIR"
    if not available:
        raise InvalidParameter("cache_interval", interval,
                               f"this model was prepared without DeepCache's parts (by an older zoomq); prepare it "
                               f"again for this option: `{again}`")
    if branch not in available:
        carried = ", ".join(map(str, available))
        raise InvalidParameter("cache_branch", branch,
                               f"this model carries DeepCache branch {carried} only; add this one with "
                               f"`{again} --cache-branches {','.join(map(str, sorted({*available, branch})))}`")


def _check_images(request: RenderRequest, task: str, latent_blend: bool = False) -> None:
    if task == "inpainting" and request.mask is None:
        raise InvalidParameter(
            "mask", None, "required: this is an inpainting model; give a mask (white = repaint)"
        )
    if request.mask is not None:
        if task != "inpainting" and not latent_blend:
            raise InvalidParameter(
                "mask",
                "<image>",
                "this is a text-to-image model; masks need an inpainting model "
                "(prepared from stabilityai/stable-diffusion-2-inpainting)",
            )
        if request.init_image is None:
            raise InvalidParameter("init_image", None, "required with a mask: the image to inpaint")
    if request.strength is not None and request.init_image is None:
        raise InvalidParameter("strength", request.strength, "needs an init image (image-to-image or inpainting)")


def validate(request: RenderRequest, task: str, native_size: int, latent_factor: int = 8,
             defaults: dict | None = None, latent_blend: bool = False) -> RenderRequest:
    """Check ``request`` against a model of ``task`` and return it with defaults filled in;
    ``latent_factor`` and ``defaults`` (steps, guidance, scheduler for those left at None) are the
    model's (see ``Manifest.latent_factor`` and ``Manifest.defaults``). ``latent_blend``: a
    text-to-image model may take a mask too, inpainting the way diffusers does with a 4-channel
    UNet (zoom keyframes ask for it; image jobs need an inpainting model for a mask).

    Raises ``InvalidParameter`` for one problem, ``InvalidParameters`` for several fields at once.
    """
    model = {**STANDARD_DEFAULTS, **(defaults or {})}
    checks = Checks()
    checks(check_text, "prompt", request.prompt)
    checks(check_text, "negative_prompt", request.negative_prompt)
    steps = checks(check_steps, model["steps"] if request.steps is None else request.steps)
    guidance = checks(check_guidance, model["guidance"] if request.guidance is None else request.guidance)
    cutoff = checks(check_guidance_cutoff, request.guidance_cutoff)
    eta = checks(check_eta, request.eta)
    checks(check_seed, request.seed)
    checks(check_decoder, request.decoder)
    cache_interval = checks(check_cache_interval, request.cache_interval)
    cache_branch = checks(check_cache_branch, request.cache_branch)
    scheduler = checks(schedulers.check_name, model["scheduler"] if request.scheduler is None else request.scheduler)
    checks(_check_images, request, task, latent_blend)
    strength = request.strength
    if request.mode != "text-to-image":  # strength means nothing without an init image: left unset
        if strength is None:
            strength = 1.0 if request.mode == "inpainting" else 0.8
        strength = checks(check_strength, strength)
    elif strength is not None:  # refused by _check_images, but a missing mask may have been found first
        checks(check_strength, strength)
    default_w = default_h = native_size
    if request.init_image is not None:  # like diffusers: the init image's size, down to a whole step
        step = size_step(latent_factor)
        default_w, default_h = (s - s % step for s in request.init_image.size)
    width = checks(check_size, "width", request.width if request.width is not None else default_w, latent_factor)
    height = checks(check_size, "height", request.height if request.height is not None else default_h, latent_factor)
    checks.raise_errors()
    if strength is not None and int(steps * strength) < 1:  # diffusers' rule: int(steps × strength) ≥ 1
        raise InvalidParameter(
            "strength", strength, f"leaves no denoising step of {steps} (steps × strength must reach 1: "
            f"{_fewest_text(strength)}); raise --strength or --steps"
        )
    return replace(
        request, steps=steps, guidance=guidance, guidance_cutoff=cutoff, eta=eta, strength=strength, width=width,
        height=height, scheduler=scheduler, cache_interval=cache_interval, cache_branch=cache_branch,
    )


def at_render_size(request: RenderRequest) -> RenderRequest:
    """``request`` (validated: its size set) with its init image and mask resized to the render's
    size as the renderer resizes them (``VaeImageProcessor.resize``: Lanczos, no reducing gap), so a
    4096 px upload for a 512 px render is kept at 512 px and renders the very same pixels: the
    renderer's own resize of a picture already at its size is a copy."""
    assert request.width is not None and request.height is not None, "validate() sets the size"
    size = (request.width, request.height)

    def fitted(image: Image.Image | None) -> Image.Image | None:
        if image is None or image.size == size:
            return image
        return image.resize(size, resample=Image.Resampling.LANCZOS, reducing_gap=None)

    return replace(request, init_image=fitted(request.init_image), mask=fitted(request.mask))


def fewest_steps(strength: float) -> int | None:
    """The fewest steps that leave one denoising step at ``strength`` (in (0, 1]) as diffusers
    counts them, ``int(steps * strength) >= 1``; None below 1e-9, where no run is that long."""
    if strength < 1e-9:
        return None
    steps = max(1, math.ceil(1 / strength))
    while int(steps * strength) < 1:  # 1 / strength may round below the product's threshold: a step or two
        steps += 1
    return steps


def _fewest_text(strength: float) -> str:
    fewest = fewest_steps(strength)
    return f"at this strength, {fewest} steps or more" if fewest else "no number of steps reaches it at this strength"
