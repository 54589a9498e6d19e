"""The server's Prometheus metrics, and the text a scrape of ``GET /metrics`` returns.

Counters and histograms live in each process (summed over gunicorn's workers in
multiprocess mode, see :mod:`.multiprocess`); the export gauges are read from the
database at each scrape, so they are right whichever process runs the exporter.

Label values are always from a small fixed set (a route *template*, a reply state, a
kind), never a path, a user or an id, so the number of series stays bounded.
"""
from __future__ import annotations

from typing import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import multiprocess as multiprocess_mode

HTTP_REQUESTS = Counter(
    "meteorpi_http_requests_total",
    "HTTP requests answered, by route template (unmatched: no route), method and status.",
    ["route", "method", "status"])
HTTP_REQUEST_SECONDS = Histogram(
    "meteorpi_http_request_duration_seconds",
    "Time from a request's arrival until its response was sent in full (streams included).",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
IMPORT_RESULTS = Counter(
    "meteorpi_import_results_total",
    "Import replies and batch results, by protocol, request (entity, file_data, plan, "
    "statuses, records, files) and state.",
    ["protocol", "request", "state"])
RECEIVED_BYTES = Counter(
    "meteorpi_received_bytes_total",
    "File bytes received, by kind (legacy_upload, resumable_chunk, bundle).", ["kind"])
FILES_STORED = Counter(
    "meteorpi_files_stored_total",
    "Files whose bytes were received whole and verified, by how they came "
    "(legacy_upload, resumable, bundle).", ["kind"])
MD5_MISMATCHES = Counter(
    "meteorpi_md5_mismatches_total",
    "Uploads discarded because their bytes did not have the record's md5, by kind.", ["kind"])
RESUMABLE_UPLOADS = Counter(
    "meteorpi_resumable_uploads_total",
    "Resumable uploads by event: started (first bytes held), completed (verified and "
    "stored), failed (discarded: not the record's md5), expired (removed after "
    "upload_expiry_seconds without activity).", ["event"])
BATCH_ENTITIES = Histogram(
    "meteorpi_batch_entities",
    "Entries per batch request (protocol v2), by request.", ["request"],
    buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000))
AUTH_FAILURES = Counter(
    "meteorpi_auth_failures_total",
    "Requests refused by authentication: unauthorized (no or wrong credentials, 401), "
    "forbidden (a user without the route's role, 403), login (failed status page logins) "
    "and throttled (refused unchecked, 429: too many failures from the address or for the "
    "name).",
    ["reason"])
OPEN_CONNECTIONS = Gauge(
    "meteorpi_open_feed_connections",
    "Change-feed requests open now: long_poll (GET /changes waiting) or stream "
    "(GET /changes/stream and the status page's stream).",
    ["kind"], multiprocess_mode="livesum")
CONNECTIONS_CUT = Counter(
    "meteorpi_connections_cut_total",
    "Connections `meteorpi serve` closed before their request reached the app, by reason: "
    "head_timeout (head not all in within header_timeout_seconds), body_timeout (a small "
    "body silent for body_read_timeout_seconds), head_too_large (431).", ["reason"])


# Any other method (a client may send anything) is counted as "other": one series each.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    """Count one answered HTTP request (called once its response is closed)."""
    method = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(route, method, str(status)).inc()
    HTTP_REQUEST_SECONDS.labels(route, method).observe(seconds)


#: The states of ``exporter.report.replication_status``.
EXPORT_STATES = ("idle", "running", "backing_off", "disabled")


class ExportCollector(Collector):
    """Per export configuration gauges, read from the database at each scrape."""

    def __init__(self, database):
        self.database = database

    def collect(self) -> Iterable:
        from ..exporter import report
        from ..storage.store import now_ms

        now = now_ms()
        with self.database.read() as session:
            statuses = report.replication_status(session, now)
        state = GaugeMetricFamily(
            "meteorpi_export_state",
            "1 for the state each export configuration is in (idle, running, backing_off, "
            "disabled), 0 for the others.", labels=["config", "state"])
        backlog = GaugeMetricFamily(
            "meteorpi_export_backlog", "Entities waiting to be sent, by export configuration "
            "and task state (pending, failed).", labels=["config", "task_state"])
        failures = GaugeMetricFamily(
            "meteorpi_export_consecutive_failures",
            "Failures in a row of each export configuration's target.", labels=["config"])
        last_success = GaugeMetricFamily(
            "meteorpi_export_last_success_timestamp_seconds",
            "When each export configuration last sent successfully (Unix time; 0: never).",
            labels=["config"])
        sent = {kind: CounterMetricFamily(
            f"meteorpi_export_sent_{kind}", f"{text} sent by each export configuration.",
            labels=["config"])
            for kind, text in (("entities", "Entities"), ("files", "Files"),
                               ("bytes", "File bytes"))}
        for status in statuses:
            name = status["name"]
            for each in EXPORT_STATES:
                state.add_metric([name, each], 1 if status["state"] == each else 0)
            backlog.add_metric([name, "pending"], status["backlog"]["pending"])
            backlog.add_metric([name, "failed"], status["backlog"]["failed"])
            failures.add_metric([name], status["consecutive_failures"])
            last_success.add_metric([name], (status["last_success_at_ms"] or 0) / 1000)
            for kind, family in sent.items():
                family.add_metric([name], status["sent"][kind])
        yield from (state, backlog, failures, last_success, *sent.values())


class _ThisProcess(Collector):
    """The default registry's metrics (when not in multiprocess mode)."""

    def collect(self) -> Iterable:
        return REGISTRY.collect()


def scrape(database) -> tuple[bytes, str]:
    """The body and content type of a scrape: every worker's metrics summed (or this
    process's alone outside ``meteorpi serve``), and the export gauges."""
    registry = CollectorRegistry(auto_describe=True)
    directory = multiprocess_mode.directory()
    if directory is not None:
        multiprocess.MultiProcessCollector(registry, path=str(directory))
    else:
        registry.register(_ThisProcess())
    registry.register(ExportCollector(database))
    return generate_latest(registry), CONTENT_TYPE_LATEST
