"""Property-based fuzzing of a running server from its OpenAPI document (schemathesis).

Every operation of /openapi.json gets generated requests, valid ones (positive) and
invalid ones (negative), sent over a real socket, once with the credentials of a user
holding every role and once with none. Each reply must be no 5xx and conform to the
document: a status code it lists, its content type, its body's schema, its required
headers. The server holds a few records (a status, an event with files, a stand-alone
file) so that reads and the change feed answer with real bodies too.

Runs are repeatable: hypothesis is derandomized, so CI sends the same requests each time.
The figures (operations, cases, failures) are printed (pytest -s, or -rA).
"""
from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter

import hypothesis
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.failures import FailureGroup

import factories
from local_records import backend, store_locally

pytestmark = pytest.mark.slow

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, response_headers_conformance]
# Examples per operation and generation mode. With credentials on SQLite the most; on
# PostgreSQL fewer (the same server, another database); without credentials a few (most
# operations refuse them before reading the request). The whole test takes about a minute
# on two cores; METEORPI_FUZZ_FACTOR=10 fuzzes ten times as long.
FACTOR = int(os.environ.get("METEORPI_FUZZ_FACTOR", "1"))
EXAMPLES = {("sqlite", "every_role"): 12, ("postgresql", "every_role"): 8,
            ("sqlite", "none"): 4, ("postgresql", "none"): 4}
# A reply of these holds the connection for feed_stream_seconds (one second here).
STREAMS = {"/changes/stream", "/status/stream"}
STREAM_EXAMPLES = 3
ROLES = ("user", "camera_admin", "import")


# The resumable chunks' and the file bundles' media types carry raw bytes.
@schemathesis.serializer("application/offset+octet-stream", "application/vnd.meteorpi.file-bundle")
def _raw_bytes(context, value):
    if isinstance(value, bytes):
        return {"data": value}
    return {"data": value.encode("utf-8") if isinstance(value, str) else repr(value).encode()}


@pytest.fixture
def fuzz_settings(settings):
    """Short waits, so a long poll or a stream costs a second at most, and no throttle:
    the login form's random passwords would otherwise lock the fuzzer's address out."""
    settings.update(feed_max_wait_seconds=1, feed_stream_seconds=1, feed_heartbeat_seconds=1,
                    upload_read_timeout_seconds=2, auth_failures_per_address=1_000_000,
                    auth_failures_per_user=1_000_000, log_level="warning")
    return settings


@pytest.fixture
def records(fuzz_settings, services) -> dict:
    """A camera's status, an event with two files and a stand-alone file (with its bytes);
    returns path parameters that name them."""
    owner = factories.status("cam-1")
    files = [factories.file_record(owner, factories.file_bytes(100, seed)) for seed in (1, 2)]
    data = factories.file_bytes(50, 3)
    alone = factories.file_record(owner, data, time_ms=factories.NIGHT + 9000)
    store_locally(services.database, owner, factories.event(owner, files), alone)
    path = services.files.path_for(alone.file_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {"camera_id": owner.camera_id, "time_ms": str(factories.NIGHT + 5000),
            "file_id": alone.file_id.hex, "md5": alone.md5, "file_name": "named.png",
            "name": "fuzz-export",
            # The legacy searches' path: random text is seldom JSON, so this finds records.
            "search_json": json.dumps({"camera_ids": ["cam-1"], "limit": 5, "skip": 0})}


EXPORT = {"type": "event", "name": "fuzz-export", "target_url": "http://127.0.0.1:9/import",
          "user_id": "node", "password": "secret", "search": {"limit": 10}}


def _run_operation(operation, checked, mode, url, auth, examples, figures, failures,
                   path_parameters=None):
    """Fuzz ``operation`` (of the document made cheaper to generate from) and check each
    reply against ``checked``, the same operation in the document as served."""
    session = requests.Session()

    @hypothesis.settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                         suppress_health_check=list(HealthCheck),
                         phases=[Phase.explicit, Phase.generate])
    @hypothesis.given(case=operation.as_strategy(mode, path_parameters=path_parameters))
    def fuzz(case):
        response = case.call(base_url=url, session=session, auth=auth, timeout=30)
        figures["cases"] += 1
        figures[f"status {response.status_code}"] += 1
        try:
            checked.Case(method=case.method, path_parameters=case.path_parameters,
                         headers=case.headers, query=case.query, body=case.body,
                         media_type=case.media_type).validate_response(response, checks=CHECKS)
        except (FailureGroup, AssertionError) as error:  # failed checks: keep the first
            key = (operation.label, mode.value + (" (existing)" if path_parameters else ""))
            failures.setdefault(key, f"{error}\n    {case.as_curl_command()}")

    try:
        fuzz()
    except hypothesis.errors.Unsatisfiable:
        # No invalid request exists for an operation without parameters or body.
        assert mode is GenerationMode.NEGATIVE, operation.label
        figures["operations without negative cases"] += 1
    finally:
        session.close()


def _cheaper_to_generate(document: dict) -> dict:
    """The served document with short arrays where it nests them deep (a status's regions
    of points, a batch of statuses or events with files and meta): drawing hundreds of
    points per case made a case cost a second. Only the lengths change, and only for
    generating requests: replies are checked against the document as served."""
    schemas = document["components"]["schemas"]
    regions = schemas["CameraStatus"]["properties"]["regions"]
    regions["maxItems"], regions["items"]["maxItems"] = 2, 4
    for name, field in (("Event", "files"), ("Event", "meta"), ("FileRecord", "meta")):
        schemas[name]["properties"][field]["maxItems"] = 3
    schemas["BatchPlanRequest"]["properties"]["entities"]["maxItems"] = 4
    for path in ("/import/batch/statuses", "/import/batch/records"):
        body = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        for entries in body["schema"]["properties"].values():
            entries["maxItems"] = 3
    return document


@pytest.mark.parametrize("credentials", ["every_role", "none"])
def test_every_operation_conforms_to_the_document(fuzz_settings, records, live_server,
                                                  make_user, database_url, credentials):
    auth = make_user("fuzzer", *ROLES) if credentials == "every_role" else None
    document = requests.get(f"{live_server}/openapi.json", timeout=10).json()
    served = schemathesis.openapi.from_dict(copy.deepcopy(document))
    schema = schemathesis.openapi.from_dict(_cheaper_to_generate(document))
    # Credentials are the test's (or none): random ones would only be refused.
    schema.config.generation.update(with_security_parameters=False)
    figures, failures, timings = Counter(), {}, {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        checked = served[operation.path][operation.method.upper()]
        examples = FACTOR * (STREAM_EXAMPLES if operation.path in STREAMS
                             else EXAMPLES[backend(database_url), credentials])
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            began = time.monotonic()
            _run_operation(operation, checked, mode, live_server, auth, examples, figures,
                           failures)
            timings[f"{operation.label} {mode.value}"] = time.monotonic() - began
        # Random path parameters name nothing (404s, which must conform too); these name
        # the records above and an export configuration, so the replies about them are
        # fuzzed as well: their queries, headers and bodies are generated.
        names = {parameter.name for parameter in operation.path_parameters}
        if names and names <= set(records):
            if auth is not None:  # put the export back (a DELETE may have removed it)
                requests.post(f"{live_server}/exports", json=EXPORT, auth=auth, timeout=10)
            _run_operation(operation, checked, GenerationMode.POSITIVE, live_server, auth,
                           examples, figures, failures, {name: records[name] for name in names})
    elapsed = time.monotonic() - started
    print(f"\nschemathesis ({backend(database_url)}, {credentials}): {len(operations)} operations, "
          f"{figures['cases']} cases in {elapsed:.1f} s, {len(failures)} failing; replies: "
          + ", ".join(f"{key} x{count}" for key, count in sorted(figures.items())
                      if key != "cases"))
    slowest = sorted(timings.items(), key=lambda item: -item[1])[:8]
    print("slowest: " + ", ".join(f"{label} {seconds:.1f} s" for label, seconds in slowest))
    assert len(operations) >= 40
    assert not failures, "\n\n".join(f"{label} ({mode}): {message}"
                                     for (label, mode), message in failures.items())
