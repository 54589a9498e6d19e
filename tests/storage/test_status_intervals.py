"""A camera's statuses on a server: one in force at a time, with the node's intervals,
whatever order they arrive in and however many writers store them at once."""
from __future__ import annotations

import dataclasses
import itertools
import threading

import factories
import pytest

from meteorpi_server.storage import store
from meteorpi_server.storage.orm import CameraStatusRow

HOUR = 3_600_000
# How long one writer keeps its transaction open after storing a status, so that the
# other stores its own meanwhile. The assertions never depend on it being long enough.
OVERLAP_SECONDS = 0.5


def a_nodes_day(camera_id: str = "cam-1") -> list:
    """Four statuses as the node holds them: each ends where the next begins, except
    that the camera was off for an hour before the last one, which is in force."""
    start = factories.NIGHT
    statuses = [factories.status(camera_id, valid_from=start + index * HOUR) for index in range(4)]
    ends = [start + HOUR, start + 2 * HOUR, start + 2 * HOUR + HOUR // 2, None]
    return [dataclasses.replace(status, valid_to=end) for status, end in zip(statuses, ends)]


def intervals(services, camera_id: str = "cam-1") -> list[tuple[int, int | None]]:
    with services.database.read() as session:
        rows = session.query(CameraStatusRow).filter_by(camera_id=camera_id) \
            .order_by(CameraStatusRow.valid_from).all()
        return [(row.valid_from, row.valid_to) for row in rows]


def expected(statuses) -> list[tuple[int, int | None]]:
    return [(status.valid_from, status.valid_to) for status in statuses]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))),
                         ids=lambda order: "".join(map(str, order)))
def test_the_intervals_are_the_nodes_whatever_order_the_statuses_arrive_in(services, order):
    statuses = a_nodes_day()
    for index in order:
        with services.database.write() as session:
            store.insert_status(session, statuses[index], store.LOCAL)
    assert intervals(services) == expected(statuses)


OPEN_OR_CLOSED = [(order, open_ones) for order in itertools.permutations(range(3))
                  for open_ones in itertools.product((False, True), repeat=2)]


@pytest.mark.parametrize("order, sent_open", OPEN_OR_CLOSED, ids=lambda value: str(value))
def test_statuses_sent_some_while_in_force_some_later_get_the_nodes_intervals(
        services, order, sent_open):
    # A status goes out while in force (valid_to unknown) or after (valid_to known), as
    # the node's link allowed; the server ends up with the node's intervals either way.
    statuses = a_nodes_day()[:3]
    statuses[1] = dataclasses.replace(statuses[1], valid_to=statuses[2].valid_from)
    statuses[2] = dataclasses.replace(statuses[2], valid_to=None)
    for index in order:
        sent = statuses[index]
        if index < 2 and sent_open[index]:
            sent = dataclasses.replace(sent, valid_to=None)
        with services.database.write() as session:
            store.insert_status(session, sent, store.LOCAL)
    assert intervals(services) == expected(statuses)


def test_statuses_sent_while_in_force_end_where_the_next_begins(services):
    # A node that replicates at once sends each status while it is still open.
    statuses = a_nodes_day()
    for status in reversed(statuses):
        with services.database.write() as session:
            store.insert_status(session, dataclasses.replace(status, valid_to=None), store.LOCAL)
    starts = [status.valid_from for status in statuses]
    assert intervals(services) == list(zip(starts, starts[1:] + [None]))


def test_a_batch_of_statuses_in_any_order_gives_the_nodes_intervals(client, exporter_auth, services):
    statuses = a_nodes_day() + a_nodes_day("cam-2")
    shuffled = sorted(statuses, key=lambda status: status.status_id)
    response = client.post("/import/batch/statuses", auth=exporter_auth,
                           json={"statuses": [status.to_dict() for status in shuffled]})
    assert response.status_code == 200
    assert {result["state"] for result in response.get_json()["results"]} == {"stored"}
    assert intervals(services, "cam-1") == expected(statuses[:4])
    assert intervals(services, "cam-2") == expected(statuses[4:])


def test_two_writers_storing_a_cameras_new_statuses_at_once_leave_one_in_force(services):
    earlier = factories.status(valid_from=factories.NIGHT)
    later = factories.status(valid_from=factories.NIGHT + HOUR)
    stored_first, errors = threading.Event(), []

    def store_and_linger():
        try:
            with services.database.write() as session:
                store.insert_status(session, earlier, store.LOCAL)
                stored_first.set()
                threading.Event().wait(OVERLAP_SECONDS)  # the other writer stores meanwhile
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)
            stored_first.set()

    first = threading.Thread(target=store_and_linger)
    first.start()
    stored_first.wait(30)
    with services.database.write() as session:
        store.insert_status(session, later, store.LOCAL)
    first.join(30)
    assert not errors
    assert intervals(services) == [(earlier.valid_from, later.valid_from), (later.valid_from, None)]
