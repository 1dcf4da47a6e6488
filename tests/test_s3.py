"""The S3 artifact store against a real S3-compatible server (moto's, on loopback): settings,
prefixes, streaming, errors a person can act on, and a whole zoom through the queue with it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest

from support.cluster import Worker
from support.s3server import MotoServer, aws_env, raw_client, s3_store, use_aws_env
from zoomq.config import settings
from zoomq.errors import InvalidParameter, ZoomqError
from zoomq.node.processes import free_port

SMALL_ZOOM: dict[str, Any] = dict(size=128, mask_width=32, interpolation_frames=6, steps=3, seed=21)


# -- ZOOMQ_ARTIFACTS ------------------------------------------------------------------------

@pytest.mark.parametrize("value, normalized", [
    ("s3://videos", "s3://videos"),
    ("s3://videos/", "s3://videos"),
    ("s3://my.videos-1/zoomq/prod/", "s3://my.videos-1/zoomq/prod"),
    (" s3://abc/p_1.x ", "s3://abc/p_1.x"),
])
def test_s3_locations_are_accepted(monkeypatch, value, normalized):
    monkeypatch.setenv("ZOOMQ_ARTIFACTS", value)
    assert settings().artifacts == normalized


@pytest.mark.parametrize("value, says", [
    ("s3://", "must name a bucket"),
    ("s3:///x", "must name a bucket"),
    ("s3://Videos", "bucket name 'Videos' is not valid"),
    ("s3://ab", "bucket name 'ab' is not valid"),
    ("s3://-videos", "bucket name '-videos' is not valid"),
    ("s3://my..videos", "bucket name 'my..videos' is not valid"),
    ("s3://under_score", "bucket name 'under_score' is not valid"),
    ("s3://192.168.1.10", "bucket name '192.168.1.10' is not valid"),
    ("s3://videos//x", "prefix '/x' is not valid"),
    ("s3://videos/a/../b", "prefix 'a/../b' is not valid"),
    ("s3://videos/a b", "prefix 'a b' is not valid"),
    ("s3:/videos", "must be `redis`, an absolute directory path or s3://BUCKET[/PREFIX]"),
])
def test_malformed_s3_locations_are_refused(monkeypatch, value, says):
    monkeypatch.setenv("ZOOMQ_ARTIFACTS", value)
    with pytest.raises(InvalidParameter) as e:
        settings()
    assert e.value.param == "ZOOMQ_ARTIFACTS"
    assert str(e.value).startswith(f"ZOOMQ_ARTIFACTS: {says}") and repr(value) in str(e.value)


def test_boto3_loads_only_where_s3_is_configured():
    code = ("import sys, zoomq.storage, zoomq.producer, zoomq.worker.tasks, zoomq.web.app; "
            "print(sorted(m for m in ('boto3', 'botocore') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_open_store_makes_no_connection_until_used(monkeypatch, tmp_path):
    from zoomq.storage import open_store
    from zoomq.storage.s3 import S3Store

    use_aws_env(monkeypatch, aws_env(f"http://127.0.0.1:{free_port()}", tmp_path))  # nothing listens
    monkeypatch.setenv("ZOOMQ_ARTIFACTS", "s3://videos/cluster-a/")
    store = open_store(settings(), None)  # type: ignore[arg-type]  # an S3 store takes no Redis client
    assert isinstance(store, S3Store) and (store.bucket, store.prefix) == ("videos", "cluster-a/")
    assert store._client is None  # made on first use, in the process that uses it (after a fork)


# -- the store on a real S3-compatible server -----------------------------------------------

def test_objects_sit_under_the_prefix_and_prefixes_are_isolated(s3_bucket, tmp_path):
    team_a, team_b = s3_store(s3_bucket, "zoomq/a"), s3_store(s3_bucket, "zoomq/a2")
    team_a.put("job/a.png", b"from a")
    team_a.put_file("job/seg.mp4", _file(tmp_path / "seg", b"seg"))
    assert s3_bucket.keys() == ["zoomq/a/job/a.png", "zoomq/a/job/seg.mp4"]
    assert team_b.get("job/a.png") is None and not team_b.exists("job/a.png")
    assert not team_b.get_file("job/seg.mp4", tmp_path / "b-seg")
    team_b.put("job/a.png", b"from b")
    team_b.delete_job("job")
    assert team_a.get("job/a.png") == b"from a" and team_a.exists("job/seg.mp4")
    assert s3_bucket.keys() == ["zoomq/a/job/a.png", "zoomq/a/job/seg.mp4"]


def test_delete_job_spares_jobs_whose_ids_share_its_start(s3_bucket):
    store = s3_store(s3_bucket)
    for key in ("job1/a", "job1/deep/b", "job10/a", "job1-x/a", "job1.x"):
        store.put(key, key.encode())
    store.delete_job("job1")
    assert s3_bucket.keys() == ["job1-x/a", "job1.x", "job10/a"]
    assert store.get("job10/a") == b"job10/a"


def test_delete_job_pages_through_more_than_a_thousand_objects(s3_bucket):
    store = s3_store(s3_bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(f"big/f{i:04d}", b"."), range(1005)))
    store.put("other/keep", b"k")
    assert len(s3_bucket.keys("big/")) == 1005
    store.delete_job("big")
    assert s3_bucket.keys() == ["other/keep"]


def test_one_client_per_process_shared_by_threads(s3_bucket):
    store = s3_store(s3_bucket)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.put(f"job/t{i}", str(i).encode()), range(32)))
        got = list(pool.map(lambda i: store.get(f"job/t{i}"), range(32)))
    assert got == [str(i).encode() for i in range(32)]
    parent = store.client
    assert store.client is parent
    pid = os.fork()
    if pid == 0:  # the child makes its own client on first use, and it works
        ok = store.get("job/t3") == b"3" and store.client is not parent and store._pid == os.getpid()
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.client is parent


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _peak_bytes(fn) -> int:
    """Peak Python allocation (every thread) while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_files_stream_in_parts(s3_bucket, tmp_path):
    store = s3_store(s3_bucket, "big")
    size = 40 * 2**20
    source = tmp_path / "video.mp4"
    with open(source, "wb") as f:
        for _ in range(size // 2**20):
            f.write(os.urandom(2**20))
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    store.exists("job/nothing")  # the client exists before memory is measured
    up = _peak_bytes(lambda: store.put_file("job/video.mp4", source))
    head = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="big/job/video.mp4")
    assert head["ContentLength"] == size and head["ETag"].strip('"').endswith("-5")  # 5 parts of 8 MiB
    target = tmp_path / "out" / "video.mp4"
    down = _peak_bytes(lambda: store.get_file("job/video.mp4", target))
    assert hashlib.sha256(target.read_bytes()).hexdigest() == digest
    assert os.listdir(target.parent) == ["video.mp4"]  # the temporary name is gone
    assert up < 16 * 2**20 and down < 16 * 2**20, (up, down)  # measured: about 7 and 5 MiB


# -- errors a person can act on -------------------------------------------------------------

def test_a_missing_bucket_is_named_and_not_created(s3_bucket, monkeypatch):
    from zoomq.storage import open_store

    monkeypatch.setenv("ZOOMQ_ARTIFACTS", "s3://no-such-videos/zoomq")
    store = open_store(settings(), None)  # type: ignore[arg-type]  # an S3 store takes no Redis client
    with pytest.raises(ZoomqError) as e:
        store.put("job/a", b"x")
    assert str(e.value) == (f"ZOOMQ_ARTIFACTS=s3://no-such-videos/zoomq: bucket 'no-such-videos' at {s3_bucket.url} "
                            "does not exist; create it (zoomq does not create buckets) or point ZOOMQ_ARTIFACTS "
                            "at one that exists")
    names = [b["Name"] for b in s3_bucket.client.list_buckets()["Buckets"]]
    assert "no-such-videos" not in names and s3_bucket.name in names


def test_an_unreachable_endpoint_is_named(monkeypatch, tmp_path):
    from zoomq.errors import ArtifactStoreUnreachable
    from zoomq.storage.s3 import S3Store

    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    use_aws_env(monkeypatch, aws_env(endpoint, tmp_path))
    started = time.monotonic()
    with pytest.raises(ArtifactStoreUnreachable) as e:
        S3Store("videos").exists("job/a")
    message = str(e.value)
    assert message.startswith(f"ZOOMQ_ARTIFACTS=s3://videos: cannot reach the S3 endpoint {endpoint} while "
                              "checking the bucket")
    assert message.endswith("check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and that the server is up")
    assert "\n" not in message and time.monotonic() - started < 15


def test_a_malformed_endpoint_is_named(monkeypatch, tmp_path):
    from zoomq.storage.s3 import S3Store

    use_aws_env(monkeypatch, aws_env("not-a-url", tmp_path))
    with pytest.raises(ZoomqError, match=r"^ZOOMQ_ARTIFACTS=s3://videos: the S3 endpoint 'not-a-url' is not usable"):
        S3Store("videos").get("job/a")


def test_missing_credentials_are_named(s3_bucket, monkeypatch):
    from zoomq.storage.s3 import S3Store

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ZoomqError) as e:
        S3Store(s3_bucket.name).put("job/a", b"x")
    assert str(e.value) == (f"ZOOMQ_ARTIFACTS=s3://{s3_bucket.name}: no usable AWS credentials (Unable to locate "
                            "credentials); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
    assert s3_bucket.keys() == []


def test_wrong_credentials_are_named(tmp_path, monkeypatch):
    """On a moto server that checks signatures: the right key works, a wrong secret or key does not."""
    from zoomq.storage.s3 import S3Store

    server = MotoServer(tmp_path, env={"INITIAL_NO_AUTH_ACTION_COUNT": "4"})  # the 4 set-up calls below
    try:
        iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1", aws_access_key_id="setup",
                           aws_secret_access_key="setup")
        iam.create_user(UserName="zoomq")
        iam.put_user_policy(UserName="zoomq", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="zoomq")["AccessKey"]
        raw_client(server.url, "setup", "setup").create_bucket(Bucket="videos")

        use_aws_env(monkeypatch, aws_env(server.url, tmp_path, key["AccessKeyId"], key["SecretAccessKey"]))
        store = S3Store("videos")
        store.put("job/a", b"1")
        assert store.get("job/a") == b"1"
        for access_key, secret in ((key["AccessKeyId"], "wrong"), ("AKIAIOSFODNN7EXAMPLE", key["SecretAccessKey"])):
            use_aws_env(monkeypatch, aws_env(server.url, tmp_path, access_key, secret))
            with pytest.raises(ZoomqError) as e:
                S3Store("videos").get("job/a")
            assert str(e.value) == (
                f"ZOOMQ_ARTIFACTS=s3://videos: bucket 'videos' at {server.url}: access denied (403) while checking "
                "the bucket; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) and that they may "
                "list, read, write and delete in the bucket")
    finally:
        server.stop()


# -- a whole zoom through the queue ---------------------------------------------------------

def test_zoom_over_two_workers_keeps_every_artifact_in_s3(s3_bucket, tiny_inpaint, tmp_path, monkeypatch, redis_server):
    from zoomq.producer import Producer

    monkeypatch.setenv("ZOOMQ_ARTIFACTS", f"s3://{s3_bucket.name}/cluster-a")
    redis_server = redis_server(tmp_path / "redis")
    monkeypatch.setenv("ZOOMQ_REDIS_URL", redis_server.url)
    env = {**s3_bucket.env, "ZOOMQ_ARTIFACTS": os.environ["ZOOMQ_ARTIFACTS"]}
    workers = []
    try:
        for name in ("s3-a", "s3-b"):
            workers.append(Worker(name, redis_server.url, [tiny_inpaint], tmp_path, env=env))
        producer = Producer()
        job = producer.submit_zoom("a spiral", model="inpaint", keyframes=3, gif=True, **SMALL_ZOOM)
        record = producer.wait(job, timeout=240)
        assert record["state"] == "done", record.get("error")
        assert len({p["worker"] for p in producer.jobs.pieces(job).values()}) == 2  # both did work

        stored = s3_bucket.keys()
        names = [k.removeprefix(f"cluster-a/{job}/") for k in stored]
        assert all(k.startswith(f"cluster-a/{job}/") for k in stored), stored
        expected = ["keyframe-000.png", "keyframe-001.png", "keyframe-002.png", "result.gif", "result.mp4",
                    "segment-000.mp4", "segment-001.mp4", "sidecar.json"]
        assert [n for n in names if not n.startswith("text-")] == expected
        assert any(n.startswith("text-") and n.endswith(".npy") for n in names)  # the prompt's embedding
        video = s3_bucket.client.get_object(Bucket=s3_bucket.name, Key=f"cluster-a/{job}/result.mp4")["Body"].read()
        assert producer.result(job) == video and video[4:8] == b"ftyp"
        sidecar = producer.artifact(job, "sidecar.json")
        assert sidecar is not None and b'"frames": 13' in sidecar
        assert list(redis_server.client().scan_iter("zoomq:artifact:*")) == []
    finally:
        for worker in workers:
            worker.stop()
        redis_server.stop()
