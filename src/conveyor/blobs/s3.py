"""Blobs in an S3 bucket: AWS S3 or any S3-compatible server (OpenStack Swift s3api, Ceph
radosgw, MinIO...). boto3 is blocking: every call runs in a worker thread.

Streams are uploaded with multipart uploads, one part buffered at a time (8 MiB by
default, doubling every 1000 parts so the 10,000-part limit is never reached), and the
upload is aborted if anything fails midway. Addressing is path-style
(``ENDPOINT/BUCKET/KEY``), which every S3-compatible server understands.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from conveyor.blobs.base import (
    CHUNK,
    BlobStore,
    BlobStoreUnavailable,
    StoredBlob,
    check_key,
    check_prefix,
    redact_url,
)
from conveyor.errors import ConveyorError, InvalidInput, NotFound

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
DEFAULT_PART_SIZE = 8 * MiB
PART_SIZE_DOUBLES_EVERY = 1000
THREADS = 32  # boto3 calls at once, per store (and HTTP connections kept)
URL_OPTIONS = ("endpoint", "region", "access_key", "secret_key", "session_token", "part_size_mib")
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


_loader: Any = None
_loader_lock = threading.RLock()


def _new_session() -> boto3.session.Session:
    """A fresh boto3 session (credentials resolved anew) sharing one model loader: a
    session of its own would read the service models again (~0.5 s per store)."""
    global _loader
    with _loader_lock:
        core = botocore.session.Session()
        if _loader is None:
            _loader = core.get_component("data_loader")
        else:
            core.register_component("data_loader", _loader)
        return boto3.session.Session(botocore_session=core)


def _client_config() -> Config:
    options: dict[str, Any] = {
        "signature_version": "s3v4",
        "s3": {"addressing_style": "path"},
        "retries": {"max_attempts": 5, "mode": "standard"},
        "connect_timeout": 5,
        "read_timeout": 60,
        "max_pool_connections": THREADS,
    }
    try:
        # botocore >= 1.36 adds CRC checksums (aws-chunked trailers) to every upload by
        # default; many S3-compatible servers refuse them. Only when the API requires.
        return Config(
            **options,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
    except TypeError:  # older botocore: never sent them
        return Config(**options)


class S3BlobStore(BlobStore):
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        session_token: str | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        if not bucket:
            raise InvalidInput("an S3 blob store needs a bucket")
        prefix = prefix.strip("/")
        if prefix:
            check_key(prefix)
        if part_size < MIN_PART_SIZE:
            raise InvalidInput(f"S3 part size must be at least {MIN_PART_SIZE // MiB} MiB")
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.region = (
            region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        self.part_size = part_size
        # boto3 blocks: its calls run in threads of their own, so a slow bucket cannot
        # starve the event loop's default executor that everything else shares.
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="s3-blobs")
        # Credentials left None fall back to boto3's chain: AWS_ACCESS_KEY_ID /
        # AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE, ~/.aws, instance roles.
        with _loader_lock:
            self.client: Any = _new_session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=self.region,
                aws_access_key_id=access_key or None,
                aws_secret_access_key=secret_key or None,
                aws_session_token=session_token or None,
                config=_client_config(),
            )

    @classmethod
    def from_url(cls, url: str) -> S3BlobStore:
        """``s3://BUCKET[/PREFIX][?endpoint=URL&region=R&access_key=K&secret_key=S
        &session_token=T&part_size_mib=N]`` (see docs/storage.md)."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise InvalidInput(f"not an s3:// URL: {url!r}")
        if "@" in parts.netloc:
            raise InvalidInput(
                "put S3 credentials in ?access_key=&secret_key= or the AWS_* environment,"
                " not before the bucket name"
            )
        bucket = parts.netloc
        if not bucket:
            raise InvalidInput(f"no bucket in {redact_url(url)!r}: s3://BUCKET/PREFIX?...")
        try:
            query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as exc:
            raise InvalidInput(f"bad query in S3 blob URL: {exc}") from exc
        unknown = sorted(set(query) - set(URL_OPTIONS))
        if unknown:
            raise InvalidInput(
                f"unknown S3 blob URL option(s) {', '.join(unknown)};"
                f" known: {', '.join(URL_OPTIONS)}"
            )
        one = {k: v[-1] for k, v in query.items()}
        endpoint = one.get("endpoint") or None
        if endpoint is not None and not endpoint.startswith(("http://", "https://")):
            raise InvalidInput(f"S3 endpoint must be http:// or https://, not {endpoint!r}")
        part_size = DEFAULT_PART_SIZE
        if "part_size_mib" in one:
            try:
                part_size = int(one["part_size_mib"]) * MiB
            except ValueError as exc:
                raise InvalidInput("part_size_mib must be a whole number of MiB") from exc
        return cls(
            bucket,
            unquote(parts.path),
            endpoint_url=endpoint,
            region=one.get("region") or None,
            access_key=one.get("access_key") or None,
            secret_key=one.get("secret_key") or None,
            session_token=one.get("session_token") or None,
            part_size=part_size,
        )

    def describe(self) -> str:
        where = self.endpoint_url or f"AWS {self.region}"
        return f"s3://{self.bucket}/{self.prefix} at {where}"

    def _name(self, key: str) -> str:
        return self.prefix + check_key(key)

    async def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._thread(fn, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            translated = self._translate(exc, what)
            if translated is exc:
                raise
            raise translated from exc

    async def _thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _translate(self, exc: Exception, what: str) -> ConveyorError | Exception:
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            if code in _NOT_FOUND:
                return NotFound(f"blob {what!r} is missing")
            if code == "NoSuchBucket":
                return BlobStoreUnavailable(f"bucket {self.bucket!r} does not exist")
            if status in (401, 403) or status >= 500 or code == "SlowDown":
                return BlobStoreUnavailable(
                    f"{self.describe()} refused {what!r}: {code} {error.get('Message', '')}"
                )
            return exc  # type: ignore[no-any-return]
        return BlobStoreUnavailable(f"{self.describe()} failed on {what!r}: {exc}")

    async def put_stream(self, key: str, chunks: AsyncIterable[bytes]) -> StoredBlob:
        name = self._name(key)
        digest = hashlib.sha256()
        size = 0
        buf = bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                buf += chunk
                while len(buf) >= (part_size := self._part_size(len(parts) + 1)):
                    if upload_id is None:
                        created = await self._call(
                            key, self.client.create_multipart_upload, Bucket=self.bucket, Key=name
                        )
                        upload_id = str(created["UploadId"])
                    with memoryview(buf) as view, view[:part_size] as head:
                        part = bytes(head)
                    del buf[:part_size]
                    parts.append(await self._upload_part(key, name, upload_id, len(parts), part))
                    del part
            if upload_id is None:
                await self._call(
                    key, self.client.put_object, Bucket=self.bucket, Key=name, Body=bytes(buf)
                )
            else:
                if buf:
                    last = bytes(buf)
                    buf.clear()
                    parts.append(await self._upload_part(key, name, upload_id, len(parts), last))
                await self._call(
                    key,
                    self.client.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                await self._abort(name, upload_id)
            raise
        return StoredBlob(key=key, size=size, sha256=digest.hexdigest())

    def _part_size(self, number: int) -> int:
        return self.part_size << ((number - 1) // PART_SIZE_DOUBLES_EVERY)

    async def _upload_part(
        self, key: str, name: str, upload_id: str, done: int, data: bytes
    ) -> dict[str, Any]:
        number = done + 1
        answer = await self._call(
            key,
            self.client.upload_part,
            Bucket=self.bucket,
            Key=name,
            UploadId=upload_id,
            PartNumber=number,
            Body=data,
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    async def _abort(self, name: str, upload_id: str) -> None:
        """Abort a multipart upload, even while being cancelled; never raises."""

        def abort() -> None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            except Exception:  # the server cleans up stale uploads by its own rules
                pass

        try:
            await asyncio.shield(self._thread(abort))
        except BaseException:
            pass

    async def put_bytes(self, key: str, data: bytes) -> StoredBlob:
        name = self._name(key)
        await self._call(key, self.client.put_object, Bucket=self.bucket, Key=name, Body=data)
        return StoredBlob(key=key, size=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def read_range(self, key: str, start: int, limit: int) -> bytes:
        name = self._name(key)
        if start < 0 or limit < 0:
            raise InvalidInput("start and limit must not be negative")
        if limit == 0:
            await self.size(key)
            return b""

        def get() -> bytes:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=name, Range=f"bytes={start}-{start + limit - 1}"
            )
            body = answer["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        try:
            return await self._call(key, get)  # type: ignore[no-any-return]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                await self.size(key)  # NotFound if it vanished; else we are past the end
                return b""
            raise

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        name = self._name(key)
        answer = await self._call(key, self.client.get_object, Bucket=self.bucket, Key=name)
        body = answer["Body"]
        try:
            while True:
                chunk = await self._call(key, body.read, CHUNK)
                if not chunk:
                    return
                yield chunk
        finally:
            body.close()

    async def size(self, key: str) -> int:
        name = self._name(key)
        answer = await self._call(key, self.client.head_object, Bucket=self.bucket, Key=name)
        return int(answer["ContentLength"])

    async def exists(self, key: str) -> bool:
        try:
            await self.size(key)
        except NotFound:
            return False
        return True

    async def delete(self, key: str) -> None:
        name = self._name(key)
        await self._call(key, self.client.delete_object, Bucket=self.bucket, Key=name)

    def presigned_url(self, key: str, expires_seconds: int = 3600) -> str | None:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": self.bucket, "Key": self._name(key)},
                ExpiresIn=expires_seconds,
            )
        )

    async def close(self) -> None:
        await self._thread(self.client.close)
        self._pool.shutdown(wait=False)

    async def create_bucket(self) -> None:
        """Create the bucket if it does not exist (tests, first set-up)."""
        try:
            await self._call("", self.client.head_bucket, Bucket=self.bucket)
        except (NotFound, BlobStoreUnavailable):
            await self._call("", self.client.create_bucket, Bucket=self.bucket)

    # Last: inside this class body `list` names this method, not the builtin.
    async def list(self, prefix: str = "") -> AsyncIterator[tuple[str, int]]:
        check_prefix(prefix)
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = await self._call(prefix, self.client.list_objects_v2, **kwargs)
            for item in page.get("Contents", []):
                yield str(item["Key"])[len(self.prefix) :], int(item["Size"])
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return
