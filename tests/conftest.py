"""Shared fixtures: miniature models built once per session, a private compile cache, f32 precision.

Nothing here is mocked: the models are real (random-weight) SD2 pipelines, converted by the same
code users run, rendered by OpenVINO and compared with diffusers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# cluster: server and cluster (a private redis-server and workers on it); s3server: moto_server and
# s3_bucket, a real S3-compatible server; webapp: make_client
pytest_plugins = ["cluster", "s3server", "webapp"]


def pytest_configure(config):
    # Parity is defined at f32 inference precision; tests that need another set it themselves.
    os.environ["ZOOMQ_INFERENCE_PRECISION"] = "f32"
    # One cache per pytest-xdist process: two never write the same compile blob or precision file.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ.setdefault("ZOOMQ_CACHE_DIR", str(Path(config.rootpath) / "build" / "test-cache" / worker))


def diffusers_pipelines(model: Path):
    """diffusers' text-to-image and image-to-image pipelines on the random weights a prepared
    miniature model keeps in ``diffusers/``: the references of the parity tests."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    ref = StableDiffusionPipeline.from_pretrained(model / "diffusers")
    ref.set_progress_bar_config(disable=True)
    i2i = StableDiffusionImg2ImgPipeline(**ref.components)
    i2i.set_progress_bar_config(disable=True)
    return ref, i2i


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two float images in [0, 1], in dB."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_t2i(models_dir) -> Path:
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "t2i", full=False).folder


@pytest.fixture(scope="session")
def tiny_inpaint(models_dir) -> Path:
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "inpaint", full=False, inpainting=True).folder


@pytest.fixture(scope="session")
def tiny_t2i_onnx(models_dir) -> Path:
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "t2i-onnx", full=False, route="onnx").folder


@pytest.fixture(scope="session")
def init_image():
    from PIL import Image

    rng = np.random.default_rng(1234)
    smooth = rng.random((16, 16, 3)) * 255
    return Image.fromarray(smooth.astype(np.uint8)).resize((256, 256), Image.BICUBIC)


@pytest.fixture(scope="session")
def square_mask():
    from PIL import Image

    mask = Image.new("L", (256, 256), 0)
    mask.paste(255, (64, 64, 192, 192))
    return mask


def peak_rss_of_zoomq(*args: str, timeout: float = 1800) -> int:
    """Run ``zoomq ARGS`` in a child process; returns its peak RSS in bytes (fails on non-zero exit)."""
    import subprocess
    import sys

    wrapper = (
        "import resource, subprocess, sys\n"
        "proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "sys.stderr.write(proc.stderr[-3000:])\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "sys.exit(proc.returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "zoomq", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip().splitlines()[-1])


def run_cli(*args: str, capsys=None) -> tuple[int, str, str]:
    """Run ``zoomq ARGS`` in this process; returns (exit code, stdout, stderr)."""
    from zoomq.cli.main import main

    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    out, err = capsys.readouterr() if capsys else ("", "")
    return code, out, err


def report_beside_another(tmp_path: Path) -> Path:
    """A ``docs/benchmarks.md`` holding another benchmark's section ("queue figures"), which a
    benchmark writing its own section must leave as it is."""
    out = tmp_path / "docs" / "benchmarks.md"
    out.parent.mkdir()
    out.write_text("# Benchmarks\n\n<!-- bench:queue -->\nqueue figures\n<!-- /bench:queue -->\n")
    return out


#: Miniature models whose VAE downsamples by 2, not SD2's 8, to show nothing assumes 8. At 128 px
#: native (64 latents), since the VAE's attention over all latent pixels grows with their square.
F2_SIZE = 128


@pytest.fixture(scope="session")
def tiny_t2i_f2(models_dir) -> Path:
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "t2i-f2", full=False, size=F2_SIZE, latent_factor=2).folder


@pytest.fixture(scope="session")
def tiny_inpaint_f2(models_dir) -> Path:
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "inpaint-f2", full=False, inpainting=True, size=F2_SIZE, latent_factor=2).folder


@pytest.fixture(scope="session")
def tiny_t2i_taesd(models_dir) -> Path:
    """``tiny_t2i``'s model (the same weights) carrying a random-weight TAESD decoder, whose
    diffusers folder it keeps in ``diffusers/tiny_autoencoder``."""
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "t2i-taesd", full=False, tiny_autoencoder="random").folder


@pytest.fixture(scope="session")
def tiny_turbo(models_dir) -> Path:
    """A miniature SD-Turbo kind: the miniature SD2 text-to-image model with SD-Turbo's scheduler."""
    from zoomq.model_prep.prepare import prepare_random

    return prepare_random(models_dir / "turbo", full=False, turbo=True).folder
