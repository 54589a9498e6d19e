"""The exporter checks a target's TLS certificate against export_ca_bundle, whatever the
environment says (REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE must not override it)."""
from __future__ import annotations

import datetime
import ssl
import uuid

import pytest
import trustme
from conftest import PASSWORD
from export_nodes import (  # noqa: F401
    EXPORT_USER,
    extra_postgres_databases,
    make_node,
    node_database,
    record_ids,
)

from meteorpi_model import EventSearch, ExportConfiguration
from meteorpi_server.exporter import configs, report
from meteorpi_server.exporter.handshake import target_session
from meteorpi_server.node.demo import DemoPlan, generate

NIGHT = DemoPlan(cameras=1, nights=1, events_per_night=2, files_per_event=1, standalone_files=0,
                 file_size=500, first_night=datetime.date(2026, 11, 1))


@pytest.fixture
def target_ca():
    return trustme.CA()


@pytest.fixture
def ca_bundles(tmp_path, target_ca):
    """The CA that signed the target's certificate, and an unrelated one, as PEM files."""
    right, wrong = tmp_path / "target-ca.pem", tmp_path / "other-ca.pem"
    target_ca.cert_pem.write_to_path(str(right))
    trustme.CA().cert_pem.write_to_path(str(wrong))
    return str(right), str(wrong)


@pytest.fixture
def tls_target(make_node, target_ca):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    target_ca.issue_cert("127.0.0.1").configure_cert(context)
    return make_node("central", 0).serve(ssl_context=context)


@pytest.mark.parametrize("variable", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_the_configured_ca_bundle_wins_over_the_environment(make_node, tls_target, ca_bundles,
                                                            monkeypatch, variable):
    right, wrong = ca_bundles
    source = make_node("source")
    generate(source.recorder, NIGHT)
    with source.services.database.write() as session:
        configs.add(session, ExportConfiguration(
            config_id=uuid.uuid4(), name="central", target_url=tls_target.import_url,
            user_id=EXPORT_USER, password=PASSWORD, search=EventSearch()))
    monkeypatch.setenv(variable, wrong)  # say, set system-wide for another program

    summary = source.exporter(ca_bundle=right).run_once().targets["central"]

    assert (summary.target_failures, summary.last_error) == (0, None)
    assert summary.entities_sent == NIGHT.events_per_night
    assert summary.files_uploaded == NIGHT.events_per_night * NIGHT.files_per_event
    assert record_ids(tls_target)["events"] == record_ids(source)["events"]
    with source.services.database.read() as session:
        assert report.gather(session, "central")[0].done == NIGHT.events_per_night


def test_a_target_session_keeps_its_ca_bundle_against_the_environment(tls_target, ca_bundles,
                                                                       monkeypatch):
    # The batch sender's upload threads each make a session like this one.
    right, wrong = ca_bundles
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", wrong)
    with target_session() as session:
        session.verify = right
        session.auth = (EXPORT_USER, PASSWORD)
        assert session.get(tls_target.import_url, timeout=5).status_code == 200


def test_without_a_configured_bundle_the_environment_still_applies(tls_target, ca_bundles,
                                                                    monkeypatch):
    right, _ = ca_bundles
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", right)
    with target_session() as session:
        session.auth = (EXPORT_USER, PASSWORD)
        assert session.get(tls_target.import_url, timeout=5).status_code == 200


def test_a_certificate_that_does_not_verify_disables_the_configuration_with_advice(
        make_node, tls_target, ca_bundles):
    _, wrong = ca_bundles
    source = make_node("source")
    with source.services.database.write() as session:
        configs.add(session, ExportConfiguration(
            config_id=uuid.uuid4(), name="central", target_url=tls_target.import_url,
            user_id=EXPORT_USER, password=PASSWORD, search=EventSearch()))
    exporter = source.exporter(ca_bundle=wrong, max_failures=2)
    for _ in range(2):
        with source.services.database.write() as session:
            configs.get_row(session, "central").next_attempt_at = 0
        exporter.run_once()
    with source.services.database.read() as session:
        view = report.gather(session, "central")[0].view
    assert not view.configuration.enabled
    assert "TLS certificate is not trusted: see export_ca_bundle" in view.disabled_reason
