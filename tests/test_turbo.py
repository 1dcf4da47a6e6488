"""SD-Turbo as a model kind of its own: detected from its scheduler, its defaults (1 step, no
guidance) recorded in the manifest and used by every front end, and its renders equal to diffusers'
on a miniature random-weight model with SD-Turbo's configs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from support.cli import run_cli
from support.images import psnr
from support.models import diffusers_pipelines
from zoomq.errors import InvalidParameter
from zoomq.model import manifest as mf
from zoomq.model.kind import DEFAULTS, variant_of
from zoomq.model_prep.architectures import TURBO_SCHEDULER
from zoomq.model_prep.detect import detect
from zoomq.render import png, schedulers
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest, fewest_steps

#: Stricter than test_parity's 40 dB: the miniature model's pictures hardly depend on the step count
#: (1 against 2 steps: 44 dB), so 40 dB would not tell them apart. Measured at f32: 74-77 dB.
PARITY_DB = 60.0
TURBO = {"steps": 1, "guidance": 0.0, "scheduler": "default"}


@pytest.fixture(scope="module")
def turbo(tiny_turbo):
    return (Renderer(tiny_turbo), *diffusers_pipelines(tiny_turbo))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def unet_batches(renderer: Renderer) -> set[int]:
    """The batch sizes the UNet was compiled for: a render compiles each shape it runs."""
    return {dict(shapes)["sample"][0] for part, shapes in renderer.parts.compiled_shapes if part == "unet"}


# -- the kind -------------------------------------------------------------------------------------

def test_prepare_records_the_turbo_kind_and_its_defaults(tiny_turbo, tiny_t2i):
    kind = mf.read(tiny_turbo).kind
    assert kind["variant"] == "turbo" and kind["defaults"] == TURBO
    assert kind["task"] == "text-to-image" and kind["unet_in_channels"] == 4
    scheduler = json.loads((tiny_turbo / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "EulerDiscreteScheduler" and scheduler["timestep_spacing"] == "trailing"
    standard = mf.read(tiny_t2i)
    assert standard.kind["variant"] == "standard" and standard.defaults == {"steps": 20, "guidance": 7.5,
                                                                           "scheduler": "default"}


def test_a_manifest_from_before_defaults_reads_them_from_its_scheduler(tiny_turbo, tmp_path):
    """Models prepared before kinds had defaults: the scheduler config the folder keeps decides."""
    folder = tmp_path / "old"
    shutil.copytree(tiny_turbo / "scheduler", folder / "scheduler")
    data = json.loads((tiny_turbo / mf.MANIFEST).read_text())
    for key in ("variant", "defaults"):
        del data["kind"][key]
    mf.write(folder, {k: v for k, v in data.items() if k != "format"})
    old = mf.read(folder)
    assert old.variant == "turbo" and old.defaults == TURBO


@pytest.mark.parametrize("change, variant", [
    ({}, "turbo"),
    ({"_class_name": "EulerAncestralDiscreteScheduler"}, "turbo"),
    ({"timestep_spacing": "leading"}, "standard"),  # Euler as SD 2's own schedulers space steps
    ({"_class_name": "DDIMScheduler"}, "standard"),
    # zero-terminal-SNR fine-tunes of SD 2.1 space steps "trailing" too, but are not few-step models
    ({"_class_name": "DDIMScheduler", "rescale_betas_zero_snr": True, "prediction_type": "v_prediction"}, "standard"),
    ({"rescale_betas_zero_snr": True}, "standard"),
    ({"prediction_type": "v_prediction"}, "standard"),
    ({"use_karras_sigmas": True}, "standard"),
])
def test_turbo_is_told_by_its_scheduler(change, variant):
    config = {"_class_name": "EulerDiscreteScheduler", **TURBO_SCHEDULER, **change}
    assert variant_of(config) == variant


def test_a_turbo_diffusers_folder_is_detected_as_turbo(tiny_turbo, tiny_t2i):
    """What ``zoomq prepare --model FOLDER`` (or a hub id, once downloaded) reads."""
    kind = detect(tiny_turbo / "diffusers")
    assert kind.variant == "turbo" and kind.defaults == DEFAULTS["turbo"] == TURBO
    assert detect(tiny_t2i / "diffusers").variant == "standard"


def test_prepare_cli_builds_and_names_a_turbo_model(tiny_turbo, capsys):
    """``--turbo`` with ``--tiny``; the same model already in --out is found, not built again."""
    code, out, _ = run_cli("prepare", "--tiny", "--turbo", "--out", tiny_turbo, capsys=capsys)
    assert code == 0 and "nothing to do" in out
    assert "SD-Turbo kind" in out and "defaults: 1 steps, guidance 0" in out
    code, _, err = run_cli("prepare", "--tiny", "--turbo", "--prediction-type", "v_prediction",
                           "--out", tiny_turbo.parent / "never", capsys=capsys)
    assert code == 1 and err.startswith("zoomq: error: --prediction-type v_prediction: SD-Turbo"), err
    assert not (tiny_turbo.parent / "never").exists()


# -- defaults from the model -----------------------------------------------------------------------

def test_no_options_render_with_the_models_defaults_at_batch_1(tiny_turbo):
    renderer = Renderer(tiny_turbo)  # fresh: nothing compiled, no prompt encoded yet
    steps = []
    result = renderer.render(RenderRequest("a lighthouse", seed=4), lambda done, total: steps.append((done, total)))
    assert result.recipe["steps"] == 1 and result.recipe["guidance"] == 0.0 and result.recipe["scheduler"] == "default"
    assert steps == [(0, 1), (1, 1)]
    assert unet_batches(renderer) == {1}  # guidance 0: the prompt alone, never a batch of 2
    assert list(renderer._embeddings) == ["a lighthouse"]  # the empty negative prompt was never encoded
    # the recipe renders the same picture again, its values given explicitly
    again = renderer.render(RenderRequest("a lighthouse", seed=4, steps=1, guidance=0.0))
    assert np.array_equal(result.pixels, again.pixels)


def test_given_options_override_the_defaults(tiny_turbo):
    renderer = Renderer(tiny_turbo)
    result = renderer.render(RenderRequest("a lighthouse", negative_prompt="fog", seed=4, steps=2, guidance=3.0))
    assert result.recipe["steps"] == 2 and result.recipe["guidance"] == 3.0
    assert unet_batches(renderer) == {2}  # guided: negative and prompt in one batch
    assert result.warnings == []
    unguided = renderer.render(RenderRequest("a lighthouse", negative_prompt="fog", seed=4))
    assert any(w.startswith("negative_prompt: unused") for w in unguided.warnings)


def test_render_image_cli_with_no_options_uses_the_model(tiny_turbo, tmp_path, capsys):
    out = tmp_path / "t.png"
    code, stdout, _ = run_cli("render", "image", "a harbour", "--model", tiny_turbo, "--seed", "5", "--out", out,
                              capsys=capsys)
    assert code == 0 and str(out) in stdout
    recipe = png.read_recipe(out)
    assert recipe["steps"] == 1 and recipe["guidance"] == 0.0 and recipe["mode"] == "text-to-image"


def test_a_standard_model_keeps_its_defaults(tiny_t2i):
    renderer = Renderer(tiny_t2i)
    request = RenderRequest("a lighthouse", seed=4)
    from zoomq.render.request import validate

    req = validate(request, renderer.task, 256, renderer.latent_factor, renderer.defaults)
    assert (req.steps, req.guidance) == (20, 7.5)


# -- image-to-image: steps × strength must reach 1 --------------------------------------------------

def test_image_to_image_with_the_defaults_is_refused_naming_strength(turbo, init_image, tmp_path, capsys):
    renderer, _, _ = turbo
    with pytest.raises(InvalidParameter) as e:  # 1 step at the default strength 0.8: no step left
        renderer.render(RenderRequest("a boat", init_image=init_image))
    assert e.value.param == "strength" and "2 steps or more" in str(e.value)
    init_image.save(tmp_path / "in.png")
    code, _, err = run_cli("render", "image", "a boat", "--model", renderer.folder, "--init-image",
                           tmp_path / "in.png", "--out", tmp_path / "o.png", capsys=capsys)
    assert code == 2 and err.startswith("zoomq: error: --strength:"), err
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("steps, strength", [(1, 0.99), (1, 1.0), (2, 0.5), (2, 0.49), (3, 0.3), (3, 0.34),
                                             (4, 0.25), (4, 0.2), (10, 0.1)])
def test_the_strength_rule_is_diffusers_rule(turbo, init_image, steps, strength):
    """Refused exactly where diffusers' image-to-image pipeline would have no step to run."""
    renderer, _, i2i = turbo
    i2i.scheduler = schedulers.make("default", renderer.scheduler_config)
    i2i.scheduler.set_timesteps(steps)
    _, theirs = i2i.get_timesteps(steps, strength, "cpu")
    from zoomq.render.request import validate

    request = RenderRequest("a boat", steps=steps, strength=strength, init_image=init_image)
    if theirs < 1:
        with pytest.raises(InvalidParameter) as e:
            validate(request, "text-to-image", 256, 8, renderer.defaults)
        assert e.value.param == "strength"
        assert fewest_steps(strength) > steps
    else:
        validate(request, "text-to-image", 256, 8, renderer.defaults)
        assert fewest_steps(strength) <= steps


@pytest.mark.parametrize("strength", [1.0, 0.5, 0.3, 0.25, 0.1, 0.07, 1 / 3])
def test_fewest_steps_is_the_boundary(strength):
    n = fewest_steps(strength)
    assert n is not None
    assert int(n * strength) >= 1 and (n == 1 or int((n - 1) * strength) < 1)


# -- parity with diffusers --------------------------------------------------------------------------

@pytest.mark.parametrize("steps", [1, 2, 4])
def test_text_to_image_matches_diffusers(turbo, steps):
    renderer, ref, _ = turbo
    ours = renderer.render(RenderRequest("a castle on a hill", steps=steps, seed=42))  # guidance: the model's 0
    assert ours.recipe["guidance"] == 0.0
    theirs = ref("a castle on a hill", num_inference_steps=steps, guidance_scale=0.0, generator=_generator(42),
                 output_type="np").images[0]
    figure = psnr(ours.pixels, theirs)
    print(f"SD-Turbo kind, text-to-image, {steps} steps: {figure:.1f} dB")
    assert figure >= PARITY_DB


@pytest.mark.parametrize("steps, strength", [(1, 1.0), (2, 0.5), (4, 0.5), (4, 0.75)])
def test_image_to_image_matches_diffusers(turbo, init_image, steps, strength):
    renderer, _, i2i = turbo
    i2i.scheduler = schedulers.make("default", renderer.scheduler_config)  # a fresh one, as ours
    ours = renderer.render(RenderRequest("a red boat", steps=steps, seed=7, init_image=init_image, strength=strength))
    theirs = i2i("a red boat", image=init_image, strength=strength, num_inference_steps=steps, guidance_scale=0.0,
                 generator=_generator(7), output_type="np").images[0]
    figure = psnr(ours.pixels, theirs)
    print(f"SD-Turbo kind, image-to-image, {steps} steps at strength {strength}: {figure:.1f} dB")
    assert figure >= PARITY_DB


def test_parity_check_tells_the_step_counts_apart(turbo):
    """The threshold means something: 1 and 2 steps give other pictures, well below it (44 dB)."""
    renderer, ref, _ = turbo
    one = renderer.render(RenderRequest("a castle on a hill", steps=1, seed=42))
    two = ref("a castle on a hill", num_inference_steps=2, guidance_scale=0.0, generator=_generator(42),
              output_type="np").images[0]
    assert psnr(one.pixels, two) < PARITY_DB - 10


# -- the producer applies the same defaults ----------------------------------------------------------

def test_producer_fills_requests_with_the_served_models_defaults(tmp_path, monkeypatch, tiny_turbo, tiny_t2i,
                                                                 redis_server):
    """The workers' registry carries each model's defaults; the producer validates with them, so a
    queued job renders what the same request renders in process."""
    from zoomq.producer import Producer
    from zoomq.queue import registry

    server = redis_server(tmp_path / "redis")
    try:
        monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
        producer = Producer()
        models = registry.describe_models([tiny_turbo, tiny_t2i])
        assert models["turbo"]["defaults"] == TURBO and models["turbo"]["variant"] == "turbo"
        registry.announce(producer.redis, "w1@test", {"models": models}, heartbeat=30)
        request = producer.check_image("x", model="turbo")
        assert (request.steps, request.guidance) == (1, 0.0)
        assert (producer.check_image("x", model="t2i").steps, producer.check_image("x", model="t2i").guidance) \
            == (20, 7.5)
        with pytest.raises(InvalidParameter) as e:
            producer.check_image("x", model="turbo", init_image=Image.new("RGB", (64, 64)))
        assert e.value.param == "strength"
        settings, _ = producer.check_zoom("x", model="turbo", size=128, mask_width=32)
        assert (settings.steps, settings.guidance) == (1, 0.0)
        estimate_work = producer.check_zoom("x", model="turbo", size=128, mask_width=32, steps=2)[0]
        assert estimate_work.steps == 2 and estimate_work.guidance == 0.0
    finally:
        server.stop()
