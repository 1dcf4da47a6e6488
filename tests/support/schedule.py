"""The order test files start in (a pytest plugin, see conftest.py): the longest first.

``make test`` runs files on pytest-xdist workers, each file whole on one worker. The run ends when
the last file does, so a nine-minute file started last keeps the run going nine minutes after the
other worker has run out of work (xdist's own default order puts files with many tests first,
which put the one-test benchmark files last). Starting files longest first (the classic longest
processing time rule) leaves only short files for the end. The durations below are a hint for the
order, not a limit: measured by ``make test`` on 2 cores; a file not listed starts after these, in
its usual order. Refresh the list when a file's time changes by minutes (``--durations=0``).
"""

from __future__ import annotations

from pathlib import Path

SECONDS = {  # a test file's time on 2 cores (Zen 4), two files at once, models built by the first user
    "test_queue.py": 330,
    "test_guidance_split.py": 270,
    "test_bench_render.py": 180,
    "test_full_size.py": 170,
    "test_up.py": 150,
    "test_zoom.py": 100,
    "test_deepcache.py": 100,
    "test_prepare.py": 80,
    "test_network_hosts.py": 80,
    "test_bench_split.py": 80,
    "test_parity.py": 60,
    "test_latent_factor.py": 60,
    "test_web_browser.py": 50,
    "test_bench_queue.py": 50,
    "test_fair_scheduling.py": 50,
    "test_tiny_autoencoder.py": 50,
    "test_bench_workers.py": 50,
    "test_render.py": 50,
    "test_zoom_t2i.py": 40,
    "test_turbo.py": 30,
    "test_slots.py": 30,
    "test_fuzz_api.py": 30,
    "test_retention.py": 30,
    "test_soak.py": 30,
    "test_secured_redis.py": 30,
    "test_s3.py": 20,
    "test_visibility.py": 20,
    "test_artifact_streaming.py": 20,
    "test_webhooks.py": 20,
    "test_sentinel.py": 20,
    "test_deploy_files.py": 20,
    "test_bench_scaling.py": 20,
}


def pytest_collection_modifyitems(config, items):
    # sorted() is stable: a file's tests keep their order, and files of equal weight theirs.
    items[:] = sorted(items, key=lambda item: -SECONDS.get(Path(str(item.path)).name, 0))
