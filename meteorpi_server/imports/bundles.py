"""File bundles: many small files' bytes in one request body (protocol v2, docs/batch.rst).

A night's files are mostly images of tens of KB; one request each caps a sequential
exporter at about a thousand files a second and costs the server a commit per file. A
bundle frames them back to back, each behind a one-line JSON header::

    {"file_id": "<32 hex>", "md5": "<32 hex>", "size": <bytes>}\\n
    <exactly size bytes>

This module reads that framing as a stream, one entry at a time, and never holds more
than one read of a file in memory. It knows nothing of storage: the batch importer
decides what to do with each entry.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator

from meteorpi_model import ValidationError, parse_id, parse_md5

from .. import protocol
from ..storage.files import IncompleteUpload

MEDIA_TYPE = protocol.BUNDLE_MEDIA_TYPE
MAX_HEADER_BYTES = 1024
READ_SIZE = 1 << 20


class BundleError(ValueError):
    """The framing itself is broken (the reader cannot find the next entry): a 400."""


@dataclass
class BundleEntry:
    """One file of a bundle. ``content`` reads exactly its bytes; ``invalid`` says why its
    header cannot be used (its bytes are then skipped)."""

    index: int
    file_id: uuid.UUID | None
    md5: str | None
    size: int
    content: BinaryIO
    invalid: ValidationError | None = None

    def skip(self) -> None:
        while self.content.read(READ_SIZE):
            pass


class _EntryContent:
    """Reads ``size`` bytes of the body, then b""; IncompleteUpload if the body ends first."""

    def __init__(self, stream: BinaryIO, size: int):
        self._stream, self.remaining = stream, size

    def read(self, size: int = -1) -> bytes:
        if self.remaining == 0:
            return b""
        wanted = self.remaining if size < 0 else min(size, self.remaining)
        piece = self._stream.read(wanted)
        if not piece:
            raise IncompleteUpload(f"the bundle ended {self.remaining} bytes before the end "
                                   "of a file")
        self.remaining -= len(piece)
        return piece


def _read_header_line(stream: BinaryIO) -> bytes | None:
    """The next header line without its newline, or None at the clean end of the body."""
    line = stream.readline(MAX_HEADER_BYTES + 1)
    if not line:
        return None
    if not line.endswith(b"\n"):
        if len(line) > MAX_HEADER_BYTES:
            raise BundleError(f"an entry header runs past {MAX_HEADER_BYTES} bytes")
        raise BundleError("the bundle ends inside an entry header")
    return line[:-1]


def _parse_header(line: bytes, index: int) -> tuple[dict[str, Any], int]:
    try:
        header = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BundleError(f"entry {index}: the header is not a JSON object on one line") from None
    size = header.get("size") if isinstance(header, dict) else None
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        # Without a size the next entry cannot be found: the rest of the body is lost.
        raise BundleError(f"entry {index}: the header needs 'size', a whole number of bytes")
    return header, size


def read_bundle(stream: BinaryIO, max_entries: int) -> Iterator[BundleEntry]:
    """Yield the entries of a bundle in order. The caller must read or :meth:`skip` each
    entry's content before asking for the next.

    Raises BundleError for broken framing or too many entries, IncompleteUpload for a
    body that ends inside a file.
    """
    index = 0
    while (line := _read_header_line(stream)) is not None:
        if index >= max_entries:
            raise BundleError(f"a bundle holds at most {max_entries} files")
        header, size = _parse_header(line, index)
        content = _EntryContent(stream, size)
        path = f"files[{index}]"
        try:
            file_id = parse_id(header.get("file_id"), f"{path}.file_id")
            md5 = parse_md5(header.get("md5"), f"{path}.md5")
        except ValidationError as error:
            entry = BundleEntry(index, None, None, size, content, invalid=error)
        else:
            entry = BundleEntry(index, file_id, md5, size, content)
        yield entry
        if content.remaining:
            raise RuntimeError("a bundle entry was not read to its end")
        index += 1


def header_line(file_id: uuid.UUID, md5: str, size: int) -> bytes:
    """An entry's header, as the exporter writes it."""
    return json.dumps({"file_id": file_id.hex, "md5": md5, "size": size},
                      separators=(",", ":")).encode() + b"\n"
