"""The render core: text-to-image, image-to-image and inpainting on a prepared model with OpenVINO.

The steps mirror diffusers' Stable Diffusion pipelines one for one — the same preprocessing, the
same draws from a CPU ``torch.Generator`` in the same order, the same scheduler calls — so the same
weights, seed, scheduler and steps give diffusers' picture. Only the networks run in OpenVINO.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, cast

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTokenizer

from zoomq import __version__, config
from zoomq.config import Settings
from zoomq.errors import RenderCancelled
from zoomq.model import manifest as mf
from zoomq.render import precision, schedulers
from zoomq.render.blend import LatentBlend
from zoomq.render.ov_models import CompiledParts
from zoomq.render.preview import Preview
from zoomq.render.request import RenderRequest, check_cache, check_decoder, validate
from zoomq.render.unet_call import PlainUNet, UNetCall, WrapUNet

log = logging.getLogger(__name__)

#: Called as ``progress(step, total)`` before the first step (0) and after every step; returning
#: ``False`` cancels the render cooperatively (``RenderCancelled``), within one step.
Progress = Callable[[int, int], "bool | None"]

_EMBEDDINGS_KEPT = 16


def import_image_encoding() -> type:
    """diffusers' latent distribution, imported on the first render that encodes an image: its
    module pulls in all of diffusers' autoencoders, 1.3 s that text-to-image never needs."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    return DiagonalGaussianDistribution


class TextCache(Protocol):
    """Text embeddings kept beyond one process (see ``worker.pieces.JobTexts``)."""

    def get(self, text: str) -> np.ndarray | None: ...

    def put(self, text: str, embeds: np.ndarray) -> None: ...


@dataclass
class RenderResult:
    image: Image.Image
    pixels: np.ndarray  # float32 HWC in [0, 1], before rounding to 8 bits
    recipe: dict
    warnings: list[str] = field(default_factory=list)


class Scheduler(Protocol):
    """What a render calls on a diffusers scheduler (``schedulers.make``): every scheduler class has
    it, though their base ``SchedulerMixin`` declares none of it."""

    timesteps: torch.Tensor
    order: int
    init_noise_sigma: float | torch.Tensor

    def set_timesteps(self, num_inference_steps: int) -> None: ...

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor: ...

    def step(self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor, **kwargs: Any) -> Any: ...

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class CallParameters:
    """A checked request's numbers, every default filled in (``request.validate``; diffusers' "define
    call parameters"), typed as a render uses them: none is None but ``strength``."""

    seed: int
    steps: int
    guidance: float
    height: int
    width: int
    strength: float | None  # None for text-to-image, which has no init image to keep

    @classmethod
    def of(cls, req: RenderRequest) -> CallParameters:
        if req.seed is None or req.steps is None or req.guidance is None or req.height is None or req.width is None:
            raise ValueError(f"{req!r}: not checked; request.validate fills in every default first")
        return cls(req.seed, req.steps, req.guidance, req.height, req.width, req.strength)

    @property
    def guided(self) -> bool:
        """Classifier-free guidance: as in diffusers, guidance ≤ 1 runs the UNet on the prompt alone, batch 1."""
        return self.guidance > 1.0


@dataclass
class Schedule:
    """A render's scheduler and the timesteps it runs (``Renderer.get_timesteps``)."""

    scheduler: Scheduler
    timesteps: torch.Tensor
    steps: int  # steps as diffusers counts them

    def ends_step(self, call: int) -> bool:
        """Whether UNet call ``call`` ends a step: multistep schedulers (PNDM) make extra warm-up
        UNet calls that are not steps of their own."""
        warmup = len(self.timesteps) - self.steps * self.scheduler.order
        if call == len(self.timesteps) - 1:
            return True
        return call + 1 > warmup and (call + 1) % self.scheduler.order == 0


@dataclass
class InitialLatents:
    """Where the denoising loop starts (``Renderer.prepare_latents``)."""

    latents: torch.Tensor
    conditioning: torch.Tensor | None = None  # the inpainting UNet's extra input: mask and masked image latents
    blend: LatentBlend | None = None  # inpainting with a 4-channel UNet: the known part put back every step


@dataclass
class Denoiser:
    """One step of the denoising loop: the UNet's noise prediction, guided, and the scheduler's step."""

    unet: UNetCall
    embeds: np.ndarray  # guided: the negative prompt's first
    schedule: Schedule
    guidance: float
    guided_calls: int  # the calls from the first that are guided; the later ones run the prompt alone
    step_kwargs: dict[str, Any]
    conditioning: torch.Tensor | None = None
    blend: LatentBlend | None = None

    def predict_noise(self, latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction for call ``i``: guided, from a batch of two (the unconditional
        half first) mixed by ``guidance``; otherwise from the prompt alone."""
        guided = i < self.guided_calls
        model_input = torch.cat([latents] * 2) if guided else latents
        model_input = self.schedule.scheduler.scale_model_input(model_input, t)
        if self.conditioning is not None:
            model_input = torch.cat([model_input, torch.cat([self.conditioning] * len(model_input))], dim=1)
        noise_pred = self.unet(model_input, t, self.embeds if guided else self.embeds[-1:], i)
        if not guided:
            return noise_pred
        uncond, cond = noise_pred.chunk(2)
        return uncond + self.guidance * (cond - uncond)

    def step(self, latents: torch.Tensor, i: int, t: torch.Tensor) -> torch.Tensor:
        """The latents after UNet call ``i`` at timestep ``t``."""
        noise_pred = self.predict_noise(latents, i, t)
        latents = self.schedule.scheduler.step(noise_pred, t, latents, **self.step_kwargs, return_dict=False)[0]
        return self.blend(latents, i) if self.blend is not None else latents


class Renderer:
    """A prepared model ready to render; compiles each sub-model once per shape and keeps it.
    Several threads (a worker's render slots) may render at once: each render makes its own
    scheduler, generator, UNet call and infer requests; the shared parts are read-only or locked."""

    def __init__(self, model_dir: Path | str, settings: Settings | None = None,
                 parts: CompiledParts | None = None):
        """``parts``: this model's sub-models, perhaps already compiled (a worker's warm-up)."""
        self.manifest = mf.read(Path(model_dir))
        self.folder = self.manifest.folder
        self.kind = self.manifest.kind
        self.settings = precision.applied(settings or config.settings())
        if parts is None:
            parts = CompiledParts(self.folder, self.settings)
        elif (parts.folder, parts.settings) != (self.folder, self.settings):
            raise ValueError(f"compiled parts of {parts.folder} do not match the model {self.folder} and its settings")
        self.parts = parts
        self._per_thread = threading.local()
        self.tokenizer  # noqa: B018 — loaded now: a bad tokenizer folder fails here, not in a render
        self._embeddings: dict[str, tuple[np.ndarray, list[str]]] = {}
        self._embeddings_lock = threading.Lock()
        self.scheduler_config = json.loads((self.folder / "scheduler" / "scheduler_config.json").read_text())
        #: image pixels per latent pixel along a side, from the model's own VAE (8 in every SD2 model)
        self.latent_factor = self.manifest.latent_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.latent_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.latent_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

    @property
    def tokenizer(self) -> CLIPTokenizer:
        """This thread's tokenizer (one load per render slot): the Rust tokenizer behind it sets its
        padding and truncation on each call, state that the tokenizers library does not promise to
        keep apart between threads ("Already borrowed" errors); not seen here, not left to chance."""
        tokenizer = getattr(self._per_thread, "tokenizer", None)
        if tokenizer is None:
            tokenizer = self._per_thread.tokenizer = CLIPTokenizer.from_pretrained(self.folder / "tokenizer")
        return tokenizer

    @property
    def task(self) -> str:
        return self.kind["task"]

    @property
    def defaults(self) -> dict:
        """Steps, guidance and scheduler of a request that leaves them out: the model's own."""
        return self.manifest.defaults

    # -- building blocks -------------------------------------------------------------------

    def _tokens(self, text: str, warnings: list[str]) -> np.ndarray:
        max_len = self.manifest.data.get("text_max_length", 77)
        ids = self.tokenizer(text, padding="max_length", max_length=max_len, truncation=True).input_ids
        full = self.tokenizer(text).input_ids
        if len(full) > max_len:
            dropped = self.tokenizer.decode(full[max_len - 1 : -1])
            message = f"prompt longer than {max_len} tokens; this part was truncated: {dropped!r}"
            log.warning(message)
            warnings.append(message)
        return np.array([ids], dtype=np.int64)

    def encode_text(self, text: str, warnings: list[str] | None = None, shared: TextCache | None = None) -> np.ndarray:
        """Text embedding of one prompt, shape (1, 77, hidden). Recent prompts are kept in this
        process; ``shared`` also lends and takes embeddings across processes (a zoom job's workers)."""
        with self._embeddings_lock:  # a worker's render slots share this renderer
            kept = self._embeddings.get(text)
        if kept is None:
            notes: list[str] = []
            ids = self._tokens(text, notes)
            embeds = shared.get(text) if shared is not None else None
            if embeds is None:
                embeds = self.parts.run("text_encoder", input_ids=ids)
            kept = (embeds, notes)
            with self._embeddings_lock:
                self._embeddings[text] = kept
                while len(self._embeddings) > _EMBEDDINGS_KEPT:
                    self._embeddings.pop(next(iter(self._embeddings)))
        embeds, notes = kept
        if shared is not None:
            shared.put(text, embeds)
        if warnings is not None:
            warnings.extend(notes)
        return embeds

    def _encode_image(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        moments = torch.from_numpy(self.parts.run("vae_encoder", image=image.numpy()))
        latents = import_image_encoding()(moments).sample(generator)
        return latents * self.kind["vae_scaling_factor"]

    def unet_call(self, req: RenderRequest, timesteps=None) -> UNetCall:
        """How ``req``'s denoise loop runs the UNet: in full every call, or with DeepCache's feature
        caching (``req.cache_interval`` > 1; ``timesteps``: the scheduler's, which it counts by)."""
        if req.cache_interval > 1:
            from zoomq.render.deepcache_unet import DeepCacheUNet

            self.check_cache(req.cache_interval, req.cache_branch)
            return DeepCacheUNet(self.parts, req.cache_interval, req.cache_branch, timesteps)
        return PlainUNet(self.parts)

    def check_cache(self, interval, branch) -> None:
        """``InvalidParameter`` for DeepCache options this model cannot run (one prepared without
        the branch, saying how to prepare it again)."""
        check_cache(interval, branch, self.manifest.cache_branches, self.manifest.prepare_command())

    @property
    def decoders(self) -> tuple[str, ...]:
        """The decoders this model offers: ``full``, and ``tiny`` when it carries TAESD."""
        return self.manifest.decoders

    def decode(self, latents: torch.Tensor, decoder: str = "full") -> np.ndarray:
        """Latents → float32 HWC image in [0, 1], by the model's VAE decoder or (``tiny``) TAESD's,
        which takes the UNet's latents as they are (its scaling factor is 1.0) at a small fraction
        of the cost. Any step's latents will do (a preview). ``InvalidParameter`` for a decoder the
        model lacks."""
        check_decoder(decoder, self.decoders)
        if decoder == "tiny":
            image = self.parts.run(mf.TINY_DECODER, latents=latents.numpy())
        else:
            image = self.parts.run("vae_decoder", latents=(latents / self.kind["vae_scaling_factor"]).numpy())
        return self.image_processor.postprocess(torch.from_numpy(image), output_type="np")[0]

    # -- the pipeline, step by step as diffusers' -------------------------------------------

    def render(self, request: RenderRequest, progress: Progress | None = None,
               texts: TextCache | None = None, latent_blend: bool = False,
               preview: Preview | None = None, wrap_unet: WrapUNet | None = None) -> RenderResult:
        """Render one image; raises ``InvalidParameter`` for bad input, ``RenderCancelled`` on cancel.
        ``texts`` shares prompt embeddings with other processes (see ``encode_text``);
        ``latent_blend``: a text-to-image model may inpaint too (``LatentBlend``; zoom keyframes);
        ``preview``: live previews of the latents every few steps (``render.preview``);
        ``wrap_unet``: runs the UNet another way around the request's own (``render.unet_call``)."""
        # 1. inputs checked, every default filled in
        req = self.check_inputs(request, latent_blend)
        call = CallParameters.of(req)
        warnings: list[str] = []
        generator = torch.Generator("cpu").manual_seed(call.seed)
        # 2. text
        embeds = self.encode_prompt(req, call, warnings, texts)
        # 3. timesteps
        schedule = self.get_timesteps(req.scheduler, call.steps, call.strength)
        # 4. initial latents, drawing from the generator in diffusers' order
        start = self.prepare_latents(req, call, schedule, generator)
        # 5. denoise
        denoiser = self.prepare_denoiser(req, call, schedule, start, embeds, generator, wrap_unet)
        latents = self.denoise(denoiser, start.latents, progress, preview)
        # 6. decode
        pixels = self.decode(latents, req.decoder)
        image = Image.fromarray((pixels * 255).round().astype(np.uint8))
        return RenderResult(image=image, pixels=pixels, recipe=self.recipe(req), warnings=warnings)

    def check_inputs(self, request: RenderRequest, latent_blend: bool) -> RenderRequest:
        """``request`` with a seed and the model's defaults filled in; ``InvalidParameter`` before any
        work, also for a decoder or DeepCache branch the model lacks (saying how to add it)."""
        req = validate(request.with_seed(), self.task, self.kind["native_size"], self.latent_factor,
                       self.defaults, latent_blend)
        check_decoder(req.decoder, self.decoders)
        self.check_cache(req.cache_interval, req.cache_branch)
        return req

    def encode_prompt(self, req: RenderRequest, call: CallParameters, warnings: list[str],
                      texts: TextCache | None) -> np.ndarray:
        """The prompt's embeddings, batch 1; guided, the negative prompt's first (batch 2, the
        unconditional half first as in diffusers)."""
        if req.negative_prompt and not call.guided:
            warnings.append(f"negative_prompt: unused: guidance {call.guidance:g} is off (≤ 1); "
                            "a negative prompt steers only guided steps")
        embeds = self.encode_text(req.prompt, warnings, texts)
        if not call.guided:
            return embeds
        return np.concatenate([self.encode_text(req.negative_prompt, warnings, texts), embeds])

    def get_timesteps(self, scheduler_name: str, steps: int, strength: float | None) -> Schedule:
        """A fresh scheduler set for ``steps``, and the timesteps the render runs: all of them, or from
        an init image (``strength``; None for text-to-image) the last ``strength`` of them, as diffusers'
        image-to-image ``get_timesteps`` cuts them."""
        scheduler = cast(Scheduler, schedulers.make(scheduler_name, self.scheduler_config))
        scheduler.set_timesteps(steps)
        if strength is None:
            return Schedule(scheduler, scheduler.timesteps, steps)
        keep = min(int(steps * strength), steps)
        t_start = max(steps - keep, 0)
        timesteps = scheduler.timesteps[t_start * scheduler.order :]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(t_start * scheduler.order)
        return Schedule(scheduler, timesteps, steps - t_start)

    def _latent_shape(self, call: CallParameters) -> tuple[int, int, int, int]:
        factor = self.latent_factor
        return (1, self.kind["latent_channels"], call.height // factor, call.width // factor)

    def prepare_latents(self, req: RenderRequest, call: CallParameters, schedule: Schedule,
                        generator: torch.Generator) -> InitialLatents:
        """The loop's first latents: noise for text-to-image, else the init image's latents noised to the
        first timestep (inpainting at full strength: noise alone); inpainting adds its mask's part."""
        shape = self._latent_shape(call)
        sigma = schedule.scheduler.init_noise_sigma
        if req.mode == "text-to-image":
            return InitialLatents(randn_tensor(shape, generator=generator) * sigma)
        image = self.image_processor.preprocess(req.init_image, height=call.height, width=call.width)
        image = image.to(torch.float32)
        if req.mode == "inpainting" and self.kind["unet_in_channels"] == 4:
            return self.prepare_blend(req, call, image, schedule, generator)
        if req.mode == "inpainting" and call.strength == 1.0:
            latents = randn_tensor(shape, generator=generator) * sigma
        else:
            image_latents, noise = self._encode_with_noise(image, generator)
            latents = schedule.scheduler.add_noise(image_latents, noise, schedule.timesteps[:1])
        if req.mode == "inpainting":
            return InitialLatents(latents, conditioning=self.prepare_mask_latents(req, call, image, generator))
        return InitialLatents(latents)

    def _encode_with_noise(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's latents and the noise drawn after them, as diffusers draws both."""
        image_latents = self._encode_image(image, generator)
        return image_latents, randn_tensor(image_latents.shape, generator=generator)

    def _mask(self, req: RenderRequest, call: CallParameters) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask (1 = repaint) at the image's size and at the latents'."""
        mask_px = self.mask_processor.preprocess(req.mask, height=call.height, width=call.width)
        return mask_px, torch.nn.functional.interpolate(mask_px, size=self._latent_shape(call)[2:])

    def prepare_mask_latents(self, req: RenderRequest, call: CallParameters, image: torch.Tensor,
                             generator: torch.Generator) -> torch.Tensor:
        """The inpainting UNet's (9 channels) extra input: the mask and the masked image's latents."""
        mask_px, mask = self._mask(req, call)
        masked_latents = self._encode_image(image * (mask_px < 0.5), generator)
        return torch.cat([mask, masked_latents], dim=1)

    def prepare_blend(self, req: RenderRequest, call: CallParameters, image: torch.Tensor, schedule: Schedule,
                      generator: torch.Generator) -> InitialLatents:
        """Inpainting with a 4-channel UNet (``LatentBlend``): the blend needs the image's latents
        whatever the strength; at full strength the loop starts from the noise alone."""
        image_latents, noise = self._encode_with_noise(image, generator)
        if call.strength == 1.0:
            latents = noise * schedule.scheduler.init_noise_sigma
        else:
            latents = schedule.scheduler.add_noise(image_latents, noise, schedule.timesteps[:1])
        mask = self._mask(req, call)[1]
        # diffusers encodes the masked image here for nothing (a 4-channel UNet takes no
        # conditioning); its one draw from the generator is all that shows: make just that.
        randn_tensor(image_latents.shape, generator=generator)
        blend = LatentBlend(image_latents, noise, mask, schedule.scheduler, schedule.timesteps)
        return InitialLatents(latents, blend=blend)

    def prepare_extra_step_kwargs(self, scheduler: Scheduler, generator: torch.Generator,
                                  eta: float) -> dict[str, Any]:
        """``eta`` and ``generator`` for the schedulers whose ``step`` takes them, as diffusers passes them."""
        accepted = set(inspect.signature(scheduler.step).parameters)
        kwargs: dict[str, Any] = {}
        if "eta" in accepted:
            kwargs["eta"] = eta
        if "generator" in accepted:
            kwargs["generator"] = generator
        return kwargs

    def prepare_denoiser(self, req: RenderRequest, call: CallParameters, schedule: Schedule, start: InitialLatents,
                         embeds: np.ndarray, generator: torch.Generator, wrap_unet: WrapUNet | None) -> Denoiser:
        """What each step of the loop runs: the request's way of calling the UNet (``wrap_unet``
        around it, when given), guidance and the scheduler's step."""
        unet = self.unet_call(req, schedule.scheduler.timesteps)
        if wrap_unet is not None:
            unet = wrap_unet(unet)
        # Guidance for the first calls only (guidance_cutoff < 1): later calls run the UNet on the
        # prompt alone, at half the cost, as diffusers does when a step callback turns guidance off.
        guided_calls = math.ceil(req.guidance_cutoff * len(schedule.timesteps)) if call.guided else 0
        step_kwargs = self.prepare_extra_step_kwargs(schedule.scheduler, generator, req.eta)
        return Denoiser(unet, embeds, schedule, call.guidance, guided_calls, step_kwargs,
                        conditioning=start.conditioning, blend=start.blend)

    def denoise(self, denoiser: Denoiser, latents: torch.Tensor, progress: Progress | None,
                preview: Preview | None) -> torch.Tensor:
        """The denoising loop: a step per timestep, each step (as diffusers counts them) reported to
        ``progress``, which may cancel, and ``preview``; the UNet call is closed when it ends."""
        n_steps = denoiser.schedule.steps
        if preview is not None:
            preview.begin()
        if progress is not None and progress(0, n_steps) is False:
            raise RenderCancelled("render cancelled before the first step")
        done = 0
        for i, t in enumerate(denoiser.schedule.timesteps):
            latents = denoiser.step(latents, i, t)
            if denoiser.schedule.ends_step(i):
                done += 1
                self._after_step(latents, done, n_steps, progress, preview)
        close = getattr(denoiser.unet, "close", None)
        if close is not None:  # a worker sharing the loop (a guidance split) is free before the decode
            close("denoising ended")
        return latents

    def _after_step(self, latents: torch.Tensor, done: int, n_steps: int, progress: Progress | None,
                    preview: Preview | None) -> None:
        if progress is not None and progress(done, n_steps) is False:
            raise RenderCancelled(f"render cancelled after step {done} of {n_steps}")
        if preview is not None:
            preview.after_step(self, latents, done, n_steps)

    def recipe(self, req: RenderRequest) -> dict:
        """Everything needed to render ``req`` again: parameters, model identity, version."""
        recipe = {
            "mode": req.mode,
            "prompt": req.prompt,
            "negative_prompt": req.negative_prompt,
            "seed": req.seed,
            "steps": req.steps,
            "guidance": req.guidance,
            "guidance_cutoff": req.guidance_cutoff,
            "decoder": req.decoder,
            "cache_interval": req.cache_interval,
            "cache_branch": req.cache_branch,
            "scheduler": req.scheduler,
            "size": f"{req.width}x{req.height}",
            "eta": req.eta,
            "model": self.manifest.sha256,
            "model_source": self.manifest.data.get("source"),
            "inference_precision": self.settings.inference_precision,
            "zoomq_version": __version__,
        }
        if req.mode != "text-to-image":
            recipe["strength"] = req.strength
        return recipe
