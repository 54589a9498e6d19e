"""A multipart/form-data body streamed from a file, with its length known in advance.

``requests`` builds ``files=`` uploads in memory; this body is read from disk in 1 MiB
pieces as it is sent, so an upload of any size costs the same memory.
"""
from __future__ import annotations

import os
import secrets
from typing import BinaryIO, Iterator

PIECE_SIZE = 1 << 20


class MultipartFileBody:
    """One file field; iterate to send it, ``len()`` gives the Content-Length."""

    def __init__(self, field_name: str, file_name: str, source: BinaryIO,
                 content_type: str = "application/octet-stream"):
        self.boundary = secrets.token_hex(16)
        self.content_type = f"multipart/form-data; boundary={self.boundary}"
        self._head = (f"--{self.boundary}\r\n"
                      f'Content-Disposition: form-data; name="{field_name}"; '
                      f'filename="{file_name}"\r\n'
                      f"Content-Type: {content_type}\r\n\r\n").encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._source = source
        self._start = source.tell()
        self.file_size = os.fstat(source.fileno()).st_size - self._start
        self.bytes_sent = 0

    def __len__(self) -> int:
        return len(self._head) + self.file_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        self._source.seek(self._start)
        yield self._head
        remaining = self.file_size
        while remaining > 0:
            piece = self._source.read(min(PIECE_SIZE, remaining))
            if not piece:
                raise OSError("the file shrank while it was being sent")
            remaining -= len(piece)
            self.bytes_sent += len(piece)
            yield piece
        yield self._tail
