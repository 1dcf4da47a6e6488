"""The miniature models (a pytest plugin, see conftest.py): real random-weight SD2 pipelines converted
by ``zoomq.model_prep.prepare.prepare_random``, the code users run.

Each is built once and shared by every pytest-xdist worker, by later runs and by other clones on
the machine (as pip shares its wheels): it lives in ``~/.cache/zoomq/test-models/<name>-<key>/<name>``
(``$XDG_CACHE_HOME`` or ``$TEST_MODELS_DIR`` move it), where the key hashes the sources that build
it, the libraries' versions and the options, so a change to how models are built builds them again.
A file lock makes the first worker that needs it build it and the others wait for it; a ``done``
file marks a finished build (anything without it is built again), and a build whose files no longer
match their manifest's hashes is built again. Folders no run has used for a week are removed. Tests
copy a model before they change it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: TEST_MODELS_DIR moves them (a CI cache; an empty folder makes a run build afresh).
MODELS = Path(os.environ.get("TEST_MODELS_DIR")
              or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "zoomq" / "test-models")
#: What a model's files depend on: the code that builds it and the libraries it runs.
SOURCES = ("src/zoomq/model_prep", "src/zoomq/model", "src/zoomq/__init__.py")
LIBRARIES = ("torch", "diffusers", "transformers", "openvino", "nncf", "onnx", "safetensors", "numpy")
UNUSED_FOR = 7 * 24 * 3600

#: Miniature models whose VAE downsamples by 2, not SD2's 8, to show nothing assumes 8. At 128 px
#: native (64 latents), since the VAE's attention over all latent pixels grows with their square.
F2_SIZE = 128


def _key(name: str, options: dict) -> str:
    digest = hashlib.sha256(json.dumps([name, options], sort_keys=True).encode())
    for source in SOURCES:
        path = ROOT / source
        for file in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes())
    for library in LIBRARIES:
        try:
            digest.update(f"{library}={metadata.version(library)}".encode())
        except metadata.PackageNotFoundError:
            pass
    return digest.hexdigest()[:12]


@contextmanager
def _locked(path: Path):
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_unused(name: str, keep: Path) -> None:
    """Other builds of ``name`` that no run has used for a week (their sources have changed since)."""
    for other in MODELS.glob(f"{name}-*"):
        done = other / "done"
        if other.is_dir() and other != keep and done.exists() and time.time() - done.stat().st_mtime > UNUSED_FOR:
            shutil.rmtree(other, ignore_errors=True)


def _intact(folder: Path) -> bool:
    """Whether a finished build's files are still those its manifest hashed (a test that changed a
    shared model in place, against the rule, would otherwise break every later run)."""
    from zoomq.errors import ModelError
    from zoomq.model import manifest as mf

    try:
        mf.read(folder).verify_files()
    except ModelError:
        return False
    return True


def shared_model(name: str, **options) -> Path:
    """The miniature model ``prepare_random(folder, full=False, **options)`` builds, in a folder named
    ``name`` (its model name), built by the first process that asks and reused by all others."""
    from zoomq.model_prep.prepare import prepare_random

    home = MODELS / f"{name}-{_key(name, options)}"
    home.mkdir(parents=True, exist_ok=True)
    folder, done = home / name, home / "done"
    with _locked(home / "lock"):
        if not done.exists() or not _intact(folder):
            shutil.rmtree(folder, ignore_errors=True)  # a build an earlier run did not finish
            prepare_random(folder, full=False, **options)
            done.touch()
            _remove_unused(name, home)
        done.touch()  # used now: kept for another week
    return folder


def diffusers_pipelines(model: Path):
    """diffusers' text-to-image and image-to-image pipelines on the random weights a prepared
    miniature model keeps in ``diffusers/``: the references of the parity tests."""
    # From their own modules: mypy reads diffusers' top-level names as its placeholder classes.
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img import StableDiffusionImg2ImgPipeline

    ref = StableDiffusionPipeline.from_pretrained(model / "diffusers")
    ref.set_progress_bar_config(disable=True)
    i2i = StableDiffusionImg2ImgPipeline(**ref.components)
    i2i.set_progress_bar_config(disable=True)
    return ref, i2i


@pytest.fixture(scope="session")
def tiny_t2i() -> Path:
    return shared_model("t2i")


@pytest.fixture(scope="session")
def tiny_inpaint() -> Path:
    return shared_model("inpaint", inpainting=True)


@pytest.fixture(scope="session")
def tiny_t2i_onnx() -> Path:
    return shared_model("t2i-onnx", route="onnx")


@pytest.fixture(scope="session")
def tiny_t2i_f2() -> Path:
    return shared_model("t2i-f2", size=F2_SIZE, latent_factor=2)


@pytest.fixture(scope="session")
def tiny_inpaint_f2() -> Path:
    return shared_model("inpaint-f2", inpainting=True, size=F2_SIZE, latent_factor=2)


@pytest.fixture(scope="session")
def tiny_t2i_taesd() -> Path:
    """``tiny_t2i``'s model (the same weights) carrying a random-weight TAESD decoder, whose
    diffusers folder it keeps in ``diffusers/tiny_autoencoder``."""
    return shared_model("t2i-taesd", tiny_autoencoder="random")


@pytest.fixture(scope="session")
def tiny_turbo() -> Path:
    """A miniature SD-Turbo kind: the miniature SD2 text-to-image model with SD-Turbo's scheduler."""
    return shared_model("turbo", turbo=True)


@pytest.fixture(scope="session")
def tiny_inpaint_int8_hybrid() -> Path:
    """``tiny_inpaint`` with an int8-hybrid UNet (calibrated and quantized: a minute to build), the
    benchmarks' build of it too."""
    return shared_model("inpaint-int8-hybrid", inpainting=True, weights="int8-hybrid")


#: The benchmarks' miniature models, by the folder name ``zoomq.model_prep.bench_models`` gives each,
#: and the shared model (name, ``prepare_random`` options) that is the same build.
BENCH_MODELS: dict[str, tuple[str, dict]] = {
    "tiny-t2i": ("t2i", {}),
    "tiny-inpaint": ("inpaint", {"inpainting": True}),
    "tiny-t2i-int8-hybrid": ("t2i-int8-hybrid", {"weights": "int8-hybrid"}),
    "tiny-inpaint-int8-hybrid": ("inpaint-int8-hybrid", {"inpainting": True, "weights": "int8-hybrid"}),
    "tiny-turbo-taesd": ("turbo-taesd", {"turbo": True, "tiny_autoencoder": "random"}),
}


@pytest.fixture
def bench_models():
    """``fill(folder, *names)``: a benchmark's models folder holding copies of the shared builds of
    the miniature models ``names`` (keys of ``BENCH_MODELS``; all by default). The benchmark then
    finds them prepared, as on its second run, instead of converting its own (a minute each)."""
    def fill(folder: Path, *names: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        for name in names or tuple(BENCH_MODELS):
            shared, options = BENCH_MODELS[name]
            shutil.rmtree(folder / name, ignore_errors=True)
            shutil.copytree(shared_model(shared, **options), folder / name)
        return folder
    return fill
