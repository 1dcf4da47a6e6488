"""The web front end in real headless Chromium against a real stack: a private redis-server, one
worker process with the miniature inpainting model and a text-to-image one carrying the tiny
autoencoder, and `zoomq web` — submit a zoom through the form, watch it to the end and play the
video; watch an image's live preview form, then its result; cancel a running job from its page."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from types import SimpleNamespace

import pytest

from support.browser import ARTIFACTS, chromium
from support.cluster import Worker, wait_for
from zoomq.node.processes import WebProcess
from zoomq.zoom import video

JOB_PAGE = re.compile(r"/jobs/[0-9a-f-]{36}$")

pytestmark = pytest.mark.browser


@pytest.fixture
def stack(tmp_path, tiny_inpaint, tiny_t2i_taesd, redis_server):
    server = redis_server(tmp_path / "redis")
    worker = web = None
    try:
        worker = Worker("web1", server.url, [tiny_inpaint, tiny_t2i_taesd], tmp_path)
        web = WebProcess(server.url, tmp_path)
        yield SimpleNamespace(server=server, worker=worker, web=web)
    finally:
        for part in (web, worker, server):
            if part is not None:
                part.stop()


def api(stack, path: str) -> dict:
    with urllib.request.urlopen(stack.web.url + path, timeout=10) as response:
        return json.loads(response.read())


def submit(stack, job: dict) -> str:
    """POST ``job`` to the API; the new job's id."""
    request = urllib.request.Request(stack.web.url + "/api/jobs", data=json.dumps(job).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["id"]


def ended(record: dict) -> dict | None:
    return record if record["state"] in ("done", "failed", "cancelled") else None


def fill_zoom_form(page, prompt: str, **fields) -> None:
    form = page.locator("#zoom-form")
    form.locator("textarea[name=prompt]").fill(prompt)
    form.locator("select[name=model]").select_option("inpaint")
    for name, value in fields.items():
        form.locator(f"input[name={name}]").fill(str(value))


def test_submit_a_zoom_watch_it_and_play_the_video(stack, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 1300})
        script_errors = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.goto(stack.web.url + "/")
        # A few seconds of work, so the page polls it mid-way (it polls once a second).
        fill_zoom_form(page, "an endless spiral library", keyframes=3, size=256, mask_width=64,
                       interpolation_frames=12, steps=15, fps=12, seed=7)
        page.locator("#schedule input[name=schedule_keyframe]").first.fill("2")
        page.locator("#schedule input[name=schedule_prompt]").first.fill("a forest of books")
        page.screenshot(path=str(ARTIFACTS / "web-submit.png"), full_page=True)
        page.locator("#zoom-form button[type=submit]").click()
        page.wait_for_url(JOB_PAGE)
        job_id = page.url.rsplit("/", 1)[-1]

        seen = []  # the progress bar, as the page shows it, until the job ends
        deadline = time.monotonic() + 240
        while page.locator("#job").get_attribute("data-state") not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {page.locator('#state').inner_text()} after 240 s"
            seen.append(page.eval_on_selector("#progress", "e => e.value"))
            page.wait_for_timeout(250)
        assert page.locator("#state").inner_text() == "done", page.locator("#error").inner_text()
        assert page.eval_on_selector("#progress", "e => e.value") == 100
        assert page.locator("#percent").inner_text() == "100 %"
        assert seen == sorted(seen) and any(0 < v < 100 for v in seen), seen

        # Metadata loaded (duration known), then a frame decoded: the video plays in this browser.
        page.wait_for_function("() => { const v = document.querySelector('#result video');"
                               " return v && v.readyState >= 1 && v.duration > 0; }", timeout=30_000)
        page.wait_for_function("() => document.querySelector('#result video').readyState >= 2", timeout=30_000)
        record = api(stack, f"/api/jobs/{job_id}")
        duration = page.eval_on_selector("#result video", "v => v.duration")
        assert abs(duration - record["frames_total"] / 12) < 0.2
        page.wait_for_function("() => [...document.querySelectorAll('#keyframes img')]"
                               ".filter(i => i.complete && i.naturalWidth === 256).length === 3")
        links = {a.inner_text(): a.get_attribute("href") for a in page.locator("#downloads a").all()}
        assert set(links) == {"Download the video", "Sidecar (JSON)"}
        recipe = page.locator("#recipe").text_content()
        assert recipe is not None and '"a forest of books"' in recipe
        page.screenshot(path=str(ARTIFACTS / "web-zoom-done.png"), full_page=True)
        assert script_errors == []

    with urllib.request.urlopen(stack.web.url + links["Download the video"], timeout=10) as response:
        (tmp_path / "zoom.mp4").write_bytes(response.read())
    assert video.probe(tmp_path / "zoom.mp4").frames == record["frames_total"]
    sidecar = links["Sidecar (JSON)"]
    assert sidecar is not None
    keyframes = api(stack, sidecar)["keyframes"]
    assert [(k["index"], k["prompt"]) for k in keyframes] == [
        (0, "an endless spiral library"), (1, "an endless spiral library"), (2, "a forest of books")]


def test_the_page_shows_a_live_preview_then_the_result(stack, tiny_t2i_taesd):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 1300})
        script_errors = []
        page.on("pageerror", lambda error: script_errors.append(str(error)))
        page.goto(stack.web.url + "/?kind=image")
        form = page.locator("#image-form")
        form.locator("textarea[name=prompt]").fill("a lighthouse at dusk")
        form.locator("select[name=model]").select_option(tiny_t2i_taesd.name)
        # ≈ 0.2 s a step at 512 px on the miniature model: previews (every 3 steps) for some seconds.
        for name, value in {"steps": 30, "width": 512, "height": 512, "seed": 3}.items():
            form.locator(f"input[name={name}]").fill(str(value))
        form.locator("select[name=decoder]").select_option("tiny")
        form.locator("button[type=submit]").click()
        page.wait_for_url(JOB_PAGE)
        job_id = page.url.rsplit("/", 1)[-1]

        # A preview decoded by the tiny autoencoder (the model's size, not the latents' 64 px),
        # shown while the job still runs.
        page.wait_for_function("() => { const i = document.querySelector('#preview-image');"
                               " return !document.querySelector('#preview').hidden && i.complete"
                               " && i.naturalWidth === 512; }", timeout=120_000)
        assert page.locator("#job").get_attribute("data-state") == "running"
        caption = page.locator("#preview-caption").inner_text()
        found = re.fullmatch(r"Preview after step (\d+)", caption)
        assert found is not None, caption
        step = int(found.group(1))
        assert 0 < step < 30 and step % 3 == 0, caption
        page.screenshot(path=str(ARTIFACTS / "web-image-preview.png"), full_page=True)

        page.wait_for_selector("#job[data-state=done]", timeout=240_000)
        page.wait_for_function("() => { const i = document.querySelector('#result img');"
                               " return i && i.complete && i.naturalWidth === 512; }", timeout=30_000)
        assert page.locator("#preview").is_hidden()  # the result replaces the preview
        page.screenshot(path=str(ARTIFACTS / "web-image-done.png"), full_page=True)
        assert script_errors == []

    record = api(stack, f"/api/jobs/{job_id}")
    assert record["state"] == "done" and record["params"]["decoder"] == "tiny"


def test_cancel_a_running_job_from_its_page(stack):
    with chromium() as browser:
        page = browser.new_page()
        page.goto(stack.web.url + "/")
        # ≈ 10 s a keyframe on the miniature model at 512 px: long enough to be caught running.
        fill_zoom_form(page, "a slow zoom", keyframes=6, size=512, mask_width=128, steps=50,
                       interpolation_frames=4)
        page.locator("#zoom-form button[type=submit]").click()
        page.wait_for_url(JOB_PAGE)
        job_id = page.url.rsplit("/", 1)[-1]
        page.wait_for_selector("#job[data-state=running]", timeout=120_000)
        page.locator("#cancel").click()
        page.wait_for_url(JOB_PAGE)
        page.wait_for_selector("#job[data-state=cancelled]", timeout=10_000)
        assert page.locator("#state").inner_text() == "cancelled"
        assert page.locator("#cancel-form").is_hidden()
        page.screenshot(path=str(ARTIFACTS / "web-zoom-cancelled.png"), full_page=True)

    record = api(stack, f"/api/jobs/{job_id}")
    assert record["state"] == "cancelled" and record["result_url"] is None
    # The worker stops within a denoising step and takes nothing further of the job: it says it
    # stopped, then renders the next zoom from the same queue to the end, and the cancelled job is
    # as it was.
    wait_for(lambda: f"job {job_id} cancelled" in stack.worker.log_path.read_text(errors="replace"), 30,
             "the worker to stop the cancelled keyframe")
    follow = submit(stack, {"kind": "zoom", "prompt": "next", "model": "inpaint", "keyframes": 2, "size": 128,
                            "mask_width": 32, "interpolation_frames": 2, "steps": 2, "seed": 1})
    followed = wait_for(lambda: ended(api(stack, f"/api/jobs/{follow}")), 120, "the next zoom")
    assert followed is not None and followed["state"] == "done"
    later = api(stack, f"/api/jobs/{job_id}")
    assert later["keyframes_done"] == record["keyframes_done"] < 6
    assert api(stack, "/api/health")["queues"]["render.inpaint"] == 0
