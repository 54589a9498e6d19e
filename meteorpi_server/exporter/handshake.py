"""The client half of the legacy import protocol: send one entity by following the replies.

Works against any server that speaks docs/protocol.rst. Transport problems (connection
errors, time-outs, 5xx, authentication) raise :class:`TargetError`, because they say
something about the target rather than the entity; protocol outcomes are returned as an
:class:`ExportResult`.
"""
from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from meteorpi_model import CameraStatus, Event, FileRecord, files_of, md5_file

from ..protocol import (
    CACHED_ENTITY,
    COMPLETE,
    CONTINUE,
    CONTINUE_NOCACHE,
    FAILED,
    NEED_FILE_DATA,
    NEED_STATUS,
    ORIGIN_HEADER,
    PROTOCOL_BATCH,
)
from . import defaults
from .errors import TargetError, UploadFailed, UploadRefused
from .multipart import MultipartFileBody
from .resumable import DEFAULT_CHUNK_SIZE, Progress, ResumableUploader

log = logging.getLogger("meteorpi.exporter")

DEFAULT_TIMEOUT = defaults.TIMEOUT
# The target counts failed uploads of a file and answers 'failed' after its
# upload_attempts (3 by default): a target asking for the same file more often than this
# in one exchange is going round in circles, and each time costs the whole file.
MAX_UPLOADS_PER_FILE = defaults.TARGET_UPLOAD_ATTEMPTS


@dataclass
class ExportResult:
    """How sending one entity ended.

    ``state`` is ``complete``; ``failed`` (the target said so, or this node lacks something
    the target asked for); ``rejected`` (the target answered 4xx: the entity is invalid
    there); ``stuck`` (the exchange over this entity went round in circles: more round
    trips than its files explain, a request for a file that is not part of it, or for one
    file after MAX_UPLOADS_PER_FILE uploads of it); or
    ``unexpected`` (a reply outside the protocol).
    """

    state: str
    message: str = ""
    round_trips: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    #: The HTTP status of a ``rejected`` entity's last reply.
    status_code: int | None = None

    @property
    def ok(self) -> bool:
        return self.state == COMPLETE


class EntitySource(Protocol):
    """Where the driver finds what a target asks for."""

    def status(self, status_id: uuid.UUID) -> CameraStatus | None: ...

    def open_file(self, record: FileRecord) -> BinaryIO | None: ...


class TargetSession(requests.Session):
    """A Session whose own ``verify`` is used on every request.

    A plain Session lets REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE in the environment override
    its ``verify`` (requests merges the environment over the session's settings), so a
    configured ``export_ca_bundle`` would silently lose to an unrelated variable. Passing
    ``verify`` with each request keeps the session's choice; with ``verify=True`` (the
    system's certificates) those variables still apply, as they do for any requests user.
    """

    def request(self, method, url, **kwargs):
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, **kwargs)


def target_session() -> TargetSession:
    """A Session for one target: kept-alive connections, and a failed connect retried.

    Only connecting is retried (twice, 0.5 s then 1 s apart): a request that never left
    is safe to send again, while a failed or timed-out reply is the caller's to judge.
    """
    session = TargetSession()
    retry = Retry(total=2, connect=2, read=0, status=0, other=0, redirect=0,
                  backoff_factor=0.5, allowed_methods=None, raise_on_status=False)
    # One exporter thread talks to one host, one request at a time.
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class ImportClient:
    """One target's /import endpoint: a requests.Session with keep-alive, auth and timeouts.

    ``timeout`` is (connect, read) in seconds; ``verify`` is True, False, or the path of
    a CA bundle that the target's TLS certificate is checked against.
    """

    def __init__(self, import_url: str, user: str, password: str, *,
                 timeout: tuple[float, float] = DEFAULT_TIMEOUT, verify: bool | str = True,
                 origin_server: uuid.UUID | None = None, session: requests.Session | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE,
                 upload_retry_seconds: float = defaults.UPLOAD_RETRY_SECONDS):
        self.import_url = import_url.rstrip("/")
        self.chunk_size = chunk_size
        self.upload_retry_seconds = upload_retry_seconds
        self.capabilities: dict | None = None
        self._resumable: ResumableUploader | None = None
        self.timeout = timeout
        self.session = session or target_session()
        self.session.auth = (user, password)
        self.session.verify = verify
        if origin_server is not None:
            # Lets the target note where records came from, so it never sends them back.
            self.session.headers[ORIGIN_HEADER] = origin_server.hex
        self.requests_sent = 0

    def describe(self) -> dict | None:
        """The target's discovery document, or None for a legacy server (which has none).

        If the target accepts resumable uploads, files are sent that way from then on.
        """
        self.requests_sent += 1
        try:
            response = self.session.get(self.import_url, timeout=self.timeout)
        except requests.RequestException as error:
            raise TargetError(f"{self.import_url}: {error}") from error
        if response.status_code in (404, 405):
            self.capabilities, self._resumable = None, None
            return None
        if response.status_code != 200:
            raise TargetError(f"{self.import_url} answered {response.status_code}: {_describe(response)}",
                              response.status_code)
        self.capabilities = _reply(response)
        resumable = ((self.capabilities or {}).get("uploads") or {}).get("resumable")
        if isinstance(resumable, dict) and resumable.get("version") == 1:
            self._resumable = ResumableUploader(
                self.session, self.import_url, chunk_size=self.chunk_size,
                max_chunk_bytes=resumable.get("max_chunk_bytes"), timeout=self.timeout,
                retry_delay=self.upload_retry_seconds)
        return self.capabilities

    @property
    def uses_resumable_uploads(self) -> bool:
        return self._resumable is not None

    def upload_file(self, record: FileRecord, md5: str, source: BinaryIO,
                    progress: Progress | None = None) -> tuple[_Answer, int]:
        """Send one file's bytes, resumably if the target can take them so, else whole.

        Returns the answer to go on from (as after a legacy upload) and the bytes sent.
        """
        if self._resumable is None:
            response, size = self.upload(record.file_id, md5, source,
                                         record.file_name or record.file_id.hex)
            if progress and response.status_code == 200:
                progress(size)
            return _Answer.of(response), size
        try:
            outcome = self._resumable.upload(record.file_id, md5, source, progress)
        except UploadRefused as refusal:  # this file, not the target: reject the entity
            return _Answer(400, None, str(refusal)), 0
        except (UploadFailed, requests.RequestException) as error:
            raise TargetError(f"uploading file {record.file_id.hex}: {error}") from error
        finally:
            self.requests_sent += self._resumable.requests_sent
            self._resumable.requests_sent = 0
        # Like a legacy upload, the import goes on either way; bytes that did not match
        # their md5 show up as another need_file_data (or, repeatedly, as failed).
        return _Answer(200, {"state": CONTINUE}), outcome.bytes_sent

    def __enter__(self) -> ImportClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def _post(self, url: str, **kwargs) -> requests.Response:
        self.requests_sent += 1
        try:
            response = self.session.post(url, timeout=self.timeout, **kwargs)
        except requests.RequestException as error:
            raise TargetError(f"{url}: {error}") from error
        # 429: the authentication throttle refused to check the password; it heals by
        # itself, as a 5xx does (the run backs off), and is no refusal of the entity.
        if response.status_code in (401, 403, 429) or response.status_code >= 500:
            raise TargetError(f"{url} answered {response.status_code}: {_describe(response)}",
                              response.status_code)
        return response

    def send(self, document: dict) -> requests.Response:
        return self._post(self.import_url, json=document)

    def send_batch(self, operation: str, document: dict) -> requests.Response:
        """POST a protocol v2 request to ``/import/batch/<operation>``."""
        return self._post(f"{self.import_url}/batch/{operation}", json=document)

    def speaks_batches(self) -> bool:
        """Whether the target announced protocol v2 (after :meth:`describe`)."""
        return PROTOCOL_BATCH in ((self.capabilities or {}).get("protocols") or [])

    def upload(self, file_id: uuid.UUID, md5: str, source: BinaryIO, file_name: str) -> tuple[requests.Response, int]:
        body = MultipartFileBody("file", file_name, source)
        response = self._post(f"{self.import_url}/data/{file_id.hex}/{md5}", data=body,
                              headers={"Content-Type": body.content_type})
        return response, body.file_size


@dataclass(frozen=True)
class _Answer:
    """What one exchange with the target came to: HTTP status, reply object, description."""

    status: int
    reply: dict | None
    description: str = ""

    @classmethod
    def of(cls, response: requests.Response) -> _Answer:
        return cls(response.status_code, _reply(response),
                   "" if response.status_code == 200 else _describe(response))


def _describe(response: requests.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body)
    except ValueError:
        return response.text[:200] or response.reason


def _reply(response: requests.Response) -> dict | None:
    """The reply object of a 200 answer, or None if the body is not one."""
    try:
        reply = response.json()
    except ValueError:
        return None
    return reply if isinstance(reply, dict) else None


def export_entity(client: ImportClient, entity: Event | FileRecord | CameraStatus,
                  source: EntitySource, max_round_trips: int | None = None,
                  progress: Progress | None = None) -> ExportResult:
    """Send ``entity`` and follow the target's replies until it is complete or fails.

    ``progress`` is called with the number of file bytes the target confirmed, as they are
    confirmed, so a progress bar moves during a large file too.
    """
    exchange = _Exchange(client, entity, source, progress)
    # Each file costs an upload and a resend, plus a status and a resend: anything beyond
    # that (and some slack for cache misses) means the target is going round in circles.
    limit = max_round_trips or 2 * len(exchange.files) + 12
    document: dict | None = exchange.full
    answer: _Answer | None = None
    while exchange.result.round_trips < limit:
        if document is not None:
            answer = exchange.send(document)
        document = None
        if answer.status != 200:
            return exchange.rejected(answer)
        step = exchange.follow(answer.reply)
        if step is None:
            return exchange.result
        if isinstance(step, _Answer):
            answer = step  # the upload's own reply ('continue') decides what comes next
        else:
            document = step
    return exchange.stuck(f"no outcome after {exchange.result.round_trips} round trips")


class _Exchange:
    """The state of one entity's handshake: its files, the uploads so far, the result.

    :meth:`follow` turns one reply into the next step; export_entity drives the loop and
    keeps the round-trip limit.
    """

    def __init__(self, client: ImportClient, entity: Event | FileRecord | CameraStatus,
                 source: EntitySource, progress: Progress | None):
        self.client, self.entity, self.source, self.progress = client, entity, source, progress
        self.files = {record.file_id: record for record in files_of(entity)}
        self.uploads: dict[uuid.UUID, int] = {}
        self.result = ExportResult("unexpected")
        self.full = {"type": entity.ENTITY_TYPE, entity.ENTITY_TYPE: entity.to_dict()}

    def send(self, document: dict) -> _Answer:
        answer = _Answer.of(self.client.send(document))
        self.result.round_trips += 1
        return answer

    def follow(self, reply: dict | None) -> dict | _Answer | None:
        """The next step after ``reply``: a document to send, the answer of an upload
        (to follow in turn), or None once :attr:`result` is final."""
        state = reply.get("state") if reply else None
        if state == COMPLETE:
            self.result.state = COMPLETE
            return None
        if state == FAILED:
            self._end(FAILED, str(reply.get("message", "")))
            return None
        if state == CONTINUE:
            return {"type": CACHED_ENTITY, "cached_entity_id": self.entity.id.hex}
        if state == CONTINUE_NOCACHE:
            return self.full
        if state == NEED_STATUS:
            return self._status_document(reply.get("status_id"))
        if state == NEED_FILE_DATA:
            return self._upload(reply.get("file_id"))
        self.result.message = f"unexpected reply {reply!r:.200}"
        return None

    def rejected(self, answer: _Answer) -> ExportResult:
        self._end("rejected", f"{answer.status}: {answer.description}")
        self.result.status_code = answer.status
        return self.result

    def stuck(self, message: str) -> ExportResult:
        self._end("stuck", message)
        return self.result

    def _end(self, state: str, message: str) -> None:
        self.result.state, self.result.message = state, message

    def _status_document(self, status_id) -> dict | None:
        status = _lookup_status(self.source, status_id)
        if status is None:
            self._end(FAILED, f"the target asked for status {status_id!r}, which this node "
                              "does not have")
            return None
        return {"type": "status", "status": status.to_dict()}

    def _upload(self, file_id) -> _Answer | None:
        record = _lookup_file(self.files, file_id)
        if record is None:
            self._end("stuck", f"the target asked for file {file_id!r}, which is not part of "
                               "this entity")
            return None
        if self.uploads.get(record.file_id, 0) >= MAX_UPLOADS_PER_FILE:
            self._end("stuck", f"the target asked for file {record.file_id.hex} again after "
                               f"{MAX_UPLOADS_PER_FILE} uploads of it")
            return None
        self.uploads[record.file_id] = self.uploads.get(record.file_id, 0) + 1
        stream = self.source.open_file(record)
        if stream is None:
            self._end(FAILED, f"the bytes of file {record.file_id.hex} are missing on this node")
            return None
        with stream:
            md5 = record.md5 or md5_file(stream.name)
            answer, size = self.client.upload_file(record, md5, stream, self.progress)
        self.result.round_trips += 1
        self.result.files_uploaded += 1
        self.result.bytes_uploaded += size
        return answer


def _lookup_status(source: EntitySource, status_id) -> CameraStatus | None:
    try:
        return source.status(uuid.UUID(hex=str(status_id)))
    except ValueError:
        return None


def _lookup_file(files: dict[uuid.UUID, FileRecord], file_id) -> FileRecord | None:
    try:
        return files.get(uuid.UUID(hex=str(file_id)))
    except ValueError:
        return None
