"""The artifact store contract, for every store: Redis (real, private), a directory, and S3 (moto's
real server on loopback; the S3-only tests are in test_s3.py)."""

from __future__ import annotations

import pytest

from support.cluster import RedisServer
from support.s3server import s3_store
from zoomq.errors import InvalidParameter
from zoomq.storage import DirectoryStore, RedisStore


@pytest.fixture(params=["redis", "directory", "s3"])
def store(request, tmp_path):
    if request.param == "directory":
        yield DirectoryStore(tmp_path / "artifacts")
        return
    if request.param == "s3":
        yield s3_store(request.getfixturevalue("s3_bucket"), "contract")
        return
    server = RedisServer(tmp_path / "redis")
    yield RedisStore(server.client(), ttl=60)
    server.stop()


def test_put_get_exists_and_files(store, tmp_path):
    job = "0f1e2d3c-0000-4000-8000-000000000000"
    assert store.get(f"{job}/a.png") is None and not store.exists(f"{job}/a.png")
    store.put(f"{job}/a.png", b"png bytes")
    assert store.get(f"{job}/a.png") == b"png bytes" and store.exists(f"{job}/a.png")
    (tmp_path / "in.bin").write_bytes(b"x" * 100_000)
    store.put_file(f"{job}/seg.mp4", tmp_path / "in.bin")
    assert store.get_file(f"{job}/seg.mp4", tmp_path / "out" / "seg.mp4")
    assert (tmp_path / "out" / "seg.mp4").read_bytes() == b"x" * 100_000
    assert not store.get_file(f"{job}/missing", tmp_path / "nothing")
    store.delete_job(job)
    assert not store.exists(f"{job}/a.png") and not store.exists(f"{job}/seg.mp4")


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../../b", "a//b", "", "a b"])
def test_keys_cannot_leave_the_store(store, key):
    with pytest.raises(InvalidParameter):
        store.put(key, b"x")


def test_redis_artifacts_expire(tmp_path, redis_server):
    server = redis_server(tmp_path / "redis")
    try:
        store = RedisStore(server.client(), ttl=60)
        store.put("job/a", b"1")
        assert 0 < server.client().ttl("zoomq:artifact:job/a") <= 60
    finally:
        server.stop()


def test_open_streams_the_artifact_in_chunks_and_ranges(store):
    from zoomq.storage.base import CHUNK

    job = "0f1e2d3c-0000-4000-8000-000000000001"
    data = bytes(range(251)) * (3 * CHUNK // 251 + 7)  # three chunks and a bit; 251: no chunk repeats another
    assert store.open(f"{job}/v.mp4") is None
    store.put(f"{job}/v.mp4", data)
    artifact = store.open(f"{job}/v.mp4")
    assert artifact is not None and artifact.size == len(data)
    chunks = list(artifact.chunks())
    assert b"".join(chunks) == data and max(map(len, chunks)) <= CHUNK and len(chunks) >= 4
    for start, stop in ((0, 1), (5, 100), (CHUNK - 3, CHUNK + 3), (len(data) - 10, len(data)), (7, 7)):
        assert b"".join(artifact.chunks(start, stop)) == data[start:stop], (start, stop)
    assert b"".join(artifact.chunks(len(data) - 4, len(data) + 100)) == data[-4:]
    store.put(f"{job}/empty", b"")
    empty = store.open(f"{job}/empty")
    assert empty is not None and empty.size == 0 and b"".join(empty.chunks()) == b""
    store.delete_job(job)
