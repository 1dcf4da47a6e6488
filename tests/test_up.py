"""`zoomq up` and `make demo`: the one-machine stack on its embedded Redis, run as a user runs it —
a real `zoomq up` process, HTTP against its gunicorn, SIGTERM, SIGKILL, restarts."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from support.cli import run_cli
from support.cluster import wait_for
from zoomq.node.processes import port_is_free
from zoomq.queue.job_records import Jobs

REPO = Path(__file__).resolve().parents[1]
SLOW_ZOOM = {"kind": "zoom", "prompt": "a spiral", "model": "inpaint", "keyframes": 3, "size": 512,
             "mask_width": 128, "interpolation_frames": 4, "steps": 30, "seed": 8}  # ~6 s a keyframe


# -- zoomq up ---------------------------------------------------------------------------------

def web_port() -> int:
    """A free port below Linux's ephemeral range, so no client connection takes it before the
    web server binds it (as one can a port from bind(0))."""
    import random

    return next(p for p in iter(lambda: random.randrange(20000, 32000), None) if port_is_free("127.0.0.1", p))


class Up:
    """A `zoomq up` process; its output lines are collected as they come."""

    def __init__(self, data: Path, models: list[Path], port: int, *args: str, env: dict | None = None):
        environment = {k: v for k, v in os.environ.items() if k != "ZOOMQ_REDIS_URL"}
        environment.update({"ZOOMQ_DATA_DIR": str(data), "ZOOMQ_HEARTBEAT": "1", **(env or {})})
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zoomq", "up", "--port", str(port), "--models", *map(str, models), *args],
            env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        wait_for(lambda: self.said("up: open") or self.proc.poll() is not None, 300, "zoomq up to be ready")
        assert self.proc.poll() is None, self.output()

    def _read(self) -> None:
        assert self.proc.stdout is not None  # started with stdout=PIPE
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def output(self) -> str:
        return "\n".join(self.lines)

    def processes(self) -> list[psutil.Process]:
        """`zoomq up` and everything it started (in their own sessions, so by parentage)."""
        me = psutil.Process(self.proc.pid)
        return [me, *me.children(recursive=True)]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def job_of(up: Up, job_id: str) -> dict:
    return json.loads(http("GET", f"{up.url}/api/jobs/{job_id}")[1])


def wait_done(up: Up, job_id: str, timeout: float) -> dict:
    record = wait_for(lambda: (lambda r: r if r["state"] in ("done", "failed", "cancelled") else None)(
        job_of(up, job_id)), timeout, f"job {job_id} to end")
    assert record is not None  # wait_for returns only a record that ended
    assert record["state"] == "done", record.get("error")
    return record


def wait_running(up: Up, job_id: str, steps: int) -> dict:
    """Until a keyframe of the job is at least ``steps`` into its denoising."""
    def check():
        record = job_of(up, job_id)
        match = re.match(r"keyframe \d+/\d+ \((\d+)/", record.get("stage") or "")
        return record if match and int(match.group(1)) >= steps else None
    return wait_for(check, 180, "a keyframe to be under way")


def assert_all_gone(processes: list[psutil.Process]) -> None:
    def gone(p: psutil.Process) -> bool:
        try:
            return p.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    left = [p for p in processes if not gone(p)]
    assert not left, [(p.pid, p.cmdline()) for p in left]


@pytest.fixture
def models(tiny_t2i, tiny_inpaint) -> list[Path]:
    return [tiny_t2i, tiny_inpaint]


def test_up_serves_stops_cleanly_and_resumes_after_a_restart(tmp_path, models):
    """Also: its Redis is locked with a password kept in a 0600 file, which no command line, log or
    output shows, which this user's other commands find, and which a restart reuses; a public address
    without keys is served only with --allow-anonymous, and says so."""
    data = tmp_path / "data"
    up = Up(data, models, web_port(), "--grace", "1")
    try:
        assert up.said("redis    ready  redis://127.0.0.1:") and up.said("(embedded; data with AOF in")
        secret_file = data / "redis" / "password"
        secret = secret_file.read_text().strip()
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        with socket.create_connection(("127.0.0.1", int((data / "redis" / "port").read_text())), timeout=10) as s:
            s.sendall(b"PING\r\n")
            assert s.recv(100).startswith(b"-NOAUTH")
        cores = len(os.sched_getaffinity(0))
        expected = "1 process x 2 threads" if cores == 2 else ""  # auto on this project's 2-core machines
        assert up.said("workers  ready") and up.said(f"{expected} ({cores} cores, ")
        assert up.said(f"web      ready  {up.url}/ (gunicorn")
        status, body = http("GET", f"{up.url}/api/health")
        health = json.loads(body)
        assert status == 200 and health["ok"] and health["models"] == ["inpaint", "t2i"]

        status, body = http("POST", f"{up.url}/api/jobs",
                            {"kind": "image", "prompt": "a castle", "model": "t2i", "steps": 4, "seed": 3})
        assert status == 202
        image = json.loads(body)["id"]
        wait_done(up, image, 120)
        status, png = http("GET", f"{up.url}/api/jobs/{image}/result")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
        # Another shell of this user, with no ZOOMQ_REDIS_URL: `zoomq status` finds the stack's Redis and password.
        shell = {**{k: v for k, v in os.environ.items() if k != "ZOOMQ_REDIS_URL"}, "ZOOMQ_DATA_DIR": str(data)}
        done = subprocess.run([sys.executable, "-m", "zoomq", "status", image], env=shell, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "done" in done.stdout and secret not in done.stdout + done.stderr, done.stderr

        status, metrics = http("GET", f"{up.url}/metrics")
        assert status == 200
        assert re.search(rb'^zoomq_jobs_ended_total\{kind="image",state="done"\} 1\.0$', metrics, re.M), metrics
        assert re.search(rb'^zoomq_workers\{model="t2i"\} 1\.0$', metrics, re.M), metrics

        status, body = http("POST", f"{up.url}/api/jobs", SLOW_ZOOM)
        zoom = json.loads(body)["id"]
        wait_running(up, zoom, 3)
        started = up.processes()
        assert len(started) >= 6  # up, redis, worker and its pool process, gunicorn and its workers
        assert not [p.cmdline() for p in started if secret in " ".join(p.cmdline())]
        assert up.stop() == 0
        assert up.said("stopping: running pieces get up to 1 s to finish") and up.said("stopped")
        assert_all_gone(started)
        assert not (data / "stack.json").exists()
        assert secret not in up.output()
        for log in [*(data / "logs").iterdir(), data / "redis" / "redis.log"]:
            assert secret not in log.read_text(errors="replace"), log
    finally:
        if up.proc.poll() is None:
            up.stop(signal.SIGKILL)

    again = Up(data, models, up.port, "--host", "0.0.0.0", "--allow-anonymous")
    try:
        assert again.said("serving --host 0.0.0.0 with no API key")
        assert secret_file.read_text().strip() == secret
        assert not [p.cmdline() for p in again.processes() if secret in " ".join(p.cmdline())]
        assert again.said("resuming 1 job(s) left queued or running")
        record = wait_done(again, zoom, 300)
        assert record["keyframes_done"] == 3
        status, video = http("GET", f"{again.url}/api/jobs/{zoom}/result")
        assert status == 200 and video[4:8] == b"ftyp"
        assert job_of(again, image)["state"] == "done"  # the first run's records are still there
    finally:
        again.stop()


def test_up_killed_outright_resumes_its_jobs_at_once(tmp_path, models):
    """Power loss: every process of the stack SIGKILLed mid-keyframe. The next `zoomq up` releases
    the dead workers' leases and requeues their unacknowledged tasks at once, rather than after
    the stale time (120 s here) or the visibility timeout (hours)."""
    data = tmp_path / "data"
    up = Up(data, models, web_port(), env={"ZOOMQ_STALE_AFTER": "120"})
    status, body = http("POST", f"{up.url}/api/jobs", SLOW_ZOOM)
    zoom = json.loads(body)["id"]
    wait_running(up, zoom, 3)
    everything = up.processes()
    for p in everything:
        p.kill()
    up.proc.wait(timeout=10)
    psutil.wait_procs(everything, timeout=10)
    assert_all_gone(everything)

    again = Up(data, models, web_port(), env={"ZOOMQ_STALE_AFTER": "120"})
    try:
        resumed = time.monotonic()
        assert again.said("resuming 1 job(s) left queued or running (1 task(s) requeued, 1 piece(s) released)")
        before = job_of(again, zoom)["work_done"]
        # Steps go on well before the stale time: released at once, not found stale. Measured by
        # progress, not by the whole rest of the job, which other tests' load can stretch.
        wait_for(lambda: job_of(again, zoom)["work_done"] > before, 100, "the killed job's steps to go on")
        print(f"killed job stepping again {time.monotonic() - resumed:.0f} s after the restart")
        wait_done(again, zoom, 300)
    finally:
        again.stop()


def test_up_starts_a_part_again_when_it_dies(tmp_path, models):
    up = Up(tmp_path / "data", models[:1], web_port())
    try:
        worker = next(p for p in psutil.Process(up.proc.pid).children() if "worker" in p.cmdline())
        worker.kill()
        wait_for(lambda: up.said("worker exited (code -9); starting it again"), 30, "up to notice")
        wait_for(lambda: up.said("workers  ready") and up.output().count("workers  ready") == 2, 120,
                 "the worker to be started again")
        status, body = http("POST", f"{up.url}/api/jobs", {"kind": "image", "prompt": "x", "model": "t2i", "steps": 2})
        wait_done(up, json.loads(body)["id"], 120)
    finally:
        up.stop()


def test_up_without_models_says_how_to_make_them(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ZOOMQ_MODELS", raising=False)
    monkeypatch.setenv("ZOOMQ_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("ZOOMQ_DATA_DIR", str(tmp_path / "data"))
    code, _, err = run_cli("up", capsys=capsys)
    assert code == 2
    assert f"zoomq prepare --tiny --out {tmp_path}/models/tiny-sd2" in err
    assert f"zoomq prepare --model stabilityai/stable-diffusion-2-1-base --out {tmp_path}/models/sd21-base" in err
    assert not (tmp_path / "data").exists()  # nothing was started


def test_up_finds_the_models_in_the_default_folder(tmp_path, monkeypatch, models):
    from zoomq.config import settings
    from zoomq.queue.registry import find_models

    folder = tmp_path / "models"
    folder.mkdir()
    for model in models:
        (folder / model.name).symlink_to(model)
    (folder / "not-a-model").mkdir()
    monkeypatch.delenv("ZOOMQ_MODELS", raising=False)
    monkeypatch.setenv("ZOOMQ_MODELS_DIR", str(folder))
    assert [m.name for m in find_models(settings(), None)] == ["inpaint", "t2i"]
    monkeypatch.setenv("ZOOMQ_MODELS", str(models[0]))
    assert find_models(settings(), None) == [models[0]]


def test_one_stack_per_data_folder(tmp_path, monkeypatch, models, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "stack.json").write_text(json.dumps({"pid": 4242, "web_url": "http://127.0.0.1:9"}))
    with open(data / "up.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        monkeypatch.setenv("ZOOMQ_DATA_DIR", str(data))
        monkeypatch.delenv("ZOOMQ_REDIS_URL", raising=False)
        code, _, err = run_cli("up", "--models", *map(str, models), "--port", str(web_port()), capsys=capsys)
    assert code == 1
    assert f"another zoomq up is running with the data folder {data} (pid 4242, web at http://127.0.0.1:9)" in err
    assert not (data / "redis").exists()


# -- make demo --------------------------------------------------------------------------------

def fresh_clone(target: Path) -> Path:
    """What a clone of this working tree holds: its tracked and untracked-but-not-ignored files
    (so no models/, out/ or venv), with their times kept."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


@pytest.mark.slow
def test_make_demo_on_a_fresh_clone_goes_through_the_queue(tmp_path, redis_server, tiny_t2i, tiny_inpaint):
    """`make demo` (with this suite's environment standing in for its set-up step) prepares the
    miniature models, runs an image and a zoom job through the stack's queue on the Redis that
    ZOOMQ_REDIS_URL names, writes both results, and leaves no process behind. Its models folder holds
    the suite's builds of the same two models (prepare_random's, as `zoomq prepare --tiny`'s; building
    is tested in test_prepare), so `make demo` finds them prepared instead of building them again."""
    if shutil.which("make") is None:
        pytest.fail("make is not installed")
    clone = fresh_clone(tmp_path / "clone")
    shutil.copytree(tiny_t2i, clone / "models" / "tiny-sd2")
    shutil.copytree(tiny_inpaint, clone / "models" / "tiny-sd2-inpainting")
    server = redis_server(tmp_path / "redis")
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "ZOOMQ_REDIS_URL": server.url, "ZOOMQ_DATA_DIR": str(tmp_path / "data")}
    before = {p.pid for p in psutil.process_iter()}
    try:
        # -o: never reinstall into the suite's own environment from the clone.
        done = subprocess.run(["make", "demo", f"VENV={venv}", "-o", f"{venv}/.installed"], cwd=clone, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"redis    ready  {server.url} (ZOOMQ_REDIS_URL)" in done.stdout
        assert "to keep the stack running: zoomq up --models models/tiny-sd2 models/tiny-sd2-inpainting" in done.stdout
        assert (clone / "out/demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (clone / "out/demo-zoom.mp4").read_bytes()[4:8] == b"ftyp"
        assert json.loads((clone / "out/demo-zoom.json").read_text())["video"]["frames"] == 91
        records = Jobs(server.client(), 3600).recent()
        assert sorted((r["kind"], r["model"], r["state"]) for r in records) == [
            ("image", "tiny-sd2", "done"), ("zoom", "tiny-sd2-inpainting", "done")]
        assert not (tmp_path / "data" / "redis").exists()  # no embedded Redis was started
        left = [p for p in psutil.process_iter(["pid", "cmdline"])
                if p.pid not in before and str(clone) in " ".join(p.info["cmdline"] or [])]
        assert not left, [p.info for p in left]
    finally:
        server.stop()
