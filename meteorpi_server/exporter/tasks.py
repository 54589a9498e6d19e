"""Export tasks and their states, and the target state kept on each configuration.

A task is one entity to send to one configuration's target:

``pending``
    waiting; ``next_attempt_at`` (ms) says from when, ``attempts`` how often the target
    refused it so far.
``done``
    the target answered ``complete``; it is never sent to that target again.
``failed``
    the target refused it ``max_attempts`` times (or this node lost the entity); it waits
    for an administrator (``meteorpi export retry``).

Every transition is one small transaction, committed before the exporter moves on, so
killing the exporter at any moment loses at most the outcome of the entity in flight
(which is then sent again, and the target answers ``complete`` for what it has).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from ..storage.orm import ExportConfigRow, ExportTaskRow
from ..storage.store import in_slices, now_ms
from .configs import clip

PENDING, DONE, FAILED = "pending", "done", "failed"
STATES = (PENDING, DONE, FAILED)


@dataclass(frozen=True)
class Task:
    config_id: uuid.UUID
    entity_type: str
    entity_id: uuid.UUID
    attempts: int


@dataclass(frozen=True)
class Backoff:
    """Waits that double with each failure in a row, from ``base_ms`` up to ``max_ms``."""

    base_ms: int
    max_ms: int

    def delay_ms(self, failures: int) -> int:
        if failures < 1:
            return 0
        # Capping the exponent first keeps the number small however long the run of failures.
        return min(self.max_ms, self.base_ms * 2 ** min(failures - 1, 40))


def due_tasks(session: Session, config_id: uuid.UUID, limit: int,
              now: int | None = None) -> list[Task]:
    """Up to ``limit`` pending tasks whose time has come: fresh ones first (so an entity the
    target keeps refusing never holds up the others), then in the order they were made."""
    now = now_ms() if now is None else now
    rows = session.execute(
        select(ExportTaskRow.entity_type, ExportTaskRow.entity_id, ExportTaskRow.attempts)
        .where(ExportTaskRow.config_id == config_id, ExportTaskRow.state == PENDING,
               ExportTaskRow.next_attempt_at <= now)
        .order_by(ExportTaskRow.attempts, ExportTaskRow.entity_time, ExportTaskRow.entity_id)
        .limit(limit))
    return [Task(config_id, entity_type, entity_id, attempts)
            for entity_type, entity_id, attempts in rows]


def complete(session: Session, task: Task, now: int | None = None) -> None:
    """The target confirmed the entity: the task is done and the target is working."""
    complete_many(session, task.config_id, [task.entity_id], now)


def complete_many(session: Session, config_id: uuid.UUID, entity_ids: list[uuid.UUID],
                  now: int | None = None) -> None:
    """The target confirmed these entities of one configuration: an UPDATE per thousand
    (a batch's confirmations were an UPDATE each, and a second for the target's success)."""
    if not entity_ids:
        return
    now = now_ms() if now is None else now
    for ids in in_slices(entity_ids):
        session.execute(
            update(ExportTaskRow)
            .where(ExportTaskRow.config_id == config_id, ExportTaskRow.entity_id.in_(ids))
            .values(state=DONE, finished_at=now, last_error=None))
    note_target_success(session, config_id, now)


def refuse(session: Session, task: Task, reason: str, backoff: Backoff, max_attempts: int,
           now: int | None = None) -> str:
    """The target refused the entity (or it cannot be sent): try it again later, or give up
    after ``max_attempts`` refusals (0: never). Returns the task's new state."""
    now = now_ms() if now is None else now
    attempts = task.attempts + 1
    state = FAILED if max_attempts and attempts >= max_attempts else PENDING
    session.execute(
        update(ExportTaskRow)
        .where(ExportTaskRow.config_id == task.config_id, ExportTaskRow.entity_id == task.entity_id,
               ExportTaskRow.state == PENDING)
        .values(state=state, attempts=attempts, last_error=clip(reason),
                next_attempt_at=now + backoff.delay_ms(attempts),
                finished_at=now if state == FAILED else None))
    return state


def give_up(session: Session, task: Task, reason: str, now: int | None = None) -> None:
    """Nothing can be sent (the entity is gone from this node): fail the task at once."""
    now = now_ms() if now is None else now
    session.execute(
        update(ExportTaskRow)
        .where(ExportTaskRow.config_id == task.config_id, ExportTaskRow.entity_id == task.entity_id)
        .values(state=FAILED, attempts=task.attempts + 1, last_error=clip(reason), finished_at=now))


def retry_failed(session: Session, config_id: uuid.UUID) -> int:
    """Put failed tasks back in the queue with a clean slate; returns how many."""
    result = session.execute(
        update(ExportTaskRow)
        .where(ExportTaskRow.config_id == config_id, ExportTaskRow.state == FAILED)
        .values(state=PENDING, attempts=0, next_attempt_at=0, finished_at=None))
    return result.rowcount


# The target's state, on its configuration ------------------------------------------------

def note_target_success(session: Session, config_id: uuid.UUID, now: int | None = None) -> None:
    """The target answered as it should: end its failures in a row and its back-off."""
    now = now_ms() if now is None else now
    session.execute(
        update(ExportConfigRow).where(ExportConfigRow.config_id == config_id)
        .values(consecutive_failures=0, next_attempt_at=0, last_success_at=now))


def note_sent(session: Session, config_id: uuid.UUID, entities: int = 0, files: int = 0,
              size: int = 0) -> None:
    """Add to the configuration's counters what the target took: ``entities`` it confirmed,
    ``files`` and their bytes (``size``) uploaded. Called in the transaction that records
    the outcome, so the counters never disagree with the tasks."""
    if not (entities or files or size):
        return
    session.execute(
        update(ExportConfigRow).where(ExportConfigRow.config_id == config_id)
        .values(entities_sent=ExportConfigRow.entities_sent + entities,
                files_sent=ExportConfigRow.files_sent + files,
                bytes_sent=ExportConfigRow.bytes_sent + size))


def note_target_failure(session: Session, config_id: uuid.UUID, reason: str, backoff: Backoff,
                        max_failures: int, needs_a_person: bool = False,
                        now: int | None = None) -> tuple[int, bool]:
    """Count a failure of the target and defer its configuration. Returns (failures in a
    row, disabled now).

    A failure that heals by itself (the target is down, slow, answers 5xx) never disables
    the configuration: it waits, up to the back-off's cap, and is tried again for ever, so
    an outage of any length ends with the node catching up by itself. One that
    ``needs_a_person`` (wrong credentials, a wrong URL, an untrusted certificate) disables
    it once it makes ``max_failures`` failures in a row (0: never), with the reason.
    """
    now = now_ms() if now is None else now
    row = session.get(ExportConfigRow, config_id, with_for_update=True)
    if row is None:  # removed meanwhile
        return 0, False
    row.consecutive_failures += 1
    row.last_error = clip(reason)
    row.last_error_at = now
    row.next_attempt_at = now + backoff.delay_ms(row.consecutive_failures)
    disabled = (needs_a_person and bool(max_failures)
                and row.consecutive_failures >= max_failures and row.enabled)
    if disabled:
        row.enabled = False
        row.disabled_reason = clip(f"disabled after {row.consecutive_failures} failures in a row; "
                                   f"the last: {reason}")
    return row.consecutive_failures, disabled


def disable_config(session: Session, config_id: uuid.UUID, reason: str, now: int | None = None) -> None:
    """Disable a configuration that cannot work as it stands (the operator must act)."""
    now = now_ms() if now is None else now
    session.execute(
        update(ExportConfigRow).where(ExportConfigRow.config_id == config_id)
        .values(enabled=False, disabled_reason=clip(reason), last_error=clip(reason),
                last_error_at=now))


def note_target_identity(session: Session, config_id: uuid.UUID, server_id: uuid.UUID | None,
                         now: int | None = None) -> None:
    """Note when the target was asked who it is, and its server id if it said.

    A known id is kept when the target does not say (``None``): a meteorpi server that
    answers ``GET /import`` with an error page once is still that server, and forgetting
    its id would send its own records back to it. Changing the target URL forgets it.
    """
    now = now_ms() if now is None else now
    values = {"target_checked_at": now}
    if server_id is not None:
        values["target_server_id"] = server_id
    session.execute(
        update(ExportConfigRow).where(ExportConfigRow.config_id == config_id).values(**values))


# Leases: one exporter process per configuration at a time ------------------------------------

def take_lease(session: Session, config_id: uuid.UUID, owner: str, seconds: float,
               stale_owners: frozenset[str] = frozenset(), now: int | None = None) -> bool:
    """Claim the configuration for ``owner`` until ``seconds`` from now, unless another
    live exporter holds it. ``stale_owners`` are holders known to be dead (a killed
    exporter on this host), whose lease is taken over at once."""
    now = now_ms() if now is None else now
    free = or_(ExportConfigRow.lease_owner.is_(None), ExportConfigRow.lease_owner == owner,
               ExportConfigRow.lease_expires_at < now)
    if stale_owners:
        free = or_(free, ExportConfigRow.lease_owner.in_(sorted(stale_owners)))
    result = session.execute(
        update(ExportConfigRow).where(and_(ExportConfigRow.config_id == config_id, free))
        .values(lease_owner=owner, lease_expires_at=now + int(seconds * 1000)))
    return result.rowcount == 1


def release_lease(session: Session, config_id: uuid.UUID, owner: str) -> None:
    session.execute(
        update(ExportConfigRow)
        .where(ExportConfigRow.config_id == config_id, ExportConfigRow.lease_owner == owner)
        .values(lease_owner=None, lease_expires_at=None))


def lease_holders(session: Session) -> set[str]:
    return set(session.scalars(select(ExportConfigRow.lease_owner)
                               .where(ExportConfigRow.lease_owner.is_not(None))))


# Backlog ---------------------------------------------------------------------------------

def counts_by_state(session: Session) -> dict[uuid.UUID, dict[str, int]]:
    """For each configuration with tasks: how many are pending, done and failed."""
    counts: dict[uuid.UUID, dict[str, int]] = {}
    for config_id, state, count in session.execute(
            select(ExportTaskRow.config_id, ExportTaskRow.state, func.count())
            .group_by(ExportTaskRow.config_id, ExportTaskRow.state)):
        counts.setdefault(config_id, dict.fromkeys(STATES, 0))[state] = count
    return counts


def last_task_errors(session: Session, config_id: uuid.UUID, limit: int = 5) -> list[tuple[uuid.UUID, str, str]]:
    """The most recent refusals: (entity id, state, error)."""
    rows = session.execute(
        select(ExportTaskRow.entity_id, ExportTaskRow.state, ExportTaskRow.last_error)
        .where(ExportTaskRow.config_id == config_id, ExportTaskRow.last_error.is_not(None))
        .order_by(ExportTaskRow.next_attempt_at.desc()).limit(limit))
    return [(entity_id, state, error) for entity_id, state, error in rows]
