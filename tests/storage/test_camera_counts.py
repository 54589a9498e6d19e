"""Each camera's numbers of events and files, as GET /cameras shows them, stay right
however records arrive: one at a time, in batches, twice, or rolled back."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import factories
import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from local_records import store_locally
from protocol import ProtocolClient
from sqlalchemy import func, select

from meteorpi_server.exporter.batch import BatchSender
from meteorpi_server.exporter.handshake import ImportClient
from meteorpi_server.reading import cameras
from meteorpi_server.storage import store
from meteorpi_server.storage.db import MIGRATIONS_DIR
from meteorpi_server.storage.orm import CameraRow, EventRow, FileRecordRow


@pytest.fixture
def reader(make_user):
    return make_user("reader", "user")


def shown(client, auth) -> dict[str, tuple[int, int]]:
    """(events, files) of each camera, as GET /cameras and GET /cameras/<id> show them."""
    listed = client.get("/cameras", auth=auth).get_json()["cameras"]
    counts = {camera["camera_id"]: (camera["event_count"], camera["file_count"])
              for camera in listed}
    for camera_id, expected in counts.items():
        one = client.get(f"/cameras/{camera_id}", auth=auth).get_json()["camera"]
        assert (one["event_count"], one["file_count"]) == expected
    return counts


def stored(services) -> dict[str, tuple[int, int]]:
    """(events, files) of each camera, counted from the records themselves."""
    with services.database.read() as session:
        events = dict(session.execute(select(EventRow.camera_id, func.count())
                                      .group_by(EventRow.camera_id)).all())
        files = dict(session.execute(select(FileRecordRow.camera_id, func.count())
                                     .group_by(FileRecordRow.camera_id)).all())
        camera_ids = session.scalars(select(CameraRow.camera_id))
        return {camera_id: (events.get(camera_id, 0), files.get(camera_id, 0))
                for camera_id in camera_ids}


def test_imports_one_at_a_time_are_counted_once_each(client, exporter_auth, reader, services,
                                                     tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    north, south = factories.status("north"), factories.status("south")
    entities = [dataset.add_event(north, file_count=3), dataset.add_event(north, file_count=0),
                dataset.add_file(north), dataset.add_file(south)]
    node = ProtocolClient(client, exporter_auth)
    for _ in range(2):  # sent twice, stored once
        for entity in entities:
            assert node.replicate(entity, dataset.statuses, dataset.contents)[-1] == "complete"

    assert shown(client, reader) == {"north": (2, 4), "south": (0, 1)} == stored(services)


def test_an_events_files_count_for_the_camera_they_name(client, reader, services):
    north, south = factories.status("north"), factories.status("south")
    event = factories.event(north, [factories.file_record(north, b"n"),
                                    factories.file_record(south, b"s")])
    store_locally(services.database, north, south, event)
    assert shown(client, reader) == {"north": (1, 1), "south": (0, 1)} == stored(services)


def test_records_rolled_back_are_not_counted(client, reader, services):
    status = factories.status("cam")
    kept, dropped = factories.event(status, []), factories.event(status, [])
    with services.database.write() as session:
        store.insert_status(session, status)
        try:
            with session.begin_nested():
                store.insert_event(session, dropped)
                raise RuntimeError("this record turns out to be unwanted")
        except RuntimeError:
            pass
        with session.begin_nested():
            store.insert_event(session, kept)
    try:
        with services.database.write() as session:
            store.insert_event(session, factories.event(status, []))
            raise RuntimeError("the whole transaction fails")
    except RuntimeError:
        pass
    assert shown(client, reader) == {"cam": (1, 0)} == stored(services)


def test_batched_imports_are_counted_once_each(live_server, exporter_auth, client, reader,
                                               services, tmp_path):
    dataset = factories.DataSet(tmp_path / "node")
    for camera_id in ("north", "south"):
        status = factories.status(camera_id)
        for index in range(5):
            dataset.add_event(status, file_count=2, time_ms=factories.NIGHT + index)
        dataset.add_file(status)
    with ImportClient(f"{live_server}/import", *exporter_auth) as node:
        node.describe()
        with BatchSender(node, dataset) as sender:
            for _ in range(2):  # the second send finds everything there
                results = sender.send(dataset.events + dataset.files)
                assert {result.state for result in results.values()} == {"complete"}

    assert shown(client, reader) == {"north": (5, 11), "south": (5, 11)} == stored(services)


def test_writers_storing_for_one_camera_at_once_are_all_counted(client, reader, services):
    status = factories.status("busy")
    other = factories.status("other")
    store_locally(services.database, status, other)

    def store_night(index: int) -> None:
        # Each writer's events also hold a file of the other camera, so writers lock
        # two camera rows each.
        store_locally(services.database, *[
            factories.event(status, [factories.file_record(other, b"x")],
                            time_ms=factories.NIGHT + index * 100 + number)
            for number in range(10)])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(store_night, range(4)))

    assert shown(client, reader) == {"busy": (40, 0), "other": (0, 40)} == stored(services)


def downgrade(database, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with database.engine.connect() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
        connection.commit()


def test_upgrading_counts_the_records_already_stored(services, client, reader):
    north, south = factories.status("north"), factories.status("south")
    store_locally(services.database, north, south,
                  factories.event(north, [factories.file_record(north, b"a")]),
                  factories.event(north, []), factories.file_record(south, b"b"))
    database = services.database
    database.dispose()
    downgrade(database, "0005")
    database.upgrade()
    assert shown(client, reader) == {"north": (2, 1), "south": (0, 1)} == stored(services)


def test_recount_repairs_counts_of_records_written_around_the_store(services, client, reader):
    status = factories.status("cam")
    store_locally(services.database, status, factories.event(status, []))
    with services.database.write() as session:
        session.execute(CameraRow.__table__.update().values(event_count=7, file_count=3))
        cameras.recount(session)
    assert shown(client, reader) == {"cam": (1, 0)}
