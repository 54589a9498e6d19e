"""Marking and task state: what becomes a task, in how many statements, and how a task's
and a target's state move."""
from __future__ import annotations

import datetime
import uuid

import factories
import pytest
from sqlalchemy import event, select

from meteorpi_model import EventSearch, ExportConfiguration, FileSearch
from meteorpi_server.exporter import configs, tasks
from meteorpi_server.exporter.marking import mark
from meteorpi_server.exporter.tasks import Backoff
from meteorpi_server.node.demo import DemoPlan, generate
from meteorpi_server.node.recording import Recorder
from meteorpi_server.storage import store
from meteorpi_server.storage.orm import ExportConfigRow, ExportTaskRow

PLAN = DemoPlan(cameras=2, nights=2, events_per_night=3, files_per_event=2, standalone_files=2,
                file_size=100, first_night=datetime.date(2026, 11, 1))
TARGET_ID = uuid.uuid4()


@pytest.fixture
def node(services):
    generate(Recorder(services.database, services.files), PLAN)
    return services


def add_config(services, name="central", search=None, target_server_id=None) -> uuid.UUID:
    configuration = ExportConfiguration(config_id=uuid.uuid4(), name=name,
                                        target_url="https://central.example.org/import",
                                        user_id="node", password="pw",
                                        search=search or EventSearch())
    with services.database.write() as session:
        configs.add(session, configuration)
        configs.get_row(session, name).target_server_id = target_server_id
    return configuration.config_id


def mark_named(services, name="central") -> int:
    with services.database.write() as session:
        return mark(session, configs.get_row(session, name))


def task_ids(services, config_id) -> set[uuid.UUID]:
    with services.database.read() as session:
        return set(session.scalars(select(ExportTaskRow.entity_id)
                                   .where(ExportTaskRow.config_id == config_id)))


def events_of(services, camera_id=None) -> set[uuid.UUID]:
    from meteorpi_server.storage.orm import EventRow

    with services.database.read() as session:
        query = select(EventRow.event_id)
        if camera_id:
            query = query.where(EventRow.camera_id == camera_id)
        return set(session.scalars(query))


# Marking -------------------------------------------------------------------------------------

def test_every_matching_event_becomes_a_task_once(node):
    config_id = add_config(node)
    assert mark_named(node) == PLAN.cameras * PLAN.nights * PLAN.events_per_night
    assert task_ids(node, config_id) == events_of(node)
    assert mark_named(node) == 0


def test_marking_follows_the_search(node):
    config_id = add_config(node, search=EventSearch(camera_ids=["demo-cam-2"]))
    mark_named(node)
    assert task_ids(node, config_id) == events_of(node, "demo-cam-2")


def test_a_file_configuration_marks_only_stand_alone_files(node):
    config_id = add_config(node, search=FileSearch())
    assert mark_named(node) == PLAN.cameras * PLAN.nights * PLAN.standalone_files
    with node.database.read() as session:
        for file_id in task_ids(node, config_id):
            record = session.get(store.FileRecordRow, file_id)
            assert record.event_id is None


def test_records_from_the_target_are_not_marked_for_it(node):
    owner = factories.status("cam-elsewhere")
    from_target = factories.event(owner, [])
    from_a_third_server = factories.event(owner, [])
    with node.database.write() as session:
        store.insert_status(session, owner, store.Source("peer", TARGET_ID))
        store.insert_event(session, from_target, store.Source("peer", TARGET_ID))
        store.insert_event(session, from_a_third_server, store.Source("peer", uuid.uuid4()))
    config_id = add_config(node, target_server_id=TARGET_ID)
    mark_named(node)
    marked = task_ids(node, config_id)
    assert from_target.event_id not in marked
    assert from_a_third_server.event_id in marked
    assert events_of(node) - marked == {from_target.event_id}


def test_marking_is_one_statement_however_many_records(node):
    add_config(node)
    expected = len(events_of(node))
    statements = []
    engine = node.database.engine

    def count(conn, cursor, statement, parameters, context, executemany):
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        with node.database.write() as session:
            row = session.scalar(select(ExportConfigRow))
            statements.clear()
            marked = mark(session, row)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert marked == expected
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("INSERT")


# Task states ---------------------------------------------------------------------------------

def first_task(services, config_id) -> tasks.Task:
    with services.database.read() as session:
        return tasks.due_tasks(session, config_id, 1)[0]


def test_a_refused_task_waits_then_fails_after_max_attempts(node):
    config_id = add_config(node)
    mark_named(node)
    task = first_task(node, config_id)
    with node.database.write() as session:
        assert tasks.refuse(session, task, "no", Backoff(60_000, 60_000), max_attempts=2) == tasks.PENDING
    with node.database.read() as session:
        due = tasks.due_tasks(session, config_id, 100)
        later = tasks.due_tasks(session, config_id, 100, now=store.now_ms() + 61_000)
    assert task.entity_id not in {t.entity_id for t in due}
    # Waiting tasks come after fresh ones, so one the target keeps refusing holds nobody up.
    assert later[-1].entity_id == task.entity_id and later[-1].attempts == 1
    with node.database.write() as session:
        assert tasks.refuse(session, later[-1], "still no", Backoff(1, 1), max_attempts=2) == tasks.FAILED
        assert tasks.retry_failed(session, config_id) == 1
    with node.database.read() as session:
        assert tasks.due_tasks(session, config_id, 1)[0].entity_id == task.entity_id


def test_complete_marks_the_task_done_and_resets_the_target(node):
    config_id = add_config(node)
    mark_named(node)
    with node.database.write() as session:
        tasks.note_target_failure(session, config_id, "down", Backoff(1, 1), 4)
        tasks.complete(session, first_task(node, config_id))
    with node.database.read() as session:
        row = session.get(ExportConfigRow, config_id)
        assert (row.consecutive_failures, row.next_attempt_at) == (0, 0)
        assert tasks.counts_by_state(session)[config_id][tasks.DONE] == 1


def test_target_failures_that_need_a_person_back_off_doubling_to_a_cap_then_disable(node):
    config_id = add_config(node)
    backoff = Backoff(1000, 5000)
    assert [backoff.delay_ms(n) for n in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]
    waits = []
    for _ in range(4):
        with node.database.write() as session:
            now = store.now_ms()
            failures, disabled = tasks.note_target_failure(session, config_id, "refused", backoff,
                                                           4, needs_a_person=True, now=now)
            waits.append(session.get(ExportConfigRow, config_id).next_attempt_at - now)
    assert waits == [1000, 2000, 4000, 5000]
    assert (failures, disabled) == (4, True)
    with node.database.read() as session:
        view = configs.get(session, "central")
    assert not view.configuration.enabled
    assert view.disabled_reason == "disabled after 4 failures in a row; the last: refused"


def test_max_failures_zero_never_disables(node):
    config_id = add_config(node)
    for _ in range(10):
        with node.database.write() as session:
            _, disabled = tasks.note_target_failure(session, config_id, "down", Backoff(1, 1), 0,
                                                    needs_a_person=True)
            assert not disabled


def test_target_failures_that_heal_back_off_to_the_cap_and_never_disable(node):
    config_id = add_config(node)
    backoff = Backoff(1000, 5000)
    for _ in range(20):
        with node.database.write() as session:
            now = store.now_ms()
            failures, disabled = tasks.note_target_failure(session, config_id, "down", backoff, 4,
                                                           now=now)
            assert not disabled
            wait = session.get(ExportConfigRow, config_id).next_attempt_at - now
    assert (failures, wait) == (20, 5000)
    with node.database.read() as session:
        view = configs.get(session, "central")
    assert view.configuration.enabled and view.disabled_reason is None


def test_one_exporter_at_a_time_holds_a_configuration(node):
    config_id = add_config(node)
    with node.database.write() as session:
        assert tasks.take_lease(session, config_id, "host:1:a", 60)
        assert not tasks.take_lease(session, config_id, "host:2:b", 60)
        assert tasks.take_lease(session, config_id, "host:1:a", 60), "the holder renews"
        # A holder known to be dead (killed on this host) is taken over at once ...
        assert tasks.take_lease(session, config_id, "host:2:b", 60, frozenset({"host:1:a"}))
        # ... and so is one whose lease ran out.
        assert tasks.take_lease(session, config_id, "host:3:c", 60, now=store.now_ms() + 61_000)
        tasks.release_lease(session, config_id, "host:3:c")
        assert session.get(ExportConfigRow, config_id).lease_owner is None
