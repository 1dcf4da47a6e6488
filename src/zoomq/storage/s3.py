"""The S3 artifact store: artifacts as objects in a bucket of any S3-compatible service.

Imported only when ``ZOOMQ_ARTIFACTS=s3://…``, so boto3 loads only then. boto3 finds the endpoint
and credentials itself (AWS_ENDPOINT_URL[_S3], AWS_ACCESS_KEY_ID, AWS_PROFILE, the shared config
files, instance roles). Objects appear whole, so writes are atomic; expiry is the bucket's
lifecycle rule, not ours. zoomq never creates the bucket.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import botocore.session
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from zoomq.errors import ArtifactStoreError, ArtifactStoreUnreachable
from zoomq.storage.base import CHUNK, Artifact, ArtifactStore, check_key

# Parts of 8 MiB, four at a time, and at most 16 chunks of 256 KiB waiting to be written on a
# download: a video streams through about 10 MiB of memory, whatever its size.
_TRANSFER = TransferConfig(multipart_threshold=8 * 2**20, multipart_chunksize=8 * 2**20, max_concurrency=4,
                           max_io_queue=16)
_MISSING = ("404", "NoSuchKey", "NotFound")
_DENIED = ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
           "ExpiredToken", "TokenRefreshRequired")
_CONNECTION = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
               "ProxyConnectionError", "SSLError")




def _is_aws(endpoint: str) -> bool:
    host = urlsplit(endpoint).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))


def make_client():
    """An S3 client from the usual AWS configuration. Off AWS (MinIO, Ceph, moto…) it addresses
    buckets by path, as those servers expect, and sends checksums only where S3 requires them
    (botocore's newer default checksums are refused by several S3-compatible servers); a profile
    or AWS_* variable that sets either choice wins."""
    core = botocore.session.get_session()
    session = boto3.session.Session(botocore_session=core)
    options = dict(connect_timeout=5, read_timeout=60, max_pool_connections=16,
                   retries={"mode": "standard", "max_attempts": 4})
    client = session.client("s3", config=Config(**options))
    if _is_aws(client.meta.endpoint_url):
        return client
    scoped = core.get_scoped_config()
    if "addressing_style" not in (scoped.get("s3") or {}):
        options["s3"] = {"addressing_style": "path"}
    for name in ("request_checksum_calculation", "response_checksum_validation"):
        if name not in scoped and not os.environ.get(f"AWS_{name.upper()}"):
            options[name] = "when_required"
    return session.client("s3", config=Config(**options))


class S3Store(ArtifactStore):
    """Artifacts as objects ``<prefix>/<job id>/<name>`` in ``bucket``.

    One client per process, made on first use: a store built before a fork makes its own in the
    child. boto3 clients are thread-safe once made; making one is not, hence the lock. The first
    use in a process also checks the bucket, so a wrong bucket, credential or endpoint is one
    clear error rather than a 404 on every key.
    """

    def __init__(self, bucket: str, prefix: str = "", label: str | None = None):
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.label = label or f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._client = None
        self._pid = 0
        self._lock = threading.Lock()

    # -- plumbing --------------------------------------------------------------------------

    @property
    def client(self):
        if self._client is None or self._pid != os.getpid():
            with self._lock:
                if self._client is None or self._pid != os.getpid():
                    self._client, self._pid = self._checked_client(), os.getpid()
        return self._client

    def _checked_client(self):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
        try:
            client = make_client()
        except ValueError as e:  # botocore's word for a malformed endpoint URL
            raise ArtifactStoreError(
                f"ZOOMQ_ARTIFACTS={self.label}: the S3 endpoint {endpoint!r} is not usable ({e}); fix "
                "AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3)"
            ) from None
        with self._errors("checking the bucket", client.meta.endpoint_url):
            client.head_bucket(Bucket=self.bucket)
        return client

    def _endpoint(self) -> str:
        return self._client.meta.endpoint_url if self._client is not None else "AWS S3"

    def _k(self, key: str) -> str:
        return self.prefix + check_key(key)

    @contextlib.contextmanager
    def _errors(self, doing: str, endpoint: str | None = None) -> Iterator[None]:
        """botocore's failures as one line that names ZOOMQ_ARTIFACTS, the bucket and the endpoint."""
        try:
            yield
        except ClientError as e:
            raise self._client_error(e, doing, endpoint or self._endpoint()) from None
        except (NoCredentialsError, PartialCredentialsError) as e:
            raise ArtifactStoreError(
                f"ZOOMQ_ARTIFACTS={self.label}: no usable AWS credentials ({e}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        except BotoCoreError as e:
            if type(e).__name__ in _CONNECTION:
                raise ArtifactStoreUnreachable(
                    f"ZOOMQ_ARTIFACTS={self.label}: cannot reach the S3 endpoint {endpoint or self._endpoint()} "
                    f"while {doing} ({e}); check AWS_ENDPOINT_URL (or AWS_ENDPOINT_URL_S3) and that the server is up"
                ) from None
            raise ArtifactStoreError(f"ZOOMQ_ARTIFACTS={self.label}: {doing} failed: {e}") from None

    def _client_error(self, e: ClientError, doing: str, endpoint: str) -> ArtifactStoreError:
        error = e.response.get("Error", {})
        code = str(error.get("Code", ""))
        where = f"ZOOMQ_ARTIFACTS={self.label}: bucket {self.bucket!r} at {endpoint}"
        if code == "NoSuchBucket" or (code in _MISSING and doing == "checking the bucket"):
            return ArtifactStoreError(
                f"{where} does not exist; create it (zoomq does not create buckets) or point "
                "ZOOMQ_ARTIFACTS at one that exists"
            )
        if code in _DENIED:
            return ArtifactStoreError(
                f"{where}: access denied ({code}) while {doing}; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE) and that they may list, read, write and delete in the bucket"
            )
        region = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region")
        if code in ("301", "PermanentRedirect", "AuthorizationHeaderMalformed") and region:
            return ArtifactStoreError(f"{where} is in region {region}: set AWS_DEFAULT_REGION={region}")
        return ArtifactStoreError(f"{where}: {doing} failed: {code} {error.get('Message', '')}".rstrip())

    # -- the store -------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        name = self._k(key)
        with self._errors(f"writing {key}"):
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data)

    def get(self, key: str) -> bytes | None:
        name = self._k(key)
        with self._errors(f"reading {key}"):
            try:
                return self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in _MISSING:
                    return None
                raise

    def open(self, key: str) -> Artifact | None:
        """The object's size and date from HEAD; its bytes by ranged GETs (only the range asked for,
        streamed a chunk at a time), each bound to the ETag HEAD saw, so a replaced object fails
        rather than mixing two versions."""
        name = self._k(key)
        with self._errors(f"looking for {key}"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in _MISSING:
                    return None
                raise
        etag = head.get("ETag")

        def read(start: int, stop: int) -> Iterator[bytes]:
            with self._errors(f"reading {key}"):
                extra = {"IfMatch": etag} if etag else {}
                body = self.client.get_object(Bucket=self.bucket, Key=name, Range=f"bytes={start}-{stop - 1}",
                                              **extra)["Body"]
                try:
                    yield from body.iter_chunks(CHUNK)
                finally:
                    body.close()

        return Artifact(int(head["ContentLength"]), head.get("LastModified"), read)

    def exists(self, key: str) -> bool:
        name = self._k(key)
        with self._errors(f"looking for {key}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=name)
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in _MISSING:
                    return False
                raise
        return True

    def put_file(self, key: str, path: Path) -> None:
        """Streamed from disk, in parts for large files: the file is never whole in memory."""
        name = self._k(key)
        with self._errors(f"writing {key}"):
            self.client.upload_file(str(path), self.bucket, name, Config=_TRANSFER)

    def get_file(self, key: str, path: Path) -> bool:
        """Streamed to a temporary file beside ``path``, renamed into place when whole."""
        name = self._k(key)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f, self._errors(f"reading {key}"):
                try:
                    self.client.download_fileobj(self.bucket, name, f, Config=_TRANSFER)
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") in _MISSING:
                        return False
                    raise
            os.replace(tmp, path)
            return True
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def delete(self, key: str) -> None:
        name = self._k(key)
        with self._errors(f"deleting {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=name)  # S3 answers 204 for a missing key too

    def delete_job(self, job_id: str) -> None:
        """Every object under ``<prefix>/<job id>/``, a page (at most 1000 keys) at a time."""
        under = self._k(job_id) + "/"
        with self._errors(f"deleting job {job_id}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=under):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if not keys:
                    continue
                failed = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
                if failed.get("Errors"):
                    first = failed["Errors"][0]
                    raise ArtifactStoreError(
                        f"ZOOMQ_ARTIFACTS={self.label}: could not delete {len(failed['Errors'])} object(s) of job "
                        f"{job_id}, e.g. {first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                    )
