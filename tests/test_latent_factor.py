"""The render core takes the latent factor (pixels per latent pixel) from the model's own VAE.

Every SD2 model downsamples by 8; these miniature models downsample by 2, so a render that assumed
8 anywhere would come out at a quarter of the asked size, or crash when inpainting.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from support.images import psnr
from support.models import F2_SIZE
from zoomq.errors import InvalidParameter
from zoomq.model import manifest as mf
from zoomq.queue import registry
from zoomq.render import precompile, schedulers
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest, validate

PARITY_DB = 40.0  # as in test_parity
STEPS = 5
SIZES = [(96, 64), (F2_SIZE, F2_SIZE)]  # (width, height): a wide one, and the native size


@pytest.fixture(scope="module")
def t2i(tiny_t2i_f2):
    from diffusers import StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(tiny_t2i_f2 / "diffusers")
    ref.set_progress_bar_config(disable=True)
    return Renderer(tiny_t2i_f2), ref


@pytest.fixture(scope="module")
def inpaint(tiny_inpaint_f2):
    from diffusers import StableDiffusionInpaintPipeline

    ref = StableDiffusionInpaintPipeline.from_pretrained(tiny_inpaint_f2 / "diffusers")
    ref.set_progress_bar_config(disable=True)
    return Renderer(tiny_inpaint_f2), ref


def _reference(pipe, renderer, seed, **kwargs):
    """diffusers' picture with the renderer's default scheduler, as test_parity draws it."""
    pipe.scheduler = schedulers.make("default", renderer.scheduler_config)
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(generator=generator, output_type="np", **kwargs).images[0]


def test_models_have_a_latent_factor_of_2(t2i, inpaint):
    """The premise of the other tests: diffusers itself sees a factor of 2 in these models."""
    for renderer, ref in (t2i, inpaint):
        assert ref.vae_scale_factor == 2 and renderer.latent_factor == 2
        assert renderer.kind["native_size"] == F2_SIZE


@pytest.mark.parametrize("width, height", SIZES)
def test_text_to_image_at_the_asked_size_matches_diffusers(t2i, width, height):
    renderer, ref = t2i
    ours = renderer.render(RenderRequest("a castle on a hill", negative_prompt="fog", steps=STEPS, seed=42,
                                         width=width, height=height))
    theirs = _reference(ref, renderer, 42, prompt="a castle on a hill", negative_prompt="fog",
                        num_inference_steps=STEPS, width=width, height=height)
    assert ours.pixels.shape == theirs.shape == (height, width, 3)
    assert ours.image.size == (width, height)
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_text_to_image_defaults_to_the_native_size(t2i):
    renderer, _ = t2i
    assert renderer.render(RenderRequest("a tower", steps=2, seed=1)).image.size == (F2_SIZE, F2_SIZE)


@pytest.mark.parametrize("strength", [1.0, 0.7])
@pytest.mark.parametrize("width, height", SIZES)
def test_inpainting_at_the_asked_size_matches_diffusers(inpaint, init_image, square_mask, width, height, strength):
    renderer, ref = inpaint
    ours = renderer.render(RenderRequest("a door", steps=STEPS, seed=3, init_image=init_image, mask=square_mask,
                                         strength=strength, width=width, height=height))
    theirs = _reference(ref, renderer, 3, prompt="a door", image=init_image, mask_image=square_mask,
                        strength=strength, num_inference_steps=STEPS, width=width, height=height)
    assert ours.pixels.shape == theirs.shape == (height, width, 3)
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_manifest_records_the_factor(tiny_t2i_f2, tiny_inpaint_f2, tiny_t2i):
    models = registry.describe_models([tiny_t2i_f2, tiny_inpaint_f2, tiny_t2i])
    assert [m["latent_factor"] for m in models.values()] == [2, 2, 8]
    m = mf.read(tiny_t2i_f2)
    assert m.kind["vae_scale_factor"] == 2 and m.latent_factor == 2
    # the warm-up compiles the UNet at the latent size a native render uses
    unet = dict(precompile.default_shapes(m))["unet"]
    assert unet["sample"][2:] == [F2_SIZE // 2, F2_SIZE // 2]


def _without_recorded_factor(source, folder):
    """A copy of ``source``'s manifest (in ``folder``) as a zoomq that recorded no factor wrote it."""
    data = json.loads((source / mf.MANIFEST).read_text())
    del data["kind"]["vae_scale_factor"]
    folder.mkdir()
    (folder / mf.MANIFEST).write_text(json.dumps(data))
    return folder


def test_manifest_without_the_factor_reads_it_from_the_vae_config_else_8(tiny_t2i_f2, tmp_path):
    bare = _without_recorded_factor(tiny_t2i_f2, tmp_path / "bare")
    assert mf.read(bare).latent_factor == 8
    kept = _without_recorded_factor(tiny_t2i_f2, tmp_path / "kept")
    shutil.copytree(tiny_t2i_f2 / "diffusers" / "vae", kept / "diffusers" / "vae")
    assert mf.read(kept).latent_factor == 2


def test_sizes_must_be_whole_latents_of_a_factor_above_8():
    with pytest.raises(InvalidParameter) as e:
        validate(RenderRequest("x", width=72, height=64), "text-to-image", 512, latent_factor=16)
    assert e.value.param == "width" and e.value.value == 72
    assert "multiple of 16" in e.value.rule and "latent factor is 16" in e.value.rule
    assert validate(RenderRequest("x", width=80, height=64), "text-to-image", 512, latent_factor=16).width == 80
    # an init image's size is rounded down to whole latents too, as diffusers' image processor does
    image = Image.new("RGB", (120, 120))
    assert validate(RenderRequest("x", init_image=image), "text-to-image", 512, latent_factor=16).width == 112
    assert validate(RenderRequest("x", init_image=image), "text-to-image", 512).width == 120


def test_a_factor_below_8_keeps_the_multiple_of_8_rule():
    with pytest.raises(InvalidParameter, match="multiple of 8 between"):
        validate(RenderRequest("x", width=66, height=64), "text-to-image", F2_SIZE, latent_factor=2)
