"""The file store in an S3-compatible bucket: ``file_store: s3://BUCKET/PREFIX``.

It keeps the local store's promise (``files.py``): an object exists at a file's final key
only complete and md5-verified. The bytes are hashed as they stream in and the object is
published only once the whole md5 matches the sender's claim:

- a file that fits in one part (``part_size``, 8 MiB) is held in memory, verified, then
  written with one PUT carrying its Content-MD5 (so the bucket checks the transfer too);
- a larger one goes up as a multipart upload to its final key, each part with its
  Content-MD5; the upload is completed (which is what makes an object visible, all at once)
  only after the last byte matched. Until then nothing is at the key, and a crash leaves
  an unfinished multipart upload that ``remove_stale_uploads`` aborts.

Publishing (a PUT or a completion) happens under the placement lock, like a rename on
disk, so ``blobs.Blobs`` keeps bytes that a stored record relies on from being replaced.
Objects live under ``PREFIX/files/<file id>``; their md5 also rides in the object's
metadata (``x-amz-meta-md5``), which ``meteorpi files migrate`` and audits read.

Credentials and region come from boto3's standard chain (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, instance roles); ``s3_endpoint_url`` names a
server other than AWS (Ceph RGW, SeaweedFS, Garage, MinIO).
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Collection, Iterator
from urllib.parse import urlsplit

from meteorpi_model import MD5Stream

from .files import CHUNK_SIZE, FileStore, FileStoreError, Md5Mismatch, StoredFile, TooLarge

log = logging.getLogger("meteorpi.files")

SCHEME = "s3://"
# S3 takes parts of 5 MiB to 5 GiB, at most 10,000 of them: 8 MiB parts cover files of
# up to 78 GiB, and a part is what one upload holds in memory.
PART_SIZE = 8 * 1024 ** 2
MIN_PART_SIZE = 5 * 1024 ** 2
MAX_PARTS = 10_000
# Small files of a bundle are published this many at a time (each is one PUT).
PUBLISH_THREADS = 8


def is_s3_url(file_store: str) -> bool:
    return file_store.startswith(SCHEME)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://BUCKET/PREFIX`` as (bucket, prefix), the prefix empty or ending in "/"."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"an S3 file store is s3://BUCKET or s3://BUCKET/PREFIX, not {url!r}")
    prefix = parts.path.strip("/")
    return parts.netloc, f"{prefix}/" if prefix else ""


class S3Unavailable(FileStoreError):
    """The bucket cannot be used: missing, refused, or unreachable. The message is one line
    saying which and what to do."""


def make_client(endpoint_url: str | None = None, quick: bool = False):
    """A boto3 S3 client with the standard credential chain and retries that ride out a
    server's short outage (throttling, a restart); ``quick``: a probe's client, with short
    time-outs and no retries."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise S3Unavailable("file_store is a bucket, and boto3 is not installed: "
                            "pip install 'meteorpi[s3]'") from None
    # AWS_MAX_ATTEMPTS, boto3's own variable, is honoured: a Config would override it.
    attempts = 1 if quick else int(os.environ.get("AWS_MAX_ATTEMPTS") or 8)
    config = Config(retries={"mode": "standard", "max_attempts": attempts},
                    connect_timeout=2 if quick else 10, read_timeout=3 if quick else 60,
                    max_pool_connections=32,
                    # Servers other than AWS seldom resolve bucket names as host names.
                    s3={"addressing_style": "path" if endpoint_url else "auto"})
    # A session of its own: boto3's default one keeps the first credentials it found.
    return boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)


def _error_code(error: Exception) -> str:
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def _md5_header(hex_md5: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_md5)).decode()


@dataclass
class S3PendingFile:
    """Verified bytes not yet published at their key: held in memory (one part at most)
    or as a multipart upload waiting to be completed. :meth:`S3FileStore.install` or
    :meth:`discard` ends it."""

    store: S3FileStore
    stored: StoredFile
    data: bytes | None = None
    upload_id: str | None = None
    parts: list[dict] = field(default_factory=list)

    def publish(self) -> None:
        key = self.store.key_for(self.stored.file_id)
        if self.upload_id is None:
            self.store.client.put_object(
                Bucket=self.store.bucket, Key=key, Body=self.data or b"",
                ContentMD5=_md5_header(self.stored.md5), Metadata={"md5": self.stored.md5})
            self.data = None
            return
        self.store.client.complete_multipart_upload(
            Bucket=self.store.bucket, Key=key, UploadId=self.upload_id,
            MultipartUpload={"Parts": self.parts})
        self.upload_id = None

    def discard(self) -> None:
        """Drop the bytes unless they were published; safe to call more than once."""
        self.data = None
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(Exception):  # the sweep aborts what is left
                self.store.client.abort_multipart_upload(
                    Bucket=self.store.bucket, Key=self.store.key_for(self.stored.file_id),
                    UploadId=upload_id)


class S3FileStore:
    """File contents as objects ``PREFIX/files/<id hex>`` in one bucket.

    ``staging_dir`` is a local directory: resumable uploads grow in its ``.uploads/`` until
    complete, and it holds the placement lock used when the database is SQLite (one
    host); on PostgreSQL, ``blobs.Blobs`` locks through the database instead, so any
    number of hosts can share the bucket.
    """

    kind = "s3"

    def __init__(self, url: str, endpoint_url: str | None = None,
                 staging_dir: str | os.PathLike = "var/uploads", client=None,
                 part_size: int = PART_SIZE):
        self.url = url
        self.bucket, self.prefix = parse_s3_url(url)
        self.endpoint_url = endpoint_url or None
        self.client = client or make_client(self.endpoint_url)
        self.part_size = max(part_size, MIN_PART_SIZE)
        # Resumable uploads grow on this host's disk until they are whole and verified,
        # then go to the bucket (adopt); the lock files of this host live there too.
        self.staging = FileStore(staging_dir)
        self.uploads = self.staging.uploads
        self._probe_client = None

    def __repr__(self) -> str:
        return f"S3FileStore({self.url!r}, endpoint_url={self.endpoint_url!r})"

    def describe(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"{self.url}{where}"

    # Names -------------------------------------------------------------------------------

    def key_for(self, file_id: uuid.UUID) -> str:
        return f"{self.prefix}files/{file_id.hex}"

    def _file_id_of(self, key: str) -> uuid.UUID | None:
        name = key[len(self.prefix) + len("files/"):]
        try:
            return uuid.UUID(hex=name) if len(name) == 32 else None
        except ValueError:
            return None

    # Start-up ----------------------------------------------------------------------------

    def check(self, quick: bool = True) -> None:
        """Raise S3Unavailable, in one line that says what to do, unless the bucket can be
        read and written with the credentials at hand. ``quick`` (the default: start-up and
        readiness) answers within seconds, without retries: a server that will not start
        says so at once, and its supervisor starts it again."""
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            EndpointConnectionError,
            NoCredentialsError,
        )

        where = self.describe()
        client = self._quick_client() if quick else self.client
        try:
            client.head_bucket(Bucket=self.bucket)
            probe = f"{self.prefix}.health/{os.getpid()}-{uuid.uuid4().hex[:8]}"
            client.put_object(Bucket=self.bucket, Key=probe, Body=b"meteorpi health check\n")
            client.delete_object(Bucket=self.bucket, Key=probe)
        except NoCredentialsError:
            raise S3Unavailable(
                f"file store {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or give the host an instance role)") from None
        except EndpointConnectionError as error:
            raise S3Unavailable(
                f"file store {where}: cannot reach the S3 server ({error}); check "
                "s3_endpoint_url (METEORPI_S3_ENDPOINT_URL) and that the server is up") from None
        except ClientError as error:
            code = _error_code(error)
            if code in ("404", "NoSuchBucket"):
                raise S3Unavailable(
                    f"file store {where}: bucket {self.bucket!r} does not exist; create it, or "
                    "fix file_store") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise S3Unavailable(
                    f"file store {where}: access denied ({code}); check the credentials "
                    "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) and that they may read and write "
                    f"bucket {self.bucket!r}") from None
            raise S3Unavailable(f"file store {where}: the S3 server refused ({code}: "
                                f"{error}); check the bucket and credentials") from None
        except BotoCoreError as error:
            raise S3Unavailable(f"file store {where}: {error}; check s3_endpoint_url and the "
                                "credentials") from None

    def _quick_client(self):
        if self._probe_client is None:
            self._probe_client = make_client(self.endpoint_url, quick=True)
        return self._probe_client

    # Locks -------------------------------------------------------------------------------

    def locked(self, file_ids: Collection[uuid.UUID]):
        """This host's placement lock (see ``files.LocalPlacementLocks``)."""
        return self.staging.locked(file_ids)

    def upload_path(self, file_id: uuid.UUID, md5: str) -> Path:
        """Where a resumable upload of these bytes grows, on this host, until it is whole."""
        return self.staging.upload_path(file_id, md5)

    def adopt(self, file_id: uuid.UUID, path: Path, md5: str) -> None:
        """Publish a complete file from the staging directory, whose md5 was verified to
        be ``md5``, at its key, then remove it (the caller holds the placement lock). Its
        bytes are checked against ``md5`` again on the way, so a disk that changed them
        since fails here (Md5Mismatch) instead of publishing them."""
        with open(path, "rb") as source:
            pending = self.receive(file_id, source, md5)
        self.install(pending)
        path.unlink(missing_ok=True)

    # Reading -----------------------------------------------------------------------------

    def exists(self, file_id: uuid.UUID) -> bool:
        return self.stat(file_id) is not None

    def stat(self, file_id: uuid.UUID) -> tuple[int, float] | None:
        """The object's size and modification time (a time.time()), or None if missing."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key_for(file_id))
        except Exception as error:
            if _error_code(error) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return head["ContentLength"], head["LastModified"].timestamp()

    def open(self, file_id: uuid.UUID, size: int | None = None) -> BinaryIO:
        """A seekable reader of the object (of ``size`` bytes, looked up if not given);
        FileNotFoundError if there is none."""
        if size is None:
            found = self.stat(file_id)
            if found is None:
                raise FileNotFoundError(f"no object {self.key_for(file_id)} in bucket {self.bucket}")
            size = found[0]
        return io.BufferedReader(S3ObjectReader(self, self.key_for(file_id), size),
                                 buffer_size=CHUNK_SIZE)

    def presigned_url(self, file_id: uuid.UUID, seconds: int, **params) -> str:
        """A URL that lets whoever holds it GET the object for ``seconds``."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self.key_for(file_id), **params},
            ExpiresIn=seconds)

    def iter_file_ids(self) -> Iterator[tuple[uuid.UUID, float]]:
        """Every complete object in the store, with its modification time."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}files/"):
            for entry in page.get("Contents", ()):
                file_id = self._file_id_of(entry["Key"])
                if file_id is not None:
                    yield file_id, entry["LastModified"].timestamp()

    # Writing -----------------------------------------------------------------------------

    def receive(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
                max_bytes: int | None = None) -> S3PendingFile:
        """Stream ``source`` towards the bucket and check that its md5 is ``expected_md5``.

        Raises Md5Mismatch or TooLarge (nothing is kept) or whatever reading ``source``
        raises. Nothing is visible until :meth:`install`.
        """
        hasher = MD5Stream()
        pending = S3PendingFile(self, StoredFile(file_id, expected_md5, 0))
        buffer = bytearray()
        parts = _PartPipeline(self, pending)
        try:
            while piece := source.read(CHUNK_SIZE):
                hasher.update(piece)
                if max_bytes is not None and hasher.bytes_seen > max_bytes:
                    raise TooLarge(max_bytes)
                buffer += piece
                if len(buffer) >= self.part_size:
                    parts.send(bytes(buffer[:self.part_size]))
                    del buffer[:self.part_size]
            actual = hasher.hexdigest()
            if actual != expected_md5:
                raise Md5Mismatch(file_id, expected_md5, actual, hasher.bytes_seen)
            if pending.upload_id is not None and buffer:
                parts.send(bytes(buffer))
            elif pending.upload_id is None:
                pending.data = bytes(buffer)
            parts.finish()
        except BaseException:
            parts.finish(cancel=True)
            pending.discard()
            raise
        pending.stored = StoredFile(file_id, actual, hasher.bytes_seen)
        return pending

    def _send_part(self, pending: S3PendingFile, data: bytes) -> None:
        """Upload ``data`` as the next part of ``pending``'s multipart upload (begun now
        if need be), and note it."""
        number = self._next_part(pending)
        pending.parts.append(self._upload_part(pending, number, data))

    def _next_part(self, pending: S3PendingFile) -> int:
        if pending.upload_id is None:
            pending.upload_id = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key_for(pending.stored.file_id),
                Metadata={"md5": pending.stored.md5})["UploadId"]
        number = len(pending.parts) + 1
        if number > MAX_PARTS:
            raise TooLarge(self.part_size * MAX_PARTS)
        return number

    def _upload_part(self, pending: S3PendingFile, number: int, data: bytes) -> dict:
        reply = self.client.upload_part(
            Bucket=self.bucket, Key=self.key_for(pending.stored.file_id),
            UploadId=pending.upload_id, PartNumber=number, Body=data,
            ContentMD5=base64.b64encode(_md5(data)).decode())
        return {"PartNumber": number, "ETag": reply["ETag"]}

    def install(self, pending: S3PendingFile) -> None:
        """Publish verified bytes at their key (the caller holds the placement lock)."""
        try:
            pending.publish()
        finally:
            pending.discard()

    def write(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
              max_bytes: int | None = None) -> StoredFile:
        """:meth:`receive` and :meth:`install` at once (for a caller holding no index)."""
        pending = self.receive(file_id, source, expected_md5, max_bytes)
        self.install(pending)
        return pending.stored

    def group(self) -> S3FileGroup:
        return S3FileGroup(self)

    def remove(self, file_id: uuid.UUID, unless_newer_than: float | None = None) -> bool:
        """Delete a file's object (only if last changed before ``unless_newer_than``, a
        time.time(), when given); True if one was deleted."""
        found = self.stat(file_id)
        if found is None or (unless_newer_than is not None and found[1] >= unless_newer_than):
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key_for(file_id))
        return True

    def remove_stale_uploads(self, older_than_seconds: float, keep: Collection[str] = ()) -> int:
        """Remove resumable uploads of this host idle for ``older_than_seconds``, and abort
        multipart uploads under this store's prefix that received no part for as long (a
        crash or a cut connection left them), but those in ``keep`` (upload ids that a
        shared resumable upload still counts on: it may grow its tail for a long time
        before its next part)."""
        cutoff = time.time() - older_than_seconds
        removed = self.staging.remove_stale_uploads(older_than_seconds)
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", ()):
                if upload["Initiated"].timestamp() >= cutoff or upload["UploadId"] in keep:
                    continue
                if self._last_part_time(upload) >= cutoff:
                    continue  # a slow sender still sending
                with contextlib.suppress(Exception):  # another host aborted it first
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
                    removed += 1
        return removed

    def _last_part_time(self, upload: dict) -> float:
        try:
            parts = self.client.list_parts(Bucket=self.bucket, Key=upload["Key"],
                                           UploadId=upload["UploadId"]).get("Parts", ())
        except Exception as error:
            if _error_code(error) in ("404", "NoSuchUpload"):
                return 0.0
            raise
        return max((part["LastModified"].timestamp() for part in parts), default=0.0)


class _PartPipeline:
    """Sends one part while the next arrives: a large file then takes about as long as
    the slower of receiving and uploading, not both. At most one part is in flight, so an
    upload holds two parts in memory."""

    def __init__(self, store: S3FileStore, pending: S3PendingFile):
        self.store, self.pending = store, pending
        self._pool: ThreadPoolExecutor | None = None
        self._in_flight = None

    def send(self, data: bytes) -> None:
        self._wait()
        number = self.store._next_part(self.pending)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="s3-part")
        self._in_flight = self._pool.submit(self.store._upload_part, self.pending, number, data)

    def _wait(self) -> None:
        if self._in_flight is not None:
            future, self._in_flight = self._in_flight, None
            self.pending.parts.append(future.result())

    def finish(self, cancel: bool = False) -> None:
        """Wait for the part in flight (``cancel``: and drop it), then stop the thread."""
        try:
            if cancel and self._in_flight is not None:
                self._in_flight.cancel()
                with contextlib.suppress(BaseException):
                    self._in_flight.result()
                self._in_flight = None
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


class S3FileGroup:
    """Many small files published together (``files.FileGroup`` on disk): each is verified
    as it arrives and held until :meth:`commit` publishes them, several at a time."""

    def __init__(self, store: S3FileStore):
        self.store = store
        self._written: list[S3PendingFile] = []

    def write(self, file_id: uuid.UUID, source: BinaryIO, expected_md5: str,
              max_bytes: int | None = None) -> StoredFile:
        pending = self.store.receive(file_id, source, expected_md5, max_bytes)
        self._written.append(pending)
        return pending.stored

    def written(self) -> dict[uuid.UUID, str]:
        return {pending.stored.file_id: pending.stored.md5 for pending in self._written}

    def make_durable(self) -> None:
        """Nothing to do: a bucket acknowledges a PUT only once it keeps the bytes."""

    def commit(self, exclude: Collection[uuid.UUID] = ()) -> list[StoredFile]:
        written, self._written = self._written, []
        keep = [pending for pending in written if pending.stored.file_id not in exclude]
        try:
            if len(keep) > 1:
                with ThreadPoolExecutor(min(PUBLISH_THREADS, len(keep))) as pool:
                    list(pool.map(S3PendingFile.publish, keep))
            elif keep:
                keep[0].publish()
        finally:
            for pending in written:
                pending.discard()
        return [pending.stored for pending in keep]


class S3ObjectReader(io.RawIOBase):
    """A seekable, read-only view of one object: each read after a seek opens a ranged
    GET from there, so a download resumed at byte N fetches only what it sends."""

    def __init__(self, store: S3FileStore, key: str, size: int):
        self.store, self.key, self.size = store, key, size
        self.position = 0
        self._body = None
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        position = max(0, base + offset)
        if position != self.position:
            self._close_body()
            self.position = position
        return self.position

    def readinto(self, buffer) -> int:
        if self.position >= self.size:
            return 0
        if self._body is None:
            reply = self.store.client.get_object(
                Bucket=self.store.bucket, Key=self.key, Range=f"bytes={self.position}-")
            self._body = reply["Body"]
        data = self._body.read(len(buffer))
        if not data:
            raise IOError(f"object {self.key} ended at byte {self.position} of {self.size}")
        buffer[:len(data)] = data
        self.position += len(data)
        return len(data)

    def _close_body(self) -> None:
        if self._body is not None:
            with contextlib.suppress(Exception):
                self._body.close()
            self._body = None

    def close(self) -> None:
        self._close_body()
        super().close()
