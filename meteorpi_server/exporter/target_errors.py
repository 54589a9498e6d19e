"""What went wrong with a target, in a line a person can act on, and whether a person must.

requests and urllib3 report a refused connection, an unknown host or a time-out as
nested exception texts; an operator reading ``export status`` wants "cannot connect to
HOST:PORT: connection refused; is the target server running?".

Most target failures heal by themselves (the target is down, restarting, overloaded, or
a proxy in front of it says so with 502/503/504): the exporter backs off and tries again
for ever. A few answers say the configuration itself is wrong, and waiting will not
change them: :func:`needs_a_person` tells them apart.
"""
from __future__ import annotations

import logging
import socket
import ssl
from http.client import RemoteDisconnected
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import NameResolutionError, ProtocolError, ReadTimeoutError

from .errors import TargetError

log = logging.getLogger("meteorpi.exporter")


#: Answers no wait will change: wrong credentials (401), a user without the import role
#: (403), a URL that is not an import endpoint (404, 405).
NEEDS_A_PERSON_STATUS_CODES = frozenset({401, 403, 404, 405})


def needs_a_person(error: BaseException) -> bool:
    """Whether the target failed in a way only a person can fix: it answered 401, 403,
    404 or 405, or its TLS certificate does not verify. Anything else (no connection, a
    time-out, 5xx, a reply outside the protocol) may heal by itself."""
    for link in _exception_chain(error):
        if getattr(link, "status_code", None) in NEEDS_A_PERSON_STATUS_CODES:
            return True
        if isinstance(link, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(link):
            return True
    return False


def describe_target_error(error: TargetError) -> str:
    """The error in a line a person can act on.

    A connection problem reads "cannot connect to HOST:PORT: connection refused; is the
    target server running?" rather than urllib3's nested exception texts (which are
    logged at debug level).
    """
    log.debug("target error: %s", error, exc_info=error.__cause__)
    # The requests exception behind it: the direct cause, or one that an upload gave up
    # on after retries (raised while handling it).
    cause = next((link for link in _exception_chain(error)
                  if isinstance(link, requests.exceptions.RequestException)), None)
    if cause is None or isinstance(cause, requests.exceptions.SSLError):
        return str(error)  # an SSLError's own text says what is wrong with the certificate
    where = _host_and_port(getattr(cause, "request", None))
    if isinstance(cause, requests.exceptions.ConnectTimeout):
        return (f"cannot connect to {where}: no answer within the connect timeout "
                "(export_connect_timeout_seconds); is the target reachable from here?")
    chain = _exception_chain(cause)
    # With retries configured, urllib3 reports a read time-out inside a MaxRetryError,
    # which requests raises as a ConnectionError.
    if any(isinstance(link, (requests.exceptions.ReadTimeout, ReadTimeoutError))
           for link in chain):
        return (f"{where} timed out: no answer within the read timeout "
                "(export_timeout_seconds); is the target overloaded?")
    if not isinstance(cause, requests.exceptions.ConnectionError):
        return str(error)
    text = " ".join(str(link) for link in chain)
    if any(isinstance(link, ConnectionRefusedError) for link in chain) or "Connection refused" in text:
        return f"cannot connect to {where}: connection refused; is the target server running?"
    if (any(isinstance(link, (socket.gaierror, NameResolutionError)) for link in chain)
            or "Failed to resolve" in text):
        host = where.rsplit(":", 1)[0]
        return f"cannot connect to {where}: no such host {host!r}; check the target URL"
    if (any(isinstance(link, (RemoteDisconnected, ConnectionResetError, ProtocolError))
            for link in chain) or "Connection aborted" in text):
        return (f"{where} closed the connection without answering; is the target restarting, "
                "or a proxy in the way?")
    innermost = chain[-1]
    return f"cannot connect to {where}: {innermost}"


def _host_and_port(request) -> str:
    try:
        parts = urlsplit(request.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        return f"{parts.hostname}:{port}"
    except (AttributeError, ValueError, TypeError):
        return "the target"


def _exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions inside it (urllib3 nests them in reason and args)."""
    chain, seen, todo = [], set(), [error]
    while todo:
        link = todo.pop(0)
        if id(link) in seen or len(chain) > 20:
            continue
        seen.add(id(link))
        chain.append(link)
        todo += [inner for inner in (getattr(link, "reason", None), link.__cause__,
                                     link.__context__, *link.args)
                 if isinstance(inner, BaseException)]
    return chain


class _QuietRetries(logging.Filter):
    """urllib3's 'Retrying (Retry(...)) after connection broken by ...' warnings, at debug
    level: a failed connect is retried twice by design, and what finally went wrong is
    reported once, in words (see describe_target_error)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith("Retrying"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_QUIET_RETRIES = _QuietRetries()


def quiet_connection_retries() -> None:
    """Log urllib3's connection retry warnings at debug level (idempotent)."""
    logger = logging.getLogger("urllib3.connectionpool")
    if _QUIET_RETRIES not in logger.filters:
        logger.addFilter(_QUIET_RETRIES)
