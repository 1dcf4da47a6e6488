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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTokenizer

from zoomq import __version__
from zoomq.config import Settings
from zoomq.config import settings as current_settings
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


class Renderer:
    """A prepared model ready to render; compiles each sub-model once per shape and keeps it."""

    def __init__(self, model_dir: Path | str, settings: Settings | None = None,
                 parts: CompiledParts | None = None):
        """``parts``: this model's sub-models, perhaps already compiled (a worker's warm-up)."""
        self.manifest = mf.read(Path(model_dir))
        self.folder = self.manifest.folder
        self.kind = self.manifest.kind
        self.settings = precision.applied(settings or current_settings())
        if parts is None:
            parts = CompiledParts(self.folder, self.settings)
        elif (parts.folder, parts.settings) != (self.folder, self.settings):
            raise ValueError(f"compiled parts of {parts.folder} do not match the model {self.folder} and its settings")
        self.parts = parts
        self.tokenizer = CLIPTokenizer.from_pretrained(self.folder / "tokenizer")
        self._embeddings: dict[str, tuple[np.ndarray, list[str]]] = {}
        self.scheduler_config = json.loads((self.folder / "scheduler" / "scheduler_config.json").read_text())
        #: image pixels per latent pixel along a side, from the model's own VAE (8 in every SD2 model)
        self.latent_factor = self.manifest.latent_factor
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.latent_factor)
        self.mask_processor = VaeImageProcessor(
            vae_scale_factor=self.latent_factor, do_normalize=False, do_binarize=True, do_convert_grayscale=True
        )

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
        if text not in self._embeddings:
            notes: list[str] = []
            ids = self._tokens(text, notes)
            embeds = shared.get(text) if shared is not None else None
            if embeds is None:
                embeds = self.parts.run("text_encoder", input_ids=ids)
            self._embeddings[text] = (embeds, notes)
            while len(self._embeddings) > _EMBEDDINGS_KEPT:
                self._embeddings.pop(next(iter(self._embeddings)))
        embeds, notes = self._embeddings[text]
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

    # -- the pipeline ----------------------------------------------------------------------

    def render(self, request: RenderRequest, progress: Progress | None = None,
               texts: TextCache | None = None, latent_blend: bool = False,
               preview: Preview | None = None, wrap_unet: WrapUNet | None = None) -> RenderResult:
        """Render one image; raises ``InvalidParameter`` for bad input, ``RenderCancelled`` on cancel.
        ``texts`` shares prompt embeddings with other processes (see ``encode_text``);
        ``latent_blend``: a text-to-image model may inpaint too (``LatentBlend``; zoom keyframes);
        ``preview``: live previews of the latents every few steps (``render.preview``);
        ``wrap_unet``: runs the UNet another way around the request's own (``render.unet_call``)."""
        req = validate(request.with_seed(), self.task, self.kind["native_size"], self.latent_factor,
                       self.defaults, latent_blend)
        check_decoder(req.decoder, self.decoders)  # before any work: a model without TAESD says how to add it
        self.check_cache(req.cache_interval, req.cache_branch)  # and one without DeepCache's parts
        warnings: list[str] = []
        generator = torch.Generator("cpu").manual_seed(req.seed)
        cfg = req.guidance > 1.0  # as diffusers: guidance ≤ 1 runs the UNet on the prompt alone, batch 1
        if req.negative_prompt and not cfg:
            warnings.append(f"negative_prompt: unused: guidance {req.guidance:g} is off (≤ 1); "
                            "a negative prompt steers only guided steps")

        # 1. text
        embeds = self.encode_text(req.prompt, warnings, texts)
        if cfg:
            embeds = np.concatenate([self.encode_text(req.negative_prompt, warnings, texts), embeds])

        # 2. timesteps
        scheduler = schedulers.make(req.scheduler, self.scheduler_config)
        scheduler.set_timesteps(req.steps)
        timesteps = scheduler.timesteps
        n_steps = req.steps
        if req.mode != "text-to-image":
            keep = min(int(req.steps * req.strength), req.steps)
            t_start = max(req.steps - keep, 0)
            timesteps = scheduler.timesteps[t_start * scheduler.order :]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * scheduler.order)
            n_steps = req.steps - t_start

        # 3. initial latents, drawing from the generator in diffusers' order
        factor = self.latent_factor
        shape = (1, self.kind["latent_channels"], req.height // factor, req.width // factor)
        conditioning = blend = None  # inpainting: the 9-channel UNet's extra input, or a 4-channel one's blend
        if req.mode == "text-to-image":
            latents = randn_tensor(shape, generator=generator) * scheduler.init_noise_sigma
        else:
            image = self.image_processor.preprocess(req.init_image, height=req.height, width=req.width)
            image = image.to(torch.float32)
            full_strength = req.strength == 1.0
            blended = req.mode == "inpainting" and self.kind["unet_in_channels"] == 4
            if req.mode == "inpainting" and full_strength and not blended:
                latents = randn_tensor(shape, generator=generator) * scheduler.init_noise_sigma
            else:  # a blend needs the image's latents whatever the strength
                image_latents = self._encode_image(image, generator)
                noise = randn_tensor(image_latents.shape, generator=generator)
                if blended and full_strength:
                    latents = noise * scheduler.init_noise_sigma
                else:
                    latents = scheduler.add_noise(image_latents, noise, timesteps[:1])
            if req.mode == "inpainting":
                mask_px = self.mask_processor.preprocess(req.mask, height=req.height, width=req.width)
                mask = torch.nn.functional.interpolate(mask_px, size=shape[2:])
                if blended:
                    # diffusers encodes the masked image here for nothing (a 4-channel UNet takes no
                    # conditioning); its one draw from the generator is all that shows: make just that.
                    randn_tensor(image_latents.shape, generator=generator)
                    blend = LatentBlend(image_latents, noise, mask, scheduler, timesteps)
                else:
                    masked_latents = self._encode_image(image * (mask_px < 0.5), generator)
                    conditioning = torch.cat([mask, masked_latents], dim=1)

        # 4. denoise
        unet = self.unet_call(req, scheduler.timesteps)
        if wrap_unet is not None:
            unet = wrap_unet(unet)
        step_kwargs = {}
        accepted = set(inspect.signature(scheduler.step).parameters)
        if "eta" in accepted:
            step_kwargs["eta"] = req.eta
        if "generator" in accepted:
            step_kwargs["generator"] = generator
        # Steps are counted as diffusers counts them: multistep schedulers (PNDM) make extra
        # warm-up UNet calls that are not steps of their own.
        warmup = len(timesteps) - n_steps * scheduler.order
        # Guidance for the first calls only (guidance_cutoff < 1): later calls run the UNet on the
        # prompt alone, at half the cost, as diffusers does when a step callback turns guidance off.
        guided_calls = math.ceil(req.guidance_cutoff * len(timesteps)) if cfg else 0
        done = 0
        if preview is not None:
            preview.begin()
        if progress is not None and progress(0, n_steps) is False:
            raise RenderCancelled("render cancelled before the first step")
        for i, t in enumerate(timesteps):
            guided = i < guided_calls
            model_input = torch.cat([latents] * 2) if guided else latents
            model_input = scheduler.scale_model_input(model_input, t)
            if conditioning is not None:
                model_input = torch.cat([model_input, torch.cat([conditioning] * len(model_input))], dim=1)
            noise_pred = unet(model_input, t, embeds if guided else embeds[-1:], i)
            if guided:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + req.guidance * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents, **step_kwargs, return_dict=False)[0]
            if blend is not None:
                latents = blend(latents, i)
            if i == len(timesteps) - 1 or (i + 1 > warmup and (i + 1) % scheduler.order == 0):
                done += 1
                if progress is not None and progress(done, n_steps) is False:
                    raise RenderCancelled(f"render cancelled after step {done} of {n_steps}")
                if preview is not None:
                    preview.after_step(self, latents, done, n_steps)

        close = getattr(unet, "close", None)
        if close is not None:  # a worker sharing the loop (a guidance split) is free before the decode
            close("denoising ended")

        # 5. decode
        pixels = self.decode(latents, req.decoder)
        image = Image.fromarray((pixels * 255).round().astype(np.uint8))
        return RenderResult(image=image, pixels=pixels, recipe=self.recipe(req), warnings=warnings)

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
