"""The suite's set-up: f32 inference, a private compile cache per process, and the plugins in
``support/`` that give the fixtures. Helpers are imported from ``support.<module>``, never from here.

Nothing is mocked: the models are real (random-weight) SD2 pipelines, converted by the same code
users run, rendered by OpenVINO and compared with diffusers.
"""

from __future__ import annotations

import os
from pathlib import Path

# Two test files run at once, each process with as many threads as cores. PyTorch's OpenMP threads
# busy-wait after each parallel region (libgomp's default), taking the core the other file's process
# needs: test_parity, test_render and test_latent_factor on 2 cores took 113-116 s so, 80 s waiting
# passively (as fast as one thread each, 79 s); the whole suite on a fresh clone, 1993 s then 1903 s.
# libgomp reads this when torch loads, which pyproject's warning filters make happen before this file
# in the controlling process (it runs no test under ``-n``); the pytest-xdist workers, and every
# worker or command a test starts, inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# models: the miniature models, built once per run (tiny_t2i, tiny_inpaint, ...); images: init_image
# and square_mask; cluster: server and cluster (a private redis-server and workers on it); s3server:
# moto_server and s3_bucket, a real S3-compatible server; webapp: make_client; prerequisites: the
# browser and root markers, skipped where their prerequisite is missing and counted at the end;
# schedule: the longest test files start first.
pytest_plugins = ["support.models", "support.images", "support.cluster", "support.s3server", "support.webapp",
                  "support.prerequisites", "support.schedule"]


def pytest_configure(config):
    # Parity is defined at f32 inference precision; tests that need another set it themselves.
    os.environ["ZOOMQ_INFERENCE_PRECISION"] = "f32"
    # One cache per pytest-xdist process: two never write the same compile blob or precision file.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    os.environ.setdefault("ZOOMQ_CACHE_DIR", str(Path(config.rootpath) / "build" / "test-cache" / worker))


def pytest_collection_modifyitems(config, items):
    """``soak`` tests (tens of minutes) run only where ``-m`` names them (``make soak``): deselected
    from every other run, ``make test`` included, and counted as deselected."""
    if "soak" in (config.option.markexpr or ""):
        return
    soak = [item for item in items if item.get_closest_marker("soak")]
    if soak:
        config.hook.pytest_deselected(items=soak)
        items[:] = [item for item in items if not item.get_closest_marker("soak")]
