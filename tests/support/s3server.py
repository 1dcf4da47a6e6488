"""A real S3-compatible server for tests: moto's, as a subprocess on loopback, and fresh buckets
on it with this process's AWS_* variables aimed at them (fixtures ``moto_server``, ``s3_bucket``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from support.cluster import wait_for
from zoomq.node.processes import free_port

_AWS_VARIABLES = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_REGION",
                  "AWS_ENDPOINT_URL_S3", "AWS_REQUEST_CHECKSUM_CALCULATION", "AWS_RESPONSE_CHECKSUM_VALIDATION")


class MotoServer:
    """moto's server as a subprocess on a free loopback port; ``env`` e.g. turns authentication on."""

    def __init__(self, log_dir: Path, env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(Path(log_dir) / f"moto-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        wait_for(self._answers, 60, f"moto server on {self.url}")

    def _answers(self) -> bool:
        assert self.proc.poll() is None, f"moto server exited; see {self.log.name}"
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        self.log.close()


def aws_env(endpoint: str, folder: Path, key: str = "testing", secret: str = "testing") -> dict[str, str]:
    """The standard AWS variables pointing at ``endpoint``; no shared config file can interfere."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(folder / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(folder / "no-aws-credentials")}


def use_aws_env(monkeypatch, env: dict[str, str]) -> None:
    for name in _AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


def raw_client(endpoint: str, key: str = "testing", secret: str = "testing"):
    """A plain boto3 client, independent of zoomq, to look into the bucket."""
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                        aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    server = MotoServer(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


class Bucket:
    def __init__(self, server: MotoServer, folder: Path):
        self.name = f"zoomq-{uuid.uuid4().hex[:12]}"
        self.url = server.url
        self.env = aws_env(server.url, folder)
        self.client = raw_client(server.url)
        self.client.create_bucket(Bucket=self.name)

    def keys(self, prefix: str = "") -> list[str]:
        return keys(self.client, self.name, prefix)


@pytest.fixture
def s3_bucket(moto_server, tmp_path, monkeypatch) -> Bucket:
    """A fresh bucket on the session's moto server, with this process's AWS_* variables aimed at it."""
    bucket = Bucket(moto_server, tmp_path)
    use_aws_env(monkeypatch, bucket.env)
    return bucket


def s3_store(bucket: Bucket, prefix: str = ""):
    from zoomq.storage.s3 import S3Store

    return S3Store(bucket.name, prefix)
