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

SECONDS = {  # a test file's time on 2 cores, two files at once
    "test_full_size.py": 430,
    "test_bench_render.py": 330,
    "test_up.py": 300,
    "test_network_hosts.py": 260,
    "test_queue.py": 250,
    "test_prepare.py": 250,
    "test_latent_factor.py": 150,
    "test_soak.py": 130,
    "test_deepcache.py": 130,
    "test_zoom.py": 130,
    "test_parity.py": 100,
    "test_tiny_autoencoder.py": 90,
    "test_sentinel.py": 70,
    "test_slots.py": 90,
    "test_bench_workers.py": 90,
    "test_bench_scaling.py": 90,
    "test_web_browser.py": 90,
    "test_bench_deepcache.py": 80,
    "test_bench_split.py": 80,
    "test_fuzz_api.py": 80,
    "test_guidance_split.py": 80,
    "test_bench_queue.py": 70,
    "test_render.py": 60,
    "test_visibility.py": 50,
}


def pytest_collection_modifyitems(config, items):
    # sorted() is stable: a file's tests keep their order, and files of equal weight theirs.
    items[:] = sorted(items, key=lambda item: -SECONDS.get(Path(str(item.path)).name, 0))
