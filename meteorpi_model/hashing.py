"""MD5 digests of file contents, computed as the bytes stream past.

MD5 is what the legacy protocol names files' contents by; it is used here as
a checksum against corruption, not as a defence against forgery.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable


class MD5Stream:
    """An MD5 digest fed piece by piece, counting the bytes it has seen."""

    __slots__ = ("_hash", "_bytes_seen")

    def __init__(self) -> None:
        # usedforsecurity=False keeps MD5 available on FIPS-mode systems.
        self._hash = hashlib.md5(usedforsecurity=False)
        self._bytes_seen = 0

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Add the next piece of the stream."""
        self._hash.update(data)
        self._bytes_seen += memoryview(data).nbytes

    def hexdigest(self) -> str:
        """The digest of everything seen so far, as 32 lowercase hex digits."""
        return self._hash.hexdigest()

    @property
    def bytes_seen(self) -> int:
        """How many bytes have been fed to ``update`` so far."""
        return self._bytes_seen


def md5_bytes(data: bytes | bytearray | memoryview) -> str:
    """The MD5 of ``data`` as 32 lowercase hex digits."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def md5_chunks(chunks: Iterable[bytes | bytearray | memoryview]) -> str:
    """The MD5 of the concatenation of ``chunks``, without joining them."""
    stream = MD5Stream()
    for chunk in chunks:
        stream.update(chunk)
    return stream.hexdigest()


def md5_file(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """The MD5 of a file's contents, read ``chunk_size`` bytes at a time."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    stream = MD5Stream()
    # One reused buffer: large files are hashed without a new allocation per chunk.
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while count := file.readinto(buffer):
            stream.update(view[:count])
    return stream.hexdigest()
