"""Every error is a JSON reply: a 4xx that says what is wrong, or a bare 500.

Replies under /import also carry ``"state": "failed"`` so a legacy exporter that reads
the state rather than the status code still backs off correctly.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from meteorpi_model import ValidationError

from ..imports.handshake import ProtocolError
from ..protocol import FAILED

log = logging.getLogger("meteorpi.api")


class ApiError(Exception):
    """Raise from a view to answer ``status`` with a JSON error."""

    def __init__(self, status: int, message: str, error: str = "bad_request",
                 headers: dict[str, str] | None = None, **details):
        super().__init__(message)
        self.status, self.message, self.error, self.details = status, message, error, details
        self.headers = headers or {}


def error_response(status: int, error: str, message: str, **details):
    body = {"error": error, "message": message, **details}
    if request.path.startswith("/import"):
        body["state"] = FAILED
    response = jsonify(body)
    response.status_code = status
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        response = error_response(error.status, error.error, error.message, **error.details)
        response.headers.update(error.headers)
        return response

    @app.errorhandler(ValidationError)
    def invalid_entity(error: ValidationError):
        return error_response(400, "invalid_entity", str(error), field=error.path)

    @app.errorhandler(ProtocolError)
    def protocol_error(error: ProtocolError):
        details = {"field": error.field} if error.field else {}
        return error_response(400, "bad_request", error.message, **details)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        name = (error.name or "error").lower().replace(" ", "_")
        response = error_response(error.code or 500, name, error.description or error.name)
        # Keep what the exception says about the resource (Allow, WWW-Authenticate,
        # Content-Range on a 416...); only the body is ours.
        for name, value in error.get_headers():
            if name.lower() not in ("content-type", "content-length"):
                response.headers[name] = value
        return response

    for kind in _bucket_errors():
        app.register_error_handler(kind, _bucket_unavailable)

    @app.errorhandler(Exception)
    def unexpected(error: Exception):
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(500, "internal_error",
                              "the server failed to handle this request; the error is in its log")


def _bucket_errors() -> tuple[type, ...]:
    """The S3 client's errors, where it is installed (a bucket as the file store)."""
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:
        return ()
    return (BotoCoreError, ClientError)


def _bucket_unavailable(error: Exception):
    """The bucket failed mid-request (after the client's own retries): the request did
    not happen, nothing partial is visible, and the sender should try again later."""
    log.warning("file store failed on %s %s: %s", request.method, request.path, error)
    response = error_response(503, "file_store_unavailable",
                              "the file store (an S3 bucket) did not answer; nothing was "
                              "stored: try again later")
    response.headers["Retry-After"] = "30"
    return response
