"""An MD5 whose state can be saved and carried on elsewhere: OpenSSL's MD5_CTX, by ctypes.

A resumable upload's chunks may reach different hosts, and the whole file's md5 must be
known before its object is published (never read back from the bucket). hashlib cannot
export its state; OpenSSL's low-level MD5 works on a plain C struct (four words of state,
the bit count, a 64-byte block and its fill: 92 bytes, the same layout since OpenSSL 0.9),
so each chunk's host saves the struct in the upload's row and the next host goes on from
it, at hashlib's speed. Where libcrypto lacks these functions, :func:`available` is False
and callers keep uploads on one host instead.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools

STATE_SIZE = 92


@functools.cache
def _library():
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
        functions = library.MD5_Init, library.MD5_Update, library.MD5_Final
    except (OSError, AttributeError):
        return None
    functions[0].argtypes = [ctypes.c_void_p]
    functions[1].argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    functions[2].argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    return library


def available() -> bool:
    """Whether md5 states can be saved here."""
    return _library() is not None


class ResumableMd5:
    """An MD5 fed piece by piece whose :meth:`state` can be saved and resumed from."""

    def __init__(self, state: bytes | None = None):
        library = _library()
        if library is None:
            raise RuntimeError("this libcrypto has no MD5_Init/MD5_Update/MD5_Final")
        self._update = library.MD5_Update
        self._final = library.MD5_Final
        self._context = ctypes.create_string_buffer(STATE_SIZE)
        if state is None:
            library.MD5_Init(self._context)
        elif len(state) != STATE_SIZE:
            raise ValueError(f"an md5 state is {STATE_SIZE} bytes, not {len(state)}")
        else:
            ctypes.memmove(self._context, state, STATE_SIZE)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if view.readonly:
            pointer = ctypes.cast(ctypes.c_char_p(bytes(view) if not isinstance(data, bytes)
                                                  else data), ctypes.c_void_p)
        else:
            pointer = ctypes.addressof(ctypes.c_char.from_buffer(view))
        self._update(self._context, pointer, view.nbytes)

    def state(self) -> bytes:
        """The state so far, to resume from with ``ResumableMd5(state)``."""
        return self._context.raw

    def hexdigest(self) -> str:
        """The digest of everything fed so far (the state itself is left as it was)."""
        copy = ctypes.create_string_buffer(self._context.raw, STATE_SIZE)
        digest = ctypes.create_string_buffer(16)
        self._final(digest, copy)
        return digest.raw.hex()
