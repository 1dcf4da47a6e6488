"""OpenVINO renders equal diffusers' own pipelines on the same weights, seed, scheduler and steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from support.images import psnr
from support.models import diffusers_pipelines
from zoomq.render import schedulers
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest

PARITY_DB = 40.0
STEPS = 5


@pytest.fixture(scope="module")
def t2i(tiny_t2i):
    return (Renderer(tiny_t2i), *diffusers_pipelines(tiny_t2i))


@pytest.fixture(scope="module")
def inpaint(tiny_inpaint):
    from diffusers import StableDiffusionInpaintPipeline

    ref = StableDiffusionInpaintPipeline.from_pretrained(tiny_inpaint / "diffusers")
    ref.set_progress_bar_config(disable=True)
    return Renderer(tiny_inpaint), ref


def _reference(pipe, renderer, scheduler, seed, **kwargs):
    pipe.scheduler = schedulers.make(scheduler, renderer.scheduler_config)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(generator=generator, output_type="np", **kwargs).images[0]


@pytest.mark.parametrize("scheduler", schedulers.NAMES)
def test_text_to_image_matches_diffusers(t2i, scheduler):
    renderer, ref, _ = t2i
    ours = renderer.render(
        RenderRequest("a castle on a hill", negative_prompt="fog", steps=STEPS, seed=42, scheduler=scheduler)
    )
    theirs = _reference(
        ref, renderer, scheduler, 42, prompt="a castle on a hill", negative_prompt="fog", num_inference_steps=STEPS
    )
    assert ours.pixels.shape == theirs.shape == (256, 256, 3)
    assert psnr(ours.pixels, theirs) >= PARITY_DB


@pytest.mark.parametrize("scheduler", schedulers.NAMES)
def test_image_to_image_matches_diffusers(t2i, init_image, scheduler):
    renderer, _, i2i = t2i
    ours = renderer.render(
        RenderRequest("a red boat", steps=STEPS, seed=7, scheduler=scheduler, init_image=init_image, strength=0.6)
    )
    theirs = _reference(
        i2i, renderer, scheduler, 7, prompt="a red boat", image=init_image, strength=0.6, num_inference_steps=STEPS
    )
    assert psnr(ours.pixels, theirs) >= PARITY_DB


@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("scheduler", schedulers.NAMES)
def test_inpainting_matches_diffusers(inpaint, init_image, square_mask, scheduler, strength):
    renderer, ref = inpaint
    ours = renderer.render(
        RenderRequest(
            "a door", steps=STEPS, seed=3, scheduler=scheduler, init_image=init_image, mask=square_mask,
            strength=strength,
        )
    )
    theirs = _reference(
        ref, renderer, scheduler, 3, prompt="a door", image=init_image, mask_image=square_mask,
        strength=strength, num_inference_steps=STEPS,
    )
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_without_guidance_and_with_ddim_eta(t2i):
    """guidance ≤ 1 runs the UNet at batch 1; eta > 0 makes DDIM draw from the generator each step."""
    renderer, ref, _ = t2i
    ours = renderer.render(RenderRequest("a tree", steps=STEPS, seed=5, guidance=1.0, scheduler="ddim", eta=0.7))
    theirs = _reference(
        ref, renderer, "ddim", 5, prompt="a tree", guidance_scale=1.0, eta=0.7, num_inference_steps=STEPS
    )
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_parity_check_detects_a_wrong_seed(t2i):
    """The parity threshold is meaningful: a render with another seed falls far below it."""
    renderer, ref, _ = t2i
    ours = renderer.render(RenderRequest("a castle on a hill", steps=STEPS, seed=43))
    theirs = _reference(ref, renderer, "default", 42, prompt="a castle on a hill", num_inference_steps=STEPS)
    assert psnr(ours.pixels, theirs) < 25


def test_text_embeddings_match_torch(t2i):
    """The text encoder on its own, since prompts move the miniature model's pictures only a little."""
    renderer, ref, _ = t2i
    for text in ("a castle on a hill", "", "zoom " * 100):
        ours = renderer.encode_text(text)
        ids = ref.tokenizer(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            theirs = ref.text_encoder(ids.input_ids)[0].numpy()
        np.testing.assert_allclose(ours, theirs, atol=2e-2)


def test_onnx_route_renders_like_direct_route(tiny_t2i, tiny_t2i_onnx):
    request = RenderRequest("a lighthouse", steps=STEPS, seed=11)
    direct = Renderer(tiny_t2i).render(request)
    via_onnx = Renderer(tiny_t2i_onnx).render(request)
    assert psnr(direct.pixels, via_onnx.pixels) >= 60


def test_bf16_stays_close_to_diffusers(t2i, tiny_t2i, monkeypatch):
    monkeypatch.setenv("ZOOMQ_INFERENCE_PRECISION", "bf16")
    _, ref, _ = t2i
    renderer = Renderer(tiny_t2i)
    ours = renderer.render(RenderRequest("a castle on a hill", steps=STEPS, seed=42))
    theirs = _reference(ref, renderer, "default", 42, prompt="a castle on a hill", num_inference_steps=STEPS)
    assert psnr(ours.pixels, theirs) >= 30


def _stop_guidance_after(calls: int, *chunked: str):
    """diffusers' documented way to end guidance early: a step-end callback that sets the scale to
    0 and keeps the prompt half of the batched tensors."""

    def callback(pipe, step_index, timestep, tensors):
        if step_index == calls - 1:
            pipe._guidance_scale = 0.0
            for name in chunked:
                tensors[name] = tensors[name].chunk(2)[-1]
        return tensors

    return {"callback_on_step_end": callback, "callback_on_step_end_tensor_inputs": list(chunked)}


def test_guidance_cutoff_matches_diffusers_ending_guidance_early(t2i):
    renderer, ref, _ = t2i
    # DDIM: one UNet call per step, so "2 of 5 steps guided" means the same in both (PNDM adds calls).
    request = RenderRequest("a castle on a hill", negative_prompt="fog", steps=STEPS, seed=42, guidance=9.0,
                            guidance_cutoff=0.4, scheduler="ddim")
    ours = renderer.render(request)
    theirs = _reference(ref, renderer, "ddim", 42, prompt="a castle on a hill", negative_prompt="fog",
                        guidance_scale=9.0, num_inference_steps=STEPS, **_stop_guidance_after(2, "prompt_embeds"))
    assert psnr(ours.pixels, theirs) >= PARITY_DB
    full = renderer.render(RenderRequest("a castle on a hill", negative_prompt="fog", steps=STEPS, seed=42,
                                         guidance=9.0, scheduler="ddim"))
    assert psnr(ours.pixels, full.pixels) < psnr(ours.pixels, theirs) - 10  # the cutoff changed the picture
    assert ours.recipe["guidance_cutoff"] == 0.4


def test_guidance_cutoff_in_inpainting_matches_diffusers(inpaint, init_image, square_mask):
    renderer, ref = inpaint
    ours = renderer.render(RenderRequest("a door", steps=STEPS, seed=3, guidance=9.0, guidance_cutoff=0.5,
                                         scheduler="ddim", init_image=init_image, mask=square_mask, strength=1.0))
    theirs = _reference(ref, renderer, "ddim", 3, prompt="a door", image=init_image, mask_image=square_mask,
                        strength=1.0, guidance_scale=9.0, num_inference_steps=STEPS,
                        **_stop_guidance_after(3, "prompt_embeds", "mask", "masked_image_latents"))
    assert psnr(ours.pixels, theirs) >= PARITY_DB
