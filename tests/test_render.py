"""The render core's behaviour beyond parity: determinism, recipes, cancel, bad input, long prompts."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from support.cli import run_cli
from support.images import psnr
from zoomq.config import settings
from zoomq.errors import InvalidParameter, RenderCancelled
from zoomq.model import manifest as mf
from zoomq.render import ov_models, png, precompile
from zoomq.render.ov_models import CompiledParts
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest


@pytest.fixture(scope="module")
def renderer(tiny_t2i):
    return Renderer(tiny_t2i)


def test_same_request_gives_identical_pixels(renderer):
    request = RenderRequest("a spiral staircase", steps=4, seed=123, scheduler="euler-ancestral")
    first, second = renderer.render(request), renderer.render(request)
    assert np.array_equal(np.asarray(first.image), np.asarray(second.image))
    assert np.array_equal(first.pixels, second.pixels)


def test_unset_seed_is_drawn_recorded_and_reproducible(renderer):
    result = renderer.render(RenderRequest("a red door", steps=3))
    seed = result.recipe["seed"]
    assert isinstance(seed, int)
    again = renderer.render(RenderRequest("a red door", steps=3, seed=seed))
    assert np.array_equal(result.pixels, again.pixels)


def test_png_carries_its_recipe(renderer, tmp_path, capsys, tiny_t2i):
    out = tmp_path / "x.png"
    code, stdout, _ = run_cli(
        "render", "image", "a harbour at dawn", "--model", tiny_t2i, "--negative-prompt", "fog",
        "--steps", "3", "--guidance", "6", "--seed", "77", "--scheduler", "dpm++", "--size", "192x128",
        "--out", out, capsys=capsys,
    )
    assert code == 0 and str(out) in stdout
    with Image.open(out) as image:
        assert isinstance(image, PngImagePlugin.PngImageFile) and image.size == (192, 128)
        chunks = dict(image.text)
    assert chunks["prompt"] == "a harbour at dawn" and chunks["negative_prompt"] == "fog"
    assert chunks["seed"] == "77" and chunks["steps"] == "3" and chunks["guidance"] == "6.0"
    assert chunks["scheduler"] == "dpm++" and chunks["size"] == "192x128"
    assert chunks["model"] == renderer.manifest.sha256 and chunks["zoomq_version"]
    recipe = json.loads(chunks["zoomq"])
    assert recipe == png.read_recipe(out)
    # the recipe renders the same picture again
    again = renderer.render(
        RenderRequest(recipe["prompt"], recipe["negative_prompt"], recipe["steps"], recipe["guidance"],
                      recipe["seed"], recipe["scheduler"], width=192, height=128)
    )
    assert np.array_equal(np.asarray(again.image), np.asarray(Image.open(out).convert("RGB")))


def test_cancel_stops_within_one_step(renderer):
    seen = []

    def progress(step, total):
        seen.append((step, total))
        return step < 2  # stop after the second step

    with pytest.raises(RenderCancelled):
        renderer.render(RenderRequest("a boat", steps=10, seed=1, scheduler="ddim"), progress)
    assert seen == [(0, 10), (1, 10), (2, 10)]


def test_long_prompt_is_truncated_with_a_warning(renderer):
    long = "a very detailed castle " * 30
    result = renderer.render(RenderRequest(long, steps=2, seed=1))
    assert result.warnings and "truncated" in result.warnings[0]
    short = renderer.render(RenderRequest("a castle", steps=2, seed=1))
    assert short.warnings == []


@pytest.mark.parametrize(
    "args, option",
    [
        (["--steps", "0"], "--steps"),
        (["--size", "100"], "--size"),
        (["--size", "256x100"], "--size"),
        (["--size", "big"], "--size"),
        (["--scheduler", "nope"], "--scheduler"),
        (["--guidance", "-1"], "--guidance"),
        (["--guidance-cutoff", "0"], "--guidance-cutoff"),
        (["--guidance-cutoff", "1.5"], "--guidance-cutoff"),
        (["--strength", "0.5"], "--strength"),  # without an init image
        (["--init-image", "{img}", "--strength", "0"], "--strength"),
        (["--init-image", "{img}", "--strength", "1.5"], "--strength"),
        (["--init-image", "{bad}"], "--init-image"),
        (["--init-image", "{missing}"], "--init-image"),
        (["--init-image", "{img}", "--mask", "{img}"], "--mask"),  # a mask for a text-to-image model
    ],
)
def test_bad_input_is_one_line_naming_the_option_and_exit_2(tiny_t2i, tmp_path, capsys, args, option):
    img = tmp_path / "in.png"
    Image.new("RGB", (64, 64)).save(img)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    files = {"img": img, "bad": bad, "missing": tmp_path / "missing.png"}
    args = [a.format(**files) for a in args]
    code, _, err = run_cli("render", "image", "x", "--model", tiny_t2i, *args, "--out", tmp_path / "o.png",
                           capsys=capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"zoomq: error: {option}:"), err
    assert not (tmp_path / "o.png").exists()


def test_several_bad_options_are_one_line_each(tiny_t2i, tmp_path, capsys):
    code, _, err = run_cli("render", "image", "x", "--model", tiny_t2i, "--steps", "0", "--guidance", "-1",
                           "--scheduler", "nope", "--out", tmp_path / "o.png", capsys=capsys)
    assert code == 2
    assert [line.split(":")[2].strip() for line in err.strip().splitlines()] == ["--steps", "--guidance", "--scheduler"]


def test_inpainting_model_needs_a_mask(tiny_inpaint, tmp_path, capsys):
    img = tmp_path / "in.png"
    Image.new("RGB", (256, 256)).save(img)
    code, _, err = run_cli("render", "image", "x", "--model", tiny_inpaint, "--init-image", img,
                           "--out", tmp_path / "o.png", capsys=capsys)
    assert code == 2 and err.startswith("zoomq: error: --mask: required")


def test_model_folder_that_is_not_prepared(tiny_t2i, tmp_path, capsys):
    code, _, err = run_cli("render", "image", "x", "--model", tiny_t2i / "diffusers", "--out", tmp_path / "o.png",
                           capsys=capsys)
    assert code == 2 and "zoomq prepare --model" in err


def test_validate_rejects_non_numbers():
    from zoomq.render.request import validate

    with pytest.raises(InvalidParameter) as e:
        # the wrong type is what this test checks
        validate(RenderRequest("x", steps="many"), "text-to-image", 256)  # type: ignore[arg-type]
    assert e.value.param == "steps"


def test_console_script_renders_with_progress(tiny_inpaint, init_image, square_mask, tmp_path):
    """The installed ``zoomq`` entry point, as a user runs it: inpainting with a progress bar."""
    init_image.save(tmp_path / "in.png")
    square_mask.save(tmp_path / "mask.png")
    proc = subprocess.run(
        [sys.executable, "-m", "zoomq", "render", "image", "a window", "--model", str(tiny_inpaint),
         "--init-image", str(tmp_path / "in.png"), "--mask", str(tmp_path / "mask.png"), "--steps", "4",
         "--seed", "2", "--out", str(tmp_path / "out.png")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "denoising" in proc.stderr and "4/4" in proc.stderr
    recipe = png.read_recipe(tmp_path / "out.png")
    assert recipe["mode"] == "inpainting" and recipe["strength"] == 1.0


def test_foreign_miniature_model_with_v_prediction(tmp_path, capsys):
    """A diffusers folder zoomq did not build (other sizes, 3-level UNet, DDIM v-prediction),
    converted through the CLI, renders like diffusers — also at a size the UNet's upsampling
    factor does not divide."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from zoomq.model_prep.tokenizer import write_tokenizer

    torch.manual_seed(2024)
    unet = UNet2DConditionModel(
        sample_size=20, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, cross_attention_dim=64, use_linear_projection=True, norm_num_groups=16,
    )
    vae = AutoencoderKL(
        block_out_channels=(16, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=16, layers_per_block=1,
    )
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ))
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="trailing",
    )
    folder = tmp_path / "foreign"
    # Any: mypy reads diffusers' top-level names as its placeholder classes, which have no attributes.
    pipe: Any = StableDiffusionPipeline(
        vae=vae, text_encoder=text.eval(), tokenizer=write_tokenizer(tmp_path / "tok"), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)

    code, out, _ = run_cli("prepare", "--model", folder, "--out", tmp_path / "ir", capsys=capsys)
    assert code == 0 and "text-to-image model, 160 px, v_prediction" in out
    renderer = Renderer(tmp_path / "ir")
    for size, scheduler_name in ((160, "default"), (136, "euler")):
        ours = renderer.render(RenderRequest("a bridge", steps=5, seed=9, scheduler=scheduler_name,
                                             width=size, height=size))
        from zoomq.render import schedulers

        pipe.scheduler = schedulers.make(scheduler_name, renderer.scheduler_config)
        theirs = pipe("a bridge", num_inference_steps=5, height=size, width=size, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(9)).images[0]
        assert ours.pixels.shape == (size, size, 3)
        assert psnr(ours.pixels, theirs) >= 40


def test_by_default_the_compile_cache_keeps_the_warm_up_alone(tiny_t2i, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ZOOMQ_INFERENCE_PRECISION", "f32")
    Renderer(tiny_t2i).render(RenderRequest("a hill", steps=1, seed=1))
    assert not list(tmp_path.glob("ov-cache/*/*.blob"))  # a render's own compiles: one blob per size
    parts = CompiledParts(tiny_t2i, settings())
    precompile.compile_default(parts, mf.read(tiny_t2i))  # a worker's warm-up: bounded, one per model
    warm = sorted(p.name for p in (tmp_path / "ov-cache" / "cpu-f32").glob("*.blob"))
    assert len(warm) == 3  # text encoder, UNet, VAE decoder at the native size
    again = CompiledParts(tiny_t2i, settings())
    precompile.compile_default(again, mf.read(tiny_t2i))
    assert all(again.compiled(part, shapes).get_property("LOADED_FROM_CACHE") is True
               for part, shapes in precompile.default_shapes(mf.read(tiny_t2i)))
    monkeypatch.setenv("ZOOMQ_COMPILE_CACHE", "off")
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path / "off"))
    precompile.compile_default(CompiledParts(tiny_t2i, settings()), mf.read(tiny_t2i))
    assert not list((tmp_path / "off").glob("ov-cache/*/*.blob"))


def test_an_unwritable_compile_cache_is_skipped_with_a_warning(tiny_t2i, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="zoomq")
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")  # where the cache folder would be: even root cannot make it
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(blocked))
    monkeypatch.setenv("ZOOMQ_COMPILE_CACHE", "on")
    parts = CompiledParts(tiny_t2i, settings())
    precompile.compile_default(parts, mf.read(tiny_t2i))
    assert len(parts.compiled_shapes) == 3
    assert "ZOOMQ_COMPILE_CACHE" in caplog.text and "not writable" in caplog.text
    # A folder that fails between that check and the compile (removed, its disk gone): OpenVINO
    # refuses the compile; it is made again without the cache.
    monkeypatch.setattr(ov_models, "_cache_usable", lambda folder: True)
    caplog.clear()
    shapes = dict(precompile.default_shapes(mf.read(tiny_t2i)))["unet"]
    unet = CompiledParts(tiny_t2i, settings()).compiled("unet", shapes)
    assert unet.get_property("LOADED_FROM_CACHE") is False
    assert "compiling it without the cache" in caplog.text


def test_compiled_models_are_cached_on_disk_per_precision(tiny_t2i, tmp_path, monkeypatch):
    monkeypatch.setenv("ZOOMQ_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("ZOOMQ_COMPILE_CACHE", "on")
    Renderer(tiny_t2i).render(RenderRequest("a hill", steps=1, seed=1))
    blobs = sorted(p.name for p in (tmp_path / "ov-cache" / "cpu-f32").glob("*.blob"))
    assert len(blobs) == 3  # text encoder, UNet, VAE decoder at this size
    # a fresh renderer (as in a restarted worker) loads those blobs instead of compiling anew
    fresh = Renderer(tiny_t2i)
    unet = fresh.parts.compiled("unet", {"sample": [2, 4, 32, 32], "timestep": [],
                                         "encoder_hidden_states": [2, 77, 32]})
    assert unet.get_property("LOADED_FROM_CACHE") is True
    assert sorted(p.name for p in (tmp_path / "ov-cache" / "cpu-f32").glob("*.blob")) == blobs


def test_text_embeddings_are_computed_once_per_prompt(tiny_t2i, monkeypatch):
    renderer = Renderer(tiny_t2i)
    calls = []
    run = renderer.parts.run

    def counting(part, **inputs):
        calls.append(part)
        return run(part, **inputs)

    monkeypatch.setattr(renderer.parts, "run", counting)
    long = "a very detailed castle " * 30
    for seed in (1, 2, 3):
        result = renderer.render(RenderRequest(long, negative_prompt="fog", steps=1, seed=seed))
        assert result.warnings and "truncated" in result.warnings[0]  # reported every time
    assert calls.count("text_encoder") == 2  # the prompt and the negative prompt, once each
