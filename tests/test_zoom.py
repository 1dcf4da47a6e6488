"""Zoom videos end to end on the miniature inpainting model: the file a player gets, the schedule,
seeds, direction, bad input and flat memory; the keyframe-level behaviour on both kinds of model
(a text-to-image one outpaints by latent blending; test_zoom_t2i.py has its parity and more)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from PIL import GifImagePlugin, Image

from support.cli import peak_rss_of_zoomq, run_cli
from support.images import psnr
from zoomq.errors import RenderCancelled
from zoomq.render import png
from zoomq.render.pipeline import Renderer
from zoomq.zoom import video
from zoomq.zoom.compose import render_zoom
from zoomq.zoom.settings import PromptChange, ZoomSettings, validate

SMALL: dict[str, Any] = dict(size=128, mask_width=32, interpolation_frames=6, steps=3, fps=24)


@pytest.fixture(scope="module")
def renderer(tiny_inpaint):
    return Renderer(tiny_inpaint)


@pytest.fixture(scope="module", params=["tiny_inpaint", "tiny_t2i"])
def any_renderer(request):
    """Each kind of model a zoom runs on: inpainting (recommended) and text-to-image."""
    return Renderer(request.getfixturevalue(request.param))


@pytest.fixture(scope="module")
def zoom_out(renderer, tmp_path_factory):
    out = tmp_path_factory.mktemp("zoom") / "out.mp4"
    schedule = (PromptChange(2, "a city", "fog"),)
    settings = ZoomSettings("a forest", negative_prompt="people", keyframes=4, seed=5, schedule=schedule,
                            gif=True, **SMALL)
    return render_zoom(renderer, settings, out), settings


def frames_of(path) -> list[np.ndarray]:
    return list(video.read_frames(path))


def luma(image) -> np.ndarray:
    """Brightness in [0, 1]. Videos are compared on it: yuv420p keeps a quarter of the colour
    resolution, which blurs the miniature model's colour noise far more than any real picture."""
    return np.asarray(image, np.float64) @ [0.299, 0.587, 0.114] / 255


def test_video_plays_everywhere(zoom_out):
    result, settings = zoom_out
    info = video.probe(result.video)
    assert info.frames == settings.total_frames == 3 * 6 + 1
    assert info.size == (128, 128) and info.fps == 24
    assert info.codec == "h264" and info.pix_fmt == "yuv420p"
    # the MP4 index is at the front (faststart), so browsers start playing before the download ends
    head = result.video.read_bytes()[:4096]
    assert head.find(b"moov") != -1 and head.find(b"moov") < max(head.find(b"mdat"), 4096)


def test_gif_loops_with_the_right_frame_duration(zoom_out):
    result, settings = zoom_out
    with Image.open(result.video.with_suffix(".gif")) as gif:
        assert isinstance(gif, GifImagePlugin.GifImageFile)
        assert gif.info.get("loop") == 0
        durations = []
        for i in range(gif.n_frames):
            gif.seek(i)
            durations.append(gif.info["duration"])
    assert len(durations) == settings.total_frames
    assert abs(sum(durations) / len(durations) - 1000 / settings.fps) < 3


def test_sidecar_and_keyframes_record_the_recipe(zoom_out, renderer):
    result, settings = zoom_out
    sidecar = json.loads(result.video.with_suffix(".json").read_text())
    assert sidecar == result.sidecar
    assert sidecar["settings"]["seed"] == 5 and sidecar["model"]["sha256"] == renderer.manifest.sha256
    assert sidecar["video"]["frames"] == settings.total_frames
    seeds = [kf["seed"] for kf in sidecar["keyframes"]]
    assert seeds == [settings.keyframe_seed(k) for k in range(4)] and len(set(seeds)) == 4
    # the schedule switches prompts at keyframe 2; the negative prompt switches with it
    prompts = [(kf["prompt"], kf["negative_prompt"]) for kf in sidecar["keyframes"]]
    assert prompts == [("a forest", "people")] * 2 + [("a city", "fog")] * 2
    for k, kf in enumerate(sidecar["keyframes"]):
        recipe = png.read_recipe(result.video.parent / kf["file"])
        assert recipe["keyframe"] == k and recipe["seed"] == seeds[k] and recipe["prompt"] == prompts[k][0]
    # the sidecar alone is enough to render the same keyframes again: it holds the settings as
    # rendered, the model's defaults filled in (guidance was left out)
    again = ZoomSettings.from_dict(sidecar["settings"])
    assert again == validate(settings, renderer.defaults) and again.guidance == 7.5


def test_same_seed_same_frames_and_other_seed_differs(zoom_out, renderer, tmp_path):
    result, settings = zoom_out
    again = render_zoom(renderer, settings, tmp_path / "again.mp4")
    for k in range(settings.keyframes):
        name = f"keyframe-{k:03d}.png"
        a = np.asarray(Image.open(result.keyframes_dir / name))
        b = np.asarray(Image.open(again.keyframes_dir / name))
        assert np.array_equal(a, b)
    assert all(np.array_equal(a, b) for a, b in zip(frames_of(result.video), frames_of(again.video), strict=True))
    other = render_zoom(renderer, ZoomSettings(**{**settings.to_dict(), "schedule": settings.schedule, "seed": 6}),
                        tmp_path / "other.mp4")
    first = np.asarray(Image.open(other.keyframes_dir / "keyframe-000.png"), np.float64) / 255
    assert psnr(first, np.asarray(Image.open(result.keyframes_dir / "keyframe-000.png"), np.float64) / 255) < 25


def test_zoom_in_is_zoom_out_reversed(zoom_out, renderer, tmp_path):
    from zoomq.zoom.segment import frames

    result, settings = zoom_out
    inward_settings = ZoomSettings(**{**settings.to_dict(), "schedule": settings.schedule, "direction": "in",
                                      "gif": False})
    # exactly, before encoding: every segment's frames backwards
    kfs = [Image.open(result.keyframes_dir / f"keyframe-{k:03d}.png").convert("RGB") for k in range(2)]
    forward = [np.asarray(f) for f in frames(kfs[0], kfs[1], settings, 0)]
    backward = [np.asarray(f) for f in frames(kfs[0], kfs[1], inward_settings, 0)]
    assert all(np.array_equal(a, b) for a, b in zip(forward, backward[::-1], strict=True))
    # and in the decoded videos, segments in reverse order too: each frame matches its reversed
    # partner up to H.264's rounding, and far better than its neighbours.
    inward = render_zoom(renderer, inward_settings, tmp_path / "in.mp4")
    out_frames, in_frames = frames_of(result.video), frames_of(inward.video)[::-1]
    assert len(in_frames) == len(out_frames)
    for i, (a, b) in enumerate(zip(out_frames, in_frames)):
        same = psnr(luma(a), luma(b))
        assert same > 30, i
        for n in (i - 1, i + 1):
            if 0 <= n < len(out_frames):
                assert same > psnr(luma(a), luma(in_frames[n])) + 6, i


def test_video_frames_follow_the_keyframes(zoom_out):
    """First frame = keyframe 0, last = the outermost keyframe, every keyframe starts its segment."""
    result, settings = zoom_out
    frames = frames_of(result.video)
    for k in range(settings.keyframes):
        kf = Image.open(result.keyframes_dir / f"keyframe-{k:03d}.png").convert("RGB")
        i = k * settings.interpolation_frames
        assert psnr(luma(frames[i]), luma(kf)) > 32, k
        if i + 1 < len(frames):
            assert psnr(luma(frames[i + 1]), luma(kf)) < 25, k  # the check can tell frames apart


def test_init_image_becomes_keyframe_zero(any_renderer, tmp_path):
    init = tmp_path / "init.png"
    Image.effect_noise((200, 160), 40).convert("RGB").save(init)
    result = render_zoom(any_renderer, ZoomSettings("x", keyframes=2, seed=1, init_image=str(init), **SMALL),
                         tmp_path / "z.mp4")
    kf0 = Image.open(result.keyframes_dir / "keyframe-000.png")
    assert kf0.size == (128, 128) and png.read_recipe(result.keyframes_dir / "keyframe-000.png")["mode"] == "init-image"


def test_cancel_stops_the_zoom(any_renderer, tmp_path):
    calls = []

    def progress(stage, done, total):
        calls.append(stage)
        return not stage.startswith("keyframe 2")

    with pytest.raises(RenderCancelled):
        render_zoom(any_renderer, ZoomSettings("x", keyframes=3, seed=1, **SMALL), tmp_path / "c.mp4", progress)
    assert not (tmp_path / "c.mp4").exists()
    assert not list(tmp_path.glob(".c.segments"))


@pytest.mark.parametrize(
    "args, option",
    [
        (["--mask-width", "64"], "--mask-width"),  # = W/2
        (["--mask-width", "4"], "--mask-width"),
        (["--keyframes", "0"], "--keyframes"),
        (["--size", "130"], "--size"),
        (["--size", "127"], "--size"),
        (["--interpolation-frames", "0"], "--interpolation-frames"),
        (["--prompt-schedule", "{notjson}"], "--prompt-schedule"),
        (["--prompt-schedule", "{wrongshape}"], "--prompt-schedule"),
        (["--prompt-schedule", "{pastend}"], "--prompt-schedule"),
        (["--prompt-schedule", "{missing}"], "--prompt-schedule"),
        (["--seam", "99"], "--seam"),
        (["--init-image", "{missing}"], "--init-image"),
    ],
)
def test_bad_zoom_input_is_one_line_and_exit_2(tiny_inpaint, tmp_path, capsys, args, option):
    files = {"notjson": tmp_path / "a.json", "wrongshape": tmp_path / "b.json", "pastend": tmp_path / "c.json",
             "missing": tmp_path / "nope.json"}
    files["notjson"].write_text("{not json")
    files["wrongshape"].write_text(json.dumps({"keyframe": 1, "prompt": "x"}))
    files["pastend"].write_text(json.dumps([{"keyframe": 9, "prompt": "x"}]))
    args = [a.format(**files) for a in args]
    code, _, err = run_cli("render", "zoom", "x", "--model", tiny_inpaint, "--size", "128", "--mask-width", "32",
                           *args, "--out", tmp_path / "z.mp4", capsys=capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"zoomq: error: {option}"), err
    assert not (tmp_path / "z.mp4").exists()


def test_text_to_image_model_zooms_with_a_note(tiny_t2i, tmp_path, capsys):
    """Once refused; now a text-to-image model outpaints by latent blending, and the CLI says the
    inpainting model stays the better choice."""
    code, _, err = run_cli("render", "zoom", "x", "--model", tiny_t2i, "--keyframes", "2", "--size", "128",
                           "--mask-width", "32", "--interpolation-frames", "2", "--steps", "2", "--seed", "1",
                           "--out", tmp_path / "z.mp4", capsys=capsys)
    assert code == 0, err
    assert "latent blending" in err and "inpainting model" in err
    assert video.probe(tmp_path / "z.mp4").frames == 3


def _peak_rss_of_zoom(model, out, keyframes: int) -> int:
    return peak_rss_of_zoomq("render", "zoom", "a tunnel", "--model", model, "--keyframes", keyframes,
                             "--steps", 2, "--seed", 3, "--size", 512, "--out", out)


@pytest.mark.slow
def test_memory_stays_flat_for_a_longer_video(tiny_inpaint, tmp_path):
    """2 keyframes (31 frames) against 20 keyframes (571 frames, 18x longer) at 512 px, notebook defaults."""
    short = _peak_rss_of_zoom(tiny_inpaint, tmp_path / "short.mp4", 2)
    long = _peak_rss_of_zoom(tiny_inpaint, tmp_path / "long.mp4", 20)
    assert video.probe(tmp_path / "long.mp4").frames == 19 * 30 + 1
    print(f"zoom peak RSS: 31 frames {short / 2**20:.0f} MiB, 571 frames {long / 2**20:.0f} MiB")
    assert long - short < 64 * 2**20


@pytest.mark.browser
def test_video_plays_in_a_real_browser(zoom_out):
    """Chromium loads the MP4, knows its size and length, and plays it forward."""
    from support.browser import ARTIFACTS, chromium, serve

    result, settings = zoom_out
    page_html = result.video.parent / "player.html"
    page_html.write_text(f'<video id="v" src="{result.video.name}" muted playsinline></video>')
    with serve(result.video.parent) as url, chromium() as browser:
        page = browser.new_page()
        page.goto(f"{url}/player.html")
        page.wait_for_function("document.getElementById('v').readyState >= 1", timeout=30000)
        meta = page.evaluate("(() => { const v = document.getElementById('v');"
                             " return [v.videoWidth, v.videoHeight, v.duration, v.error]; })()")
        assert meta[:2] == [128, 128] and meta[3] is None
        assert abs(meta[2] - settings.total_frames / settings.fps) < 0.1
        page.evaluate("document.getElementById('v').play()")
        page.wait_for_function("document.getElementById('v').currentTime > 0.3", timeout=30000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "zoom-video-in-chromium.png"))
