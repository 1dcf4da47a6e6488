"""DeepCache (``--cache-interval N``): renders equal diffusers with the ``DeepCache`` package's
helper on the same weights, seed, scheduler and caching; caching really skips the deep layers; a
model prepared without DeepCache's parts says how to prepare it again; every front end passes the
option through and records it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from support.cli import run_cli
from support.deepcache_reference import DeepCacheSDHelper
from support.images import psnr
from support.models import diffusers_pipelines, shared_model
from zoomq.errors import InvalidParameter
from zoomq.model import manifest as mf
from zoomq.model.manifest import shallow_part_name
from zoomq.queue import registry
from zoomq.render import png, schedulers
from zoomq.render.deepcache_unet import DeepCacheUNet
from zoomq.render.pipeline import Renderer
from zoomq.render.request import RenderRequest

PARITY_DB = 40.0
STEPS = 8
#: Below this, a cached render is told apart from the uncached one (measured on the miniature
#: models: 40-50 dB between them, 74-78 dB between ours and the reference at f32).
APART_DB = 60.0


def reference(pipe, renderer, interval, *, branch=0, scheduler="default", seed=0, **kwargs) -> np.ndarray:
    """diffusers' pipeline with DeepCache's helper enabled for this one render."""
    pipe.scheduler = schedulers.make(scheduler, renderer.scheduler_config)
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        return pipe(generator=torch.Generator("cpu").manual_seed(seed), output_type="np", **kwargs).images[0]
    finally:
        helper.disable()


def render(renderer, request):
    """(result, the DeepCacheUNet or PlainUNet the render ran)."""
    seen = []

    def wrap_unet(unet):
        seen.append(unet)
        return unet

    result = renderer.render(request, wrap_unet=wrap_unet)
    return result, seen[0]


@pytest.fixture(scope="module")
def t2i(tiny_t2i):
    renderer = Renderer(tiny_t2i)
    uncached = renderer.render(RenderRequest("a castle", negative_prompt="fog", steps=STEPS, seed=42))
    return renderer, *diffusers_pipelines(tiny_t2i), uncached.pixels


@pytest.fixture(scope="module")
def inpaint(tiny_inpaint):
    from diffusers import StableDiffusionInpaintPipeline

    ref = StableDiffusionInpaintPipeline.from_pretrained(tiny_inpaint / "diffusers")
    ref.set_progress_bar_config(disable=True)
    return Renderer(tiny_inpaint), ref


@pytest.fixture(scope="module")
def branches_model():
    """A miniature model carrying every branch it has (two blocks: 0-5)."""
    return shared_model("t2i-deepcache-branches", cache_branches=tuple(range(6)))


@pytest.fixture(scope="module")
def old_model(tiny_t2i, tmp_path_factory):
    """The miniature model as a zoomq from before DeepCache prepared it: no branch, no shallow part."""
    folder = tmp_path_factory.mktemp("old") / "old"
    shutil.copytree(tiny_t2i, folder, ignore=shutil.ignore_patterns("diffusers", f"{mf.SHALLOW_UNET_PREFIX}*"))
    data = json.loads((folder / mf.MANIFEST).read_text())
    data.pop("deepcache")
    data["conversion"] = 2
    data["files"] = mf.hashed_files(folder)
    mf.write(folder, {k: v for k, v in data.items() if k != "format"})
    return folder


# -- parity with the reference ---------------------------------------------------------------------

@pytest.mark.parametrize("interval", [2, 3, 5])
def test_text_to_image_matches_diffusers_with_deepcache(t2i, interval):
    renderer, ref, _, uncached = t2i
    ours, unet = render(renderer, RenderRequest("a castle", negative_prompt="fog", steps=STEPS, seed=42,
                                                cache_interval=interval))
    theirs = reference(ref, renderer, interval, seed=42, prompt="a castle", negative_prompt="fog",
                       num_inference_steps=STEPS)
    # the tiny model's default scheduler is PNDM: 9 calls for 8 steps, its repeated timestep counted
    # as its first occurrence (the package's list.index), so the full calls are by timestep position
    positions = [0, 1, 1, *range(3, STEPS + 1)]
    assert isinstance(unet, DeepCacheUNet) and unet.full_calls[0] == 0
    assert unet.full_calls == [i for i, p in enumerate(positions) if p % interval == 0]
    assert unet.shallow_calls == [i for i, p in enumerate(positions) if p % interval]
    assert psnr(ours.pixels, theirs) >= PARITY_DB
    assert psnr(ours.pixels, uncached) < APART_DB  # it did skip: not the uncached picture
    assert ours.recipe["cache_interval"] == interval and ours.recipe["cache_branch"] == 0


@pytest.mark.parametrize("scheduler", ["euler", "dpm++"])
def test_other_schedulers_count_calls(t2i, scheduler):
    renderer, ref, _, _ = t2i
    ours, unet = render(renderer, RenderRequest("a tree", steps=6, seed=5, scheduler=scheduler, cache_interval=3))
    theirs = reference(ref, renderer, 3, scheduler=scheduler, seed=5, prompt="a tree", num_inference_steps=6)
    assert unet.full_calls == [0, 3] and unet.shallow_calls == [1, 2, 4, 5]
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_image_to_image_matches_diffusers_with_deepcache(t2i, init_image):
    """Counting starts at the first call, inside the scheduler's list (the package's start_timestep)."""
    renderer, _, i2i, _ = t2i
    ours, unet = render(renderer, RenderRequest("a red boat", steps=10, seed=7, scheduler="ddim", init_image=init_image,
                                                strength=0.6, cache_interval=3))
    theirs = reference(i2i, renderer, 3, scheduler="ddim", seed=7, prompt="a red boat", image=init_image,
                       strength=0.6, num_inference_steps=10)
    assert unet.full_calls == [0, 3] and unet.shallow_calls == [1, 2, 4, 5]
    assert psnr(ours.pixels, theirs) >= PARITY_DB


@pytest.mark.parametrize("interval", [2, 3, 5])
def test_inpainting_matches_diffusers_with_deepcache(inpaint, init_image, square_mask, interval):
    renderer, ref = inpaint
    ours, unet = render(renderer, RenderRequest("a door", steps=STEPS, seed=3, scheduler="ddim", init_image=init_image,
                                                mask=square_mask, cache_interval=interval))
    theirs = reference(ref, renderer, interval, scheduler="ddim", seed=3, prompt="a door", image=init_image,
                       mask_image=square_mask, num_inference_steps=STEPS)
    assert unet.full_calls == list(range(0, STEPS, interval))
    assert psnr(ours.pixels, theirs) >= PARITY_DB


@pytest.mark.parametrize("branch", [1, 2, 3, 5])
def test_every_branch_matches_diffusers(branches_model, branch):
    """The branch mapping (block = B // 3, layer = B % 3, up blocks from the output) as the helper's."""
    renderer = Renderer(branches_model)
    ref, _ = diffusers_pipelines(branches_model)
    request = RenderRequest("a bridge", negative_prompt="rain", steps=6, seed=11, scheduler="euler")
    ours, unet = render(renderer, RenderRequest(**{**request.__dict__, "cache_interval": 3, "cache_branch": branch}))
    theirs = reference(ref, renderer, 3, branch=branch, scheduler="euler", seed=11, prompt="a bridge",
                       negative_prompt="rain", num_inference_steps=6)
    assert unet.shallow_calls == [1, 2, 4, 5] and unet.shallow_name == shallow_part_name(branch)
    assert psnr(ours.pixels, theirs) >= PARITY_DB
    assert psnr(ours.pixels, renderer.render(request).pixels) < APART_DB


def test_the_shallow_part_holds_only_the_shallow_layers(branches_model):
    """Branch 0 on the miniature UNet: conv_in, the last up block's last ResNet, conv_out; a deeper
    branch holds more. Sizes of the IR weights tell: the shallow parts are small beside the UNet."""
    sizes = {b: (branches_model / f"{shallow_part_name(b)}.bin").stat().st_size for b in range(6)}
    unet = (branches_model / "unet.bin").stat().st_size
    assert sizes[0] < 0.1 * unet
    assert sizes[0] < sizes[1] < sizes[2] and sizes[3] < sizes[4] < sizes[5] < unet


class CutoffHelper(DeepCacheSDHelper):
    """The package's helper where the batch may shrink mid-render (guidance ending early): a kept
    output then gives its last elements, the prompt's half (the package would fail on the sizes)."""

    def wrap_unet_forward(self):
        super().wrap_unet_forward()
        forward = self.pipe.unet.forward

        def batch_noting(*args, **kwargs):
            self.batch = args[0].shape[0]
            return forward(*args, **kwargs)

        self.pipe.unet.forward = batch_noting

    def wrap_block_forward(self, block, block_name, block_i, layer_i, blocktype="down"):
        super().wrap_block_forward(block, block_name, block_i, layer_i, blocktype)
        forward = block.forward
        key = (blocktype, block_name, block_i, layer_i)

        def sliced(value):
            if isinstance(value, torch.Tensor):
                return value[-self.batch:] if value.shape[0] > self.batch else value
            return type(value)(sliced(v) for v in value) if isinstance(value, (tuple, list)) else value

        def wrapped(*args, **kwargs):
            if key in self.cached_output:
                self.cached_output[key] = sliced(self.cached_output[key])
            return forward(*args, **kwargs)

        block.forward = wrapped


def test_guidance_cutoff_keeps_the_prompts_half_of_the_feature(t2i):
    """Guidance ending mid-render: the batch goes from 2 to 1 and the kept feature's prompt half
    carries on (a cached call right after the cutoff runs at batch 1 without a full call first)."""
    from test_parity import _stop_guidance_after

    renderer, ref, _, _ = t2i
    ours, unet = render(renderer, RenderRequest("a castle", negative_prompt="fog", steps=6, seed=1, guidance=9.0,
                                                scheduler="ddim", guidance_cutoff=0.5, cache_interval=2))
    assert unet.full_calls == [0, 2, 4] and unet.shallow_calls == [1, 3, 5]
    assert {dict(shapes)["feature"][0] for part, shapes in renderer.parts.compiled_shapes
            if part == shallow_part_name(0)} >= {1, 2}
    ref.scheduler = schedulers.make("ddim", renderer.scheduler_config)
    helper = CutoffHelper(pipe=ref)
    helper.set_params(cache_interval=2, cache_branch_id=0)
    helper.enable()
    try:
        theirs = ref(prompt="a castle", negative_prompt="fog", guidance_scale=9.0, num_inference_steps=6,
                     generator=torch.Generator("cpu").manual_seed(1), output_type="np",
                     **_stop_guidance_after(3, "prompt_embeds")).images[0]
    finally:
        helper.disable()
    assert psnr(ours.pixels, theirs) >= PARITY_DB


def test_cache_interval_one_is_the_plain_unet(t2i):
    renderer, _, _, uncached = t2i
    result, unet = render(renderer, RenderRequest("a castle", negative_prompt="fog", steps=STEPS, seed=42,
                                                  cache_interval=1))
    assert type(unet).__name__ == "PlainUNet"
    assert np.array_equal(result.pixels, uncached) and result.recipe["cache_interval"] == 1


# -- models prepared without it --------------------------------------------------------------------

def test_prepare_records_the_branches(tiny_t2i, branches_model):
    assert mf.read(tiny_t2i).cache_branches == (0,)
    assert mf.read(branches_model).cache_branches == tuple(range(6))
    assert f"{shallow_part_name(0)}.bin" in mf.read(tiny_t2i).data["files"]
    assert registry.describe_models([tiny_t2i])["t2i"]["cache_branches"] == [0]


def test_an_old_model_says_to_prepare_it_again(old_model):
    renderer = Renderer(old_model)
    renderer.render(RenderRequest("x", steps=1, seed=0))  # without caching it renders as before
    with pytest.raises(InvalidParameter) as e:
        renderer.render(RenderRequest("x", steps=2, seed=0, cache_interval=3))
    assert e.value.param == "cache_interval"
    text = str(e.value)
    assert "(got 3)" in text and "prepare it again" in text
    assert f"`zoomq prepare --tiny --size 256 --out {old_model}`" in text


def test_a_branch_the_model_lacks_names_the_ones_it_has(tiny_t2i):
    with pytest.raises(InvalidParameter) as e:
        Renderer(tiny_t2i).render(RenderRequest("x", steps=2, seed=0, cache_interval=2, cache_branch=4))
    assert e.value.param == "cache_branch"
    assert "branch 0 only" in str(e.value) and "--cache-branches 0,4" in str(e.value)


@pytest.mark.parametrize("value", [0, -1, 51, 2.5, "3"])
def test_silly_intervals_are_refused(tiny_t2i, value):
    with pytest.raises(InvalidParameter) as e:
        Renderer(tiny_t2i).render(RenderRequest("x", steps=2, cache_interval=value))
    assert e.value.param == "cache_interval"


# -- front ends ------------------------------------------------------------------------------------

def test_cli_render_image_records_it(tiny_t2i, tmp_path, capsys):
    out = tmp_path / "a.png"
    code, _, err = run_cli("render", "image", "a fox", "--model", tiny_t2i, "--steps", "4", "--seed", "1",
                           "--cache-interval", "2", "--out", out, capsys=capsys)
    assert code == 0, err
    recipe = png.read_recipe(out)
    assert recipe["cache_interval"] == 2 and recipe["cache_branch"] == 0


@pytest.mark.parametrize("args, option", [(["--cache-interval", "0"], "--cache-interval"),
                                          (["--cache-branch", "12"], "--cache-branch")])
def test_cli_refuses_bad_values_in_one_line(tiny_t2i, tmp_path, capsys, args, option):
    code, _, err = run_cli("render", "image", "a fox", "--model", tiny_t2i, *args, "--out", tmp_path / "a.png",
                           capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"zoomq: error: {option}"), err


def test_cli_old_model_error(old_model, tmp_path, capsys):
    code, _, err = run_cli("render", "image", "a fox", "--model", old_model, "--steps", "2", "--cache-interval", "3",
                           "--out", tmp_path / "a.png", capsys=capsys)
    assert code == 2 and "--cache-interval" in err and f"zoomq prepare --tiny --size 256 --out {old_model}" in err, err


def test_zoom_keyframes_run_cached(tiny_inpaint, tmp_path, capsys):
    out = tmp_path / "z.mp4"
    code, _, err = run_cli("render", "zoom", "a tunnel", "--model", tiny_inpaint, "--keyframes", "2", "--size", "128",
                           "--mask-width", "32", "--interpolation-frames", "2", "--steps", "4", "--seed", "1",
                           "--cache-interval", "3", "--out", out, capsys=capsys)
    assert code == 0, err
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["settings"]["cache_interval"] == 3
    for k in (0, 1):
        assert png.read_recipe(out.with_name("z.keyframes") / f"keyframe-{k:03d}.png")["cache_interval"] == 3


def test_api_refuses_caching_on_a_model_without_it(make_client, old_model):
    client = make_client()
    info = {"models": registry.describe_models([old_model]), "queues": ["render", "encode"]}
    registry.announce(client.producer.redis, "w2@test", info, heartbeat=600)
    response = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "old", "cache_interval": 3})
    assert response.status_code == 400
    errors = {e["field"]: e for e in response.get_json()["errors"]}
    assert set(errors) == {"cache_interval"} and "zoomq prepare" in errors["cache_interval"]["rule"]
    ok = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i", "cache_interval": 3})
    assert ok.status_code == 202
    zoom = client.post("/api/jobs", json={"kind": "zoom", "prompt": "x", "model": "inpaint", "keyframes": 2,
                                          "cache_interval": 0})
    assert zoom.status_code == 400 and "cache_interval" in {e["field"] for e in zoom.get_json()["errors"]}
    branch = client.post("/api/jobs", json={"kind": "image", "prompt": "x", "model": "t2i", "cache_interval": 2,
                                            "cache_branch": 4})
    assert branch.status_code == 400 and {e["field"] for e in branch.get_json()["errors"]} == {"cache_branch"}


def test_queue_runs_an_image_job_cached(tmp_path, monkeypatch, tiny_t2i, tiny_inpaint, redis_server):
    """Through the queue: a real worker process renders the job with caching, as this process does."""
    import io

    from support.cluster import Worker
    from zoomq.producer import Producer

    server = redis_server(tmp_path / "redis")
    monkeypatch.setenv("ZOOMQ_REDIS_URL", server.url)
    worker = Worker("w1", server.url, [tiny_t2i, tiny_inpaint], tmp_path)
    try:
        producer = Producer()
        job = producer.submit_image("a castle", model="t2i", steps=4, seed=3, negative_prompt="fog", cache_interval=2)
        record = producer.wait(job, timeout=180)
        assert record["state"] == "done", record.get("error")
        data = producer.result(job)
        picture = Image.open(io.BytesIO(data))
        assert isinstance(picture, PngImagePlugin.PngImageFile)
        recipe = json.loads(picture.text["zoomq"])
        assert recipe["cache_interval"] == 2
        queued = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), np.float64) / 255
        local = Renderer(tiny_t2i).render(RenderRequest("a castle", steps=4, seed=3, negative_prompt="fog",
                                                        cache_interval=2)).pixels
        assert psnr(queued, local) >= PARITY_DB
    finally:
        worker.stop()
        server.stop()
