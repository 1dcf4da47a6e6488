"""The tiny autoencoder (TAESD, diffusers' ``AutoencoderTiny``) as an extra decoder: prepared as a
part of its own, hashed by the manifest, chosen per render with ``decoder="tiny"``, equal to
diffusers with ``pipe.vae = AutoencoderTiny`` on the same weights, refused clearly where missing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from support.cli import run_cli
from support.images import psnr
from zoomq.errors import InvalidParameter, ModelError
from zoomq.model import manifest as mf
from zoomq.model_prep import tiny_autoencoder as taesd
from zoomq.model_prep.prepare import prepare_random
from zoomq.render import png, schedulers
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest, validate

PARITY_DB = 40.0
STEPS = 4
TINY_FILES = {f"{mf.TINY_DECODER}.xml", f"{mf.TINY_DECODER}.bin"}


def _reference(model_dir, tiny_dir, scheduler="default", **kwargs) -> np.ndarray:
    """diffusers' own text-to-image pipeline on the preparation's weights, TAESD as its VAE."""
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model_dir / "diffusers")
    pipe.vae = AutoencoderTiny.from_pretrained(tiny_dir)
    pipe.set_progress_bar_config(disable=True)
    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    pipe.scheduler = schedulers.make(scheduler, config)
    generator = torch.Generator("cpu").manual_seed(kwargs.pop("seed"))
    return pipe(generator=generator, output_type="np", **kwargs).images[0]


@pytest.fixture(scope="module")
def taesd_dir(tmp_path_factory):
    """A random-weight AutoencoderTiny (TAESD's architecture) saved by ``save_pretrained``, as a
    downloaded madebyollin/taesd is."""
    return taesd.build_random(tmp_path_factory.mktemp("taesd") / "taesd", seed=11)


# -- preparing ------------------------------------------------------------------------------------


def test_prepared_model_lists_and_hashes_the_tiny_decoder(tiny_t2i_taesd, tiny_t2i):
    m = mf.read(tiny_t2i_taesd)
    assert m.data["tiny_autoencoder"] == {"source": "random:seed=3", "part": mf.TINY_DECODER, "scaling_factor": 1.0}
    assert TINY_FILES <= set(m.data["files"])
    for name in TINY_FILES:
        assert mf.sha256_file(tiny_t2i_taesd / name) == m.data["files"][name]
    m.verify_files()
    assert m.decoders == ("full", "tiny")
    kept = json.loads((tiny_t2i_taesd / taesd.KEPT / "config.json").read_text())
    assert kept["_class_name"] == "AutoencoderTiny" and taesd.latent_factor(kept) == 8
    # the rest is tiny_t2i's model exactly
    plain = mf.read(tiny_t2i)
    assert plain.decoders == ("full",) and not TINY_FILES & set(plain.data["files"])
    assert {k: v for k, v in m.data["files"].items() if k not in TINY_FILES and k.endswith(".bin")} == \
        {k: v for k, v in plain.data["files"].items() if k.endswith(".bin")}


def test_tiny_decoder_is_added_in_place_from_a_local_folder_and_kept(tiny_t2i, tiny_t2i_taesd, taesd_dir, tmp_path,
                                                                     capsys):
    model = shutil.copytree(tiny_t2i, tmp_path / "model")
    before = mf.read(model).data["files"]
    said: list[str] = []
    m = prepare_random(model, full=False, tiny_autoencoder=str(taesd_dir), report=said.append)
    assert any("adding the tiny autoencoder" in line for line in said)
    assert not any(line.startswith("converting unet") for line in said)  # only the new part was converted
    assert m.data["tiny_autoencoder"]["source"] == str(taesd_dir.resolve())
    assert {k: v for k, v in m.data["files"].items() if k not in TINY_FILES} == before
    m.verify_files()
    assert not [p for p in model.iterdir() if p.name.startswith(".")]  # no work folder left behind

    # preparing again without the option keeps it, with nothing to do
    said.clear()
    again = prepare_random(model, full=False, report=said.append)
    assert again.data["tiny_autoencoder"] == m.data["tiny_autoencoder"] and any("nothing to do" in s for s in said)

    # another one replaces it, through the CLI: a random one the same as the fixture's (same seed)
    code, out, err = run_cli("prepare", "--tiny", "--out", model, "--tiny-autoencoder", "random", capsys=capsys)
    assert code == 0, err
    m = mf.read(model)
    assert m.data["tiny_autoencoder"]["source"] == "random:seed=3"
    fixture = mf.read(tiny_t2i_taesd).data["files"]
    assert m.data["files"][f"{mf.TINY_DECODER}.bin"] == fixture[f"{mf.TINY_DECODER}.bin"]
    m.verify_files()


def test_a_local_folder_decodes_as_diffusers_does(tiny_t2i, taesd_dir, tmp_path):
    model = shutil.copytree(tiny_t2i, tmp_path / "model")
    prepare_random(model, full=False, tiny_autoencoder=str(taesd_dir))
    ours = Renderer(model).render(RenderRequest("a lighthouse", steps=STEPS, seed=9, decoder="tiny"))
    theirs = _reference(model, taesd_dir, prompt="a lighthouse", num_inference_steps=STEPS, seed=9)
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_wrong_tiny_autoencoders_are_refused_before_anything_is_written(tiny_t2i, taesd_dir, tmp_path):
    with pytest.raises(ModelError, match=r"--tiny-autoencoder .*not an AutoencoderTiny"):
        prepare_random(tmp_path / "a", full=False, tiny_autoencoder=str(tiny_t2i / "diffusers" / "vae"))
    with pytest.raises(ModelError, match=r"--tiny-autoencoder .*1/8 .* 1/2"):  # TAESD's 8x latents, a 2x model
        prepare_random(tmp_path / "b", full=False, size=128, latent_factor=2, tiny_autoencoder=str(taesd_dir))
    with pytest.raises(ModelError, match="not a Hugging Face hub id"):
        prepare_random(tmp_path / "c", full=False, tiny_autoencoder="no such thing")
    assert not list(tmp_path.iterdir())


def test_a_hub_id_without_network_says_how_to_bring_it():
    """A real attempt against the hub for a name nobody published (so never in a cache)."""
    from zoomq.errors import PrepareError
    from zoomq.model_prep import tiny_autoencoder

    with pytest.raises(PrepareError, match=r"--tiny-autoencoder zoomq-tests/no-such-taesd: cannot fetch .* "
                                           r"pass --tiny-autoencoder DIR"):
        tiny_autoencoder.resolve("zoomq-tests/no-such-taesd")


def test_both_conversion_routes_give_the_same_tiny_decoder(taesd_dir, tmp_path):
    import openvino as ov
    from diffusers import AutoencoderTiny

    from zoomq.model_prep.convert import tiny_decoder_part
    from zoomq.model_prep.export import convert_part

    latents = torch.randn(1, 4, 20, 12, generator=torch.Generator().manual_seed(2)) * 2
    with torch.no_grad():
        theirs = AutoencoderTiny.from_pretrained(taesd_dir).decode(latents).sample.numpy()
    for route in ("direct", "onnx"):
        dest = tmp_path / route
        dest.mkdir()
        xml = convert_part(taesd_dir, tiny_decoder_part(4), dest, route=route)
        compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        ours = compiled({"latents": latents.numpy()})[compiled.output(0)]
        assert ours.shape == (1, 3, 160, 96)
        assert psnr((ours + 1) / 2, (theirs + 1) / 2) >= PARITY_DB, route


def test_random_builder_follows_the_latent_factor(tmp_path):
    from diffusers import AutoencoderTiny

    folder = taesd.build_random(tmp_path / "f2", seed=1, latent_factor=2)
    config = json.loads((folder / "config.json").read_text())
    assert taesd.latent_factor(config) == 2
    with torch.no_grad():
        image = AutoencoderTiny.from_pretrained(folder).decode(torch.randn(1, 4, 8, 8)).sample
    assert image.shape == (1, 3, 16, 16)
    assert 0.2 < float(image.std()) < 1.0  # spread over [-1, 1], not a constant picture
    assert taesd.latent_factor(json.loads((taesd.build_random(tmp_path / "f8") / "config.json").read_text())) == 8


# -- rendering ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["default", "euler"])
def test_tiny_decoder_matches_diffusers_with_autoencoder_tiny(tiny_t2i_taesd, scheduler):
    ours = Renderer(tiny_t2i_taesd).render(
        RenderRequest("a castle on a hill", negative_prompt="fog", steps=STEPS, seed=42, scheduler=scheduler,
                      decoder="tiny"))
    theirs = _reference(tiny_t2i_taesd, tiny_t2i_taesd / taesd.KEPT, scheduler, prompt="a castle on a hill",
                        negative_prompt="fog", num_inference_steps=STEPS, seed=42)
    assert ours.pixels.shape == theirs.shape == (256, 256, 3)
    assert psnr(ours.pixels, theirs) >= PARITY_DB
    assert float(theirs.std()) > 0.1  # a picture, not a constant
    assert ours.recipe["decoder"] == "tiny"


def test_image_to_image_with_the_tiny_decoder_matches_diffusers(tiny_t2i_taesd, init_image):
    from diffusers import AutoencoderTiny, StableDiffusionImg2ImgPipeline

    ours = Renderer(tiny_t2i_taesd).render(
        RenderRequest("a red boat", steps=STEPS, seed=7, init_image=init_image, strength=0.6, decoder="tiny"))
    # diffusers encodes with the VAE it decodes with: encode with the full VAE, decode with TAESD, as we do
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_t2i_taesd / "diffusers")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = schedulers.make("default", Renderer(tiny_t2i_taesd).scheduler_config)
    latents = pipe(prompt="a red boat", image=init_image, strength=0.6, num_inference_steps=STEPS,
                   generator=torch.Generator("cpu").manual_seed(7), output_type="latent").images
    tiny = AutoencoderTiny.from_pretrained(tiny_t2i_taesd / taesd.KEPT)
    with torch.no_grad():
        theirs = pipe.image_processor.postprocess(tiny.decode(latents).sample, output_type="np")[0]
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_default_decoder_is_full_and_unchanged(tiny_t2i_taesd, tiny_t2i):
    request = RenderRequest("a castle on a hill", steps=STEPS, seed=5)
    assert request.decoder == "full"
    default = Renderer(tiny_t2i_taesd).render(request)
    without_taesd = Renderer(tiny_t2i).render(request)
    np.testing.assert_array_equal(default.pixels, without_taesd.pixels)
    assert default.recipe["decoder"] == without_taesd.recipe["decoder"] == "full"
    tiny = Renderer(tiny_t2i_taesd).render(RenderRequest("a castle on a hill", steps=STEPS, seed=5, decoder="tiny"))
    assert psnr(tiny.pixels, default.pixels) < 30  # another decoder: another picture


def test_decode_is_a_callable_for_any_latents(tiny_t2i_taesd, tiny_t2i):
    """What a live preview will call: any step's latents, any size, the tiny decoder."""
    from diffusers import AutoencoderTiny
    from diffusers.image_processor import VaeImageProcessor

    renderer = Renderer(tiny_t2i_taesd)
    latents = torch.randn(1, 4, 24, 40, generator=torch.Generator().manual_seed(0)) * 2
    ours = renderer.decode(latents, decoder="tiny")
    with torch.no_grad():
        image = AutoencoderTiny.from_pretrained(tiny_t2i_taesd / taesd.KEPT).decode(latents).sample
    theirs = VaeImageProcessor(vae_scale_factor=8).postprocess(image, output_type="np")[0]
    assert ours.shape == theirs.shape == (192, 320, 3)
    assert psnr(ours, theirs) >= PARITY_DB
    with pytest.raises(InvalidParameter) as e:
        Renderer(tiny_t2i).decode(latents, decoder="tiny")
    assert e.value.param == "decoder" and "--tiny-autoencoder" in e.value.rule


def test_decoder_values_are_checked():
    with pytest.raises(InvalidParameter) as e:
        validate(RenderRequest("x", decoder="medium"), "text-to-image", 256)
    assert e.value.param == "decoder" and "full or tiny" in e.value.rule
    assert validate(RenderRequest("x", decoder="tiny"), "text-to-image", 256).decoder == "tiny"
    from zoomq.zoom.settings import ZoomSettings
    from zoomq.zoom.settings import validate as validate_zoom

    with pytest.raises(InvalidParameter) as e:
        validate_zoom(ZoomSettings("x", decoder=["tiny"]))  # type: ignore[arg-type]  # the bad type is the test
    assert e.value.param == "decoder"


def test_render_on_a_model_without_it_says_how_to_add_it(tiny_t2i):
    with pytest.raises(InvalidParameter) as e:
        Renderer(tiny_t2i).render(RenderRequest("x", steps=1, seed=1, decoder="tiny"))
    assert e.value.param == "decoder" and "zoomq prepare" in e.value.rule and "--tiny-autoencoder" in e.value.rule


# -- the command line -----------------------------------------------------------------------------


def test_cli_renders_with_the_tiny_decoder(tiny_t2i_taesd, tmp_path, capsys):
    out = tmp_path / "tiny.png"
    code, _, err = run_cli("render", "image", "a castle", "--model", tiny_t2i_taesd, "--steps", "2", "--seed", "3",
                           "--decoder", "tiny", "--out", out, capsys=capsys)
    assert code == 0, err
    assert png.read_recipe(out)["decoder"] == "tiny"
    reference = Renderer(tiny_t2i_taesd).render(RenderRequest("a castle", steps=2, seed=3, decoder="tiny"))
    from PIL import Image

    with Image.open(out) as image:
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(reference.image))


def test_cli_refuses_the_tiny_decoder_on_a_model_without_it(tiny_t2i, tmp_path, capsys):
    out = tmp_path / "x.png"
    code, _, err = run_cli("render", "image", "a castle", "--model", tiny_t2i, "--steps", "2",
                           "--decoder", "tiny", "--out", out, capsys=capsys)
    assert code == 2
    assert err.startswith("zoomq: error: --decoder: this model has no tiny decoder")
    assert "--tiny-autoencoder" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    code, _, err = run_cli("render", "image", "a castle", "--model", tiny_t2i, "--decoder", "small", "--out", out,
                           capsys=capsys)
    assert code == 2 and "--decoder" in err


# -- zoom and the queue ---------------------------------------------------------------------------


def test_zoom_keyframes_decode_with_the_tiny_decoder(tiny_inpaint, tmp_path):
    from zoomq.zoom.compose import render_zoom
    from zoomq.zoom.settings import ZoomSettings

    model = shutil.copytree(tiny_inpaint, tmp_path / "inpaint")
    prepare_random(model, full=False, inpainting=True, tiny_autoencoder="random")
    settings = ZoomSettings("a forest", keyframes=2, size=128, mask_width=32, interpolation_frames=2, steps=2, seed=4,
                            decoder="tiny")
    result = render_zoom(Renderer(model), settings, tmp_path / "zoom.mp4")
    for k in range(2):
        assert png.read_recipe(result.keyframes_dir / f"keyframe-{k:03d}.png")["decoder"] == "tiny"
    assert result.sidecar["settings"]["decoder"] == "tiny"
    with pytest.raises(InvalidParameter) as e:  # refused before any keyframe is written
        render_zoom(Renderer(tiny_inpaint), settings, tmp_path / "none" / "zoom.mp4")
    assert e.value.param == "decoder" and not (tmp_path / "none").exists()


def test_producer_refuses_the_tiny_decoder_for_a_model_announced_without_it(tiny_t2i, tiny_t2i_taesd, tmp_path,
                                                                           monkeypatch, redis_server):
    from zoomq.producer import Producer
    from zoomq.queue import registry

    server = redis_server(tmp_path / "redis")
    try:
        monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
        producer = Producer()
        models = registry.describe_models([tiny_t2i, tiny_t2i_taesd])
        assert models["t2i"]["decoders"] == ["full"] and models["t2i-taesd"]["decoders"] == ["full", "tiny"]
        registry.announce(producer.redis, "w1", {"models": models}, heartbeat=30)
        assert producer.check_image("x", model="t2i-taesd", decoder="tiny").decoder == "tiny"
        with pytest.raises(InvalidParameter) as e:
            producer.submit_image("x", model="t2i", decoder="tiny")
        assert e.value.param == "decoder" and "--tiny-autoencoder" in e.value.rule
        assert producer.check_image("x", model="t2i").decoder == "full"
        assert producer.redis.zcard("zoomq:jobs") == 0  # nothing was enqueued
    finally:
        server.stop()
