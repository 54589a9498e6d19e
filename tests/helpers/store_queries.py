"""Reading the store in ways only tests need (the server itself never asks these)."""
from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from meteorpi_model import EventSearch, FileSearch
from meteorpi_server.reading import searches
from meteorpi_server.storage.orm import EventRow, FileRecordRow, StoredBlobRow


def count_events(session: Session, search: EventSearch) -> int:
    """How many events ``search`` matches, ignoring ``limit`` and ``skip``: counted
    independently of search_events' own count, to check it."""
    conditions = searches.event_conditions(search)
    return session.scalar(select(func.count()).select_from(EventRow).where(*conditions))


def count_files(session: Session, search: FileSearch) -> int:
    """How many files ``search`` matches, ignoring ``limit`` and ``skip``."""
    conditions = searches.file_conditions(search)
    return session.scalar(select(func.count()).select_from(FileRecordRow).where(*conditions))


def blob_md5(session: Session, file_id: uuid.UUID) -> str | None:
    """The md5 the store noted for ``file_id``'s bytes, or None if it holds none."""
    return session.scalar(select(StoredBlobRow.md5).where(StoredBlobRow.file_id == file_id))


def stored_bytes(files, file_id: uuid.UUID) -> bytes | None:
    """The bytes a file store (a directory or a bucket) holds for ``file_id``, or None."""
    try:
        with files.open(file_id) as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def nothing_partial(files) -> bool:
    """Whether a file store holds no partial file: under ``.uploads/`` on disk, nor (with
    a bucket) an unfinished multipart upload."""
    partial = [path for path in files.uploads.rglob("*") if path.is_file()] \
        if files.uploads.exists() else []
    if files.kind == "s3":
        reply = files.client.list_multipart_uploads(Bucket=files.bucket, Prefix=files.prefix)
        partial += reply.get("Uploads", [])
    return not partial


def nothing_in_store(files) -> bool:
    """Whether a file store holds no file, and no upload in progress, at all."""
    return not list(files.iter_file_ids()) and nothing_partial(files)


def everything_in_store(files) -> list:
    """All a file store holds: files, partial uploads and, in a bucket, every object and
    unfinished multipart upload under its prefix (empty once nothing is left behind)."""
    roots = [files.root] if files.kind == "local" else [files.staging.root]
    found = [path for root in roots if root.exists() for path in root.rglob("*")
             if path.is_file() and path.parent.name != ".locks"]
    if files.kind == "s3":
        client, bucket, prefix = files.client, files.bucket, files.prefix
        objects = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
        uploads = client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])
        found += [entry["Key"] for entry in objects] + [entry["Key"] for entry in uploads]
    return found
