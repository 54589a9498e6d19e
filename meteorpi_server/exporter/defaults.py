"""The exporter's defaults, taken from config.py's SETTINGS table rather than repeated.

A node's exporter is built from its Config (:meth:`ExporterSettings.from_config`); these
are for code that makes a client, uploader or sender without one (tests, benchmarks,
scripts), so that both agree with ``meteorpi config`` without a second copy to keep in step.
"""
from __future__ import annotations

from ..config import default

#: (connect, read) time-outs in seconds: export_connect_timeout_seconds, export_timeout_seconds.
TIMEOUT: tuple[float, float] = (default("export_connect_timeout_seconds"),
                                default("export_timeout_seconds"))
#: Chunk size of resumable uploads: export_chunk_bytes.
CHUNK_BYTES: int = default("export_chunk_bytes")
#: Uploads sent at once to a protocol v2 target: export_concurrency.
CONCURRENCY: int = default("export_concurrency")
#: Runner settings: export_interval_seconds, export_max_failures, export_backoff_seconds,
#: export_backoff_max_seconds.
INTERVAL_SECONDS: float = default("export_interval_seconds")
MAX_FAILURES: int = default("export_max_failures")
BACKOFF_SECONDS: float = default("export_backoff_seconds")
BACKOFF_MAX_SECONDS: float = default("export_backoff_max_seconds")
CA_BUNDLE: str = default("export_ca_bundle")
#: First pause before a failed upload request is retried: export_upload_retry_seconds.
UPLOAD_RETRY_SECONDS: float = default("export_upload_retry_seconds")

# What a target does by default, which the exporter's patience is fitted to (a target
# configured otherwise still works: these only decide how long the exporter waits).
#: A target answers 'failed' after this many bad uploads of a file (upload_attempts).
TARGET_UPLOAD_ATTEMPTS: int = default("upload_attempts")
#: A target ends an upload whose sender went silent this long (upload_read_timeout_seconds).
TARGET_UPLOAD_READ_TIMEOUT: float = default("upload_read_timeout_seconds")
