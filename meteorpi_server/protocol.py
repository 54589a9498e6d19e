"""The replication protocol's wire vocabulary, shared by the server and the exporter.

Every header name, media type, reply state and protocol name that crosses the wire is
spelled once, here, so the importer (meteorpi_server.imports, meteorpi_server.api) and
the exporter (meteorpi_server.exporter) cannot drift apart. The meaning of each is
documented in docs/protocol.rst (legacy-1, including resumable uploads) and
docs/batch.rst (batch-2).

This module holds constants only and imports nothing from the rest of the package, so
any module (and any third-party receiver or client) may import it.
"""

# Protocol names, as announced in the discovery document's "protocols" list ----------------

#: The legacy handshake: one entity per exchange, driven by the server's replies.
PROTOCOL_LEGACY = "legacy-1"
#: Protocol v2: batches of entities (plan, statuses, files, records).
PROTOCOL_BATCH = "batch-2"

# Headers --------------------------------------------------------------------------------

#: The sending server's id (32 hex digits), so the receiver never sends its records back.
ORIGIN_HEADER = "Meteorpi-Origin"
#: Resumable uploads: where a chunk starts, how long the whole file is, and a checksum
#: of the chunk ("<algorithm> <base64 digest>").
UPLOAD_OFFSET_HEADER = "Upload-Offset"
UPLOAD_LENGTH_HEADER = "Upload-Length"
UPLOAD_CHECKSUM_HEADER = "Upload-Checksum"

# Media types ----------------------------------------------------------------------------

JSON_MEDIA_TYPE = "application/json"
#: A chunk of a resumable upload (the body of a PATCH).
RESUMABLE_MEDIA_TYPE = "application/offset+octet-stream"
#: A file bundle: many small files' bytes in one protocol v2 request.
BUNDLE_MEDIA_TYPE = "application/vnd.meteorpi.file-bundle"

# Legacy handshake: request types and reply states ----------------------------------------

#: A request that names an entity the server saw in this exchange instead of resending it.
CACHED_ENTITY = "cached_entity"

#: The server holds the entity: done.
COMPLETE = "complete"
#: Go on by sending a ``cached_entity`` request for the same entity.
CONTINUE = "continue"
#: Go on by sending the whole entity again (the server did not cache it).
CONTINUE_NOCACHE = "continue-nocache"
#: Send the camera status named by the reply's ``status_id``.
NEED_STATUS = "need_status"
#: Upload the bytes of the file named by the reply's ``file_id``.
NEED_FILE_DATA = "need_file_data"
#: The server will not take the entity; the reply's ``message`` says why. Error replies
#: under /import carry this state too, for exporters that read only the state.
FAILED = "failed"

LEGACY_REPLY_STATES = frozenset({COMPLETE, CONTINUE, CONTINUE_NOCACHE, NEED_STATUS,
                                 NEED_FILE_DATA, FAILED})

# Protocol v2 (batch-2): result states ------------------------------------------------------

#: Plan, statuses, files: the server holds it.
STORED = "stored"
#: Plan: the server lacks the entity (it says what to send in need_statuses/need_files).
MISSING = "missing"
#: Any operation: this one entry is refused as invalid (its ``message`` and ``field`` say why).
INVALID = "invalid"
#: Files: the bytes did not match their md5 (the server discarded them).
MD5_MISMATCH = "md5_mismatch"
#: Files: the file is larger than the server takes (also an error code of 413 replies).
TOO_LARGE = "too_large"

#: The states a plan reply gives an entity.
PLAN_STATES = frozenset({STORED, MISSING, INVALID})
#: The states a records reply gives an entity (the legacy states it shares mean the same).
RECORD_STATES = frozenset({COMPLETE, NEED_STATUS, NEED_FILE_DATA, FAILED, INVALID})

# Resumable uploads: error codes of non-2xx replies ---------------------------------------

#: 400: the request is not a usable chunk (headers missing or malformed).
BAD_UPLOAD = "bad_upload"
#: 409: the chunk does not start at the server's offset (the reply gives the offset).
OFFSET_MISMATCH = "offset_mismatch"
#: 409: another request is still sending to this upload.
UPLOAD_BUSY = "upload_busy"
#: 409: the upload under way claims another length than this request.
LENGTH_MISMATCH = "length_mismatch"
#: 422: the chunk's Upload-Checksum does not match its bytes.
CHECKSUM_MISMATCH = "checksum_mismatch"
# 422 md5_mismatch and 413 too_large: MD5_MISMATCH and TOO_LARGE above.
