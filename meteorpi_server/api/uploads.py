"""Reading request bodies within limits: JSON documents and streamed multipart uploads."""
from __future__ import annotations

import contextlib
import json
import socket
from typing import Any, Iterator

from flask import Request
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import parse_options_header
from werkzeug.sansio.multipart import Data, Epilogue, File, MultipartDecoder, NeedData

from ..protocol import TOO_LARGE
from ..storage.files import IncompleteUpload
from .errors import ApiError

READ_SIZE = 1 << 20
BUFFER_LIMIT = 2 * READ_SIZE


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body is larger than this server's limit of {limit} bytes",
                    TOO_LARGE, limit=limit)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def read_json(request: Request, limit: int) -> Any:
    """The body parsed as strict JSON (no NaN or Infinity), at most ``limit`` bytes."""
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise _too_large(limit)
    try:
        return json.loads(body, parse_constant=_reject_constant)
    # RecursionError: nesting deeper than the parser's stack, e.g. a body of '[' * 10**5.
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise ApiError(400, f"the request body is not valid JSON: {error}", "bad_json") from None


@contextlib.contextmanager
def body_read_timeout(request: Request, seconds: float) -> Iterator[None]:
    """Within the block, each read of the request body waits at most ``seconds`` for data.

    A sender that goes silent without closing its connection (a half-open link) would
    otherwise block the read for ever, holding a worker thread and the upload's lock
    against the sender's own resumption. A read that times out raises, so the caller
    handles the bytes read so far as for a cut connection; the block then ends in a 408.
    Applies under gunicorn and werkzeug's server, which expose the client socket;
    elsewhere (a test client) it does nothing.
    """
    environ = request.environ
    connection = environ.get("gunicorn.socket") or environ.get("werkzeug.socket")
    if not isinstance(connection, socket.socket):
        yield
        return
    previous = connection.gettimeout()
    connection.settimeout(seconds)
    try:
        yield
    except Exception as error:
        if not _caused_by_timeout(error):
            raise
        raise ApiError(408, f"the sender was silent for {seconds:g} s in the middle of the "
                            "request body; ask for the offset and resume from there",
                       "request_timeout") from None
    finally:
        with contextlib.suppress(OSError):  # the connection may be closed by now
            connection.settimeout(previous)


def _caused_by_timeout(error: BaseException | None) -> bool:
    # Servers and werkzeug wrap the socket's TimeoutError (e.g. in ClientDisconnected).
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, TimeoutError):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


class MultipartFileField:
    """The content of one file field of a multipart/form-data body, read as a stream.

    The body is decoded as it arrives, so memory stays bounded whatever the file size.
    :meth:`open` skips to the named field (400 if the body has none); ``read`` then
    returns the field's bytes in pieces, raising IncompleteUpload if the body ends early.
    """

    def __init__(self, request: Request, field_name: str, limit: int):
        mimetype, options = parse_options_header(request.headers.get("Content-Type", ""))
        if mimetype != "multipart/form-data" or not options.get("boundary"):
            raise ApiError(415, "the upload must be multipart/form-data with a boundary",
                           "unsupported_media_type")
        if request.content_length is not None and request.content_length > limit:
            raise _too_large(limit)
        self._stream = request.stream
        # The decoder buffers at most one read plus what it has not yet handed out; the
        # cap stops a body whose part headers never end from growing that buffer.
        self._decoder = MultipartDecoder(options["boundary"].encode("latin-1"),
                                         max_form_memory_size=BUFFER_LIMIT, max_parts=64)
        self._field_name = field_name
        self._limit = limit
        self._received = 0
        self._ended = False
        self._field_done = False
        self._buffer = b""

    def _next_event(self):
        """The next multipart event, or None if the body ended before the form did."""
        while True:
            try:
                event = self._decoder.next_event()
            except ValueError as error:
                raise ApiError(400, f"the multipart body is malformed: {error}",
                               "bad_multipart") from None
            if not isinstance(event, NeedData):
                return event
            if self._ended:
                return None
            chunk = self._stream.read(READ_SIZE)
            self._received += len(chunk)
            if self._received > self._limit:
                raise _too_large(self._limit)
            self._ended = not chunk
            try:
                self._decoder.receive_data(chunk or None)
            except RequestEntityTooLarge:
                raise ApiError(413, f"a multipart part's headers run past {BUFFER_LIMIT} bytes",
                               TOO_LARGE, limit=BUFFER_LIMIT) from None

    def open(self) -> MultipartFileField:
        while True:
            event = self._next_event()
            if event is None or isinstance(event, Epilogue):
                raise ApiError(400, f"the multipart body has no file field named "
                                    f"'{self._field_name}'", "missing_field",
                               field=self._field_name)
            if isinstance(event, File) and event.name == self._field_name:
                return self

    def read(self, size: int = -1) -> bytes:
        while not self._buffer and not self._field_done:
            event = self._next_event()
            if event is None:
                raise IncompleteUpload("the upload ended before the end of the file")
            if isinstance(event, Data):
                self._buffer += event.data
                self._field_done = not event.more_data
            else:  # another part or the epilogue: the field ended
                self._field_done = True
        if size < 0 or size >= len(self._buffer):
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def discard_rest(self) -> None:
        """Consume the rest of the body so the connection can serve another request."""
        while self._stream.read(READ_SIZE):
            pass
