"""Artifacts are streamed from every store: a 200 MB video served to 8 parallel Range requests by a
real gunicorn leaves the web process's memory flat, and every range, suffix and refusal is exact."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests

from support.s3server import s3_store
from zoomq.node.processes import WebProcess
from zoomq.queue.job_records import Jobs, new_id
from zoomq.storage import RedisStore

SIZE = 200 * 2**20
#: A prime-length random block repeated: quick to make, and a range read from the wrong offset differs.
BLOCK = 1_000_003


@pytest.fixture(scope="module")
def video() -> bytes:
    import numpy as np

    block = np.random.default_rng(24).bytes(BLOCK)
    return (block * (SIZE // BLOCK + 1))[:SIZE]


def _put(kind: str, video: bytes, job_id: str, tmp_path: Path, server, request) -> dict[str, str]:
    """The video stored as job ``job_id``'s result in store ``kind``; the web process's environment."""
    key = f"{job_id}/result.mp4"
    if kind == "directory":
        path = tmp_path / "artifacts" / key
        path.parent.mkdir(parents=True)
        path.write_bytes(video)
        return {"ZOOMQ_ARTIFACTS": str(tmp_path / "artifacts")}
    if kind == "redis":
        RedisStore(server.client(), ttl=600).put(key, video)
        return {"ZOOMQ_ARTIFACTS": "redis"}
    bucket = request.getfixturevalue("s3_bucket")
    (tmp_path / "video.mp4").write_bytes(video)
    s3_store(bucket).put_file(key, tmp_path / "video.mp4")
    return {"ZOOMQ_ARTIFACTS": f"s3://{bucket.name}", **bucket.env}


def _tree_rss(pid: int) -> int:
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def _get(url: str, range_: str | None = None, **headers) -> requests.Response:
    return requests.get(url, headers={**({"Range": range_} if range_ else {}), **headers}, timeout=120)


@pytest.mark.parametrize("kind", ["directory", "redis", "s3"])
def test_a_200_mb_video_streams_to_parallel_ranges_in_flat_memory(kind, video, server, tmp_path, request):
    job_id = new_id()
    env = _put(kind, video, job_id, tmp_path, server, request)
    jobs = Jobs(server.client(), 600)
    jobs.create(job_id, "zoom", "inpaint", {}, 1)
    jobs.finish(job_id, result=f"{job_id}/result.mp4", result_type="video/mp4")
    web = WebProcess(server.url, tmp_path, gunicorn=True, workers=2, env=env)
    try:
        url = f"{web.url}/api/jobs/{job_id}/result"
        with ThreadPoolExecutor(8) as pool:  # every worker thread has served once: imports and pools made
            assert all(r.status_code == 206 for r in pool.map(lambda _: _get(url, "bytes=0-9"), range(16)))
        before = _tree_rss(web.proc.pid)
        peak, done = [before], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(_tree_rss(web.proc.pid))
                time.sleep(0.02)

        part = SIZE // 8

        def fetch(i: int) -> bool:
            start, stop = i * part, SIZE if i == 7 else (i + 1) * part
            with requests.get(url, headers={"Range": f"bytes={start}-{stop - 1}"}, stream=True, timeout=300) as r:
                assert r.status_code == 206 and r.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
                at = start
                for chunk in r.iter_content(2**20):
                    if chunk != video[at:at + len(chunk)]:
                        return False
                    at += len(chunk)
                return at == stop

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            with ThreadPoolExecutor(8) as pool:
                assert all(pool.map(fetch, range(8)))
        finally:
            done.set()
            sampler.join()
        growth = max(peak) - before
        print(f"{kind}: the web process grew by {growth / 2**20:.1f} MiB over {len(peak)} samples")
        assert growth < 100 * 2**20, f"the web process grew by {growth / 2**20:.0f} MiB serving 8 ranges"

        # Exact bytes: the start, the middle, the end, a suffix; past the end is refused (416).
        for range_, start, stop in (("bytes=0-99", 0, 100), (f"bytes={SIZE // 2}-{SIZE // 2 + 4095}", SIZE // 2,
                                    SIZE // 2 + 4096), (f"bytes={SIZE - 100}-", SIZE - 100, SIZE),
                                    ("bytes=-1000", SIZE - 1000, SIZE),
                                    (f"bytes={SIZE - 10}-{SIZE + 50}", SIZE - 10, SIZE)):
            r = _get(url, range_)
            assert r.status_code == 206, range_
            assert r.content == video[start:stop], range_
            assert r.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}", range_
            assert r.headers["Content-Length"] == str(stop - start), range_
        refused = _get(url, f"bytes={SIZE}-")
        assert refused.status_code == 416 and refused.headers["Content-Range"] == f"bytes */{SIZE}"

        # The whole video: its length, the private caching and the validators kept; a revalidation is 304.
        with requests.get(url, stream=True, timeout=300) as whole:
            assert whole.status_code == 200 and whole.headers["Content-Length"] == str(SIZE)
            assert whole.headers["Accept-Ranges"] == "bytes" and whole.headers["Content-Type"] == "video/mp4"
            cache = whole.headers["Cache-Control"]
            assert "private" in cache and "public" not in cache and "max-age=3600" in cache
            assert whole.headers["X-Content-Type-Options"] == "nosniff"
            etag = whole.headers["ETag"]
            assert (kind == "redis") == ("Last-Modified" not in whole.headers)  # Redis keeps no date
            assert sum(len(c) for c in whole.iter_content(8 * 2**20)) == SIZE
        assert _get(url, **{"If-None-Match": etag}).status_code == 304
        head = requests.head(url, timeout=60)
        assert head.status_code == 200 and head.headers["Content-Length"] == str(SIZE) and head.content == b""
        download = _get(url.replace("/result", "/result?download=1"), "bytes=0-0")
        assert download.headers["Content-Disposition"] == f"attachment; filename=zoomq-{job_id}.mp4"
    finally:
        web.stop()
