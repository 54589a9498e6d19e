"""Export state for people: each configuration with its backlog, as dicts (the admin API)
and as text (``meteorpi export list|show|status`` and the summary of ``export run``)."""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..storage.node_activity import iso
from ..storage.orm import ExportTaskRow
from ..storage.store import now_ms
from . import configs, tasks
from .configs import ExportView
from .progress import format_bytes
from .runner import RunSummary


@dataclass(frozen=True)
class ConfigStatus:
    """A configuration, its target's state and its backlog."""

    view: ExportView
    pending: int = 0
    done: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        data = self.view.to_dict()
        data["tasks"] = {"pending": self.pending, "done": self.done, "failed": self.failed}
        return data


def gather(session: Session, name: str | None = None) -> list[ConfigStatus]:
    """Every configuration's status (or the named one's; ConfigNotFound if none)."""
    views = [configs.get(session, name)] if name is not None else configs.list_views(session)
    counts = tasks.counts_by_state(session)
    return [ConfigStatus(view, **counts.get(view.config_id, {})) for view in views]


def replication_status(session: Session, now_ms: int) -> list[dict]:
    """Every configuration's replication state as data (``GET /exports/status``, and the
    metrics' per-configuration gauges), in two queries however many tasks there are.

    ``state`` is ``disabled`` (``disabled_reason`` says why), ``running`` (an exporter
    holds a live claim on it: ``lease_owner``, ``lease_expires_at``), ``backing_off``
    (after failures, ``until`` the next attempt) or ``idle``; the keys of the other
    states are null. ``sent`` counts what the target confirmed over the configuration's
    life. Times are ISO 8601 (UTC) with a ``_ms`` twin.
    """
    backlog: dict = {}
    for config_id, state, count in session.execute(
            select(ExportTaskRow.config_id, ExportTaskRow.state, func.count())
            .where(ExportTaskRow.state.in_((tasks.PENDING, tasks.FAILED)))
            .group_by(ExportTaskRow.config_id, ExportTaskRow.state)):
        backlog.setdefault(config_id, {})[state] = count
    statuses = []
    for view in configs.list_views(session):
        counts = backlog.get(view.config_id, {})
        statuses.append(_status_of(view, now_ms, counts.get(tasks.PENDING, 0),
                                   counts.get(tasks.FAILED, 0)))
    return statuses


def _state_of(view: ExportView, now: int) -> str:
    if not view.configuration.enabled:
        return "disabled"
    if view.lease_owner is not None and (view.lease_expires_at or 0) > now:
        return "running"
    if view.consecutive_failures and view.next_attempt_at > now:
        return "backing_off"
    return "idle"


def _times(name: str, ms: int | None) -> dict:
    return {name: iso(ms), f"{name}_ms": ms}


def _status_of(view: ExportView, now: int, pending: int, failed: int) -> dict:
    state = _state_of(view, now)
    return {
        "name": view.name,
        "target_url": view.configuration.target_url,
        "state": state,
        **_times("until", view.next_attempt_at if state == "backing_off" else None),
        "disabled_reason": view.disabled_reason if state == "disabled" else None,
        "lease_owner": view.lease_owner if state == "running" else None,
        **_times("lease_expires_at", view.lease_expires_at if state == "running" else None),
        # Nothing is marked before the target has said who it is (see marking.py).
        "backlog": {"pending": pending, "failed": failed,
                    "counted": view.target_checked_at is not None},
        **_times("last_success_at", view.last_success_at),
        "last_error": view.last_error,
        **_times("last_error_at", view.last_error_at),
        **_times("next_attempt_at", view.next_attempt_at or None),
        "consecutive_failures": view.consecutive_failures,
        "sent": {"entities": view.entities_sent, "files": view.files_sent,
                 "bytes": view.bytes_sent},
    }


def _when(ms: int | None, now: int) -> str:
    if not ms:
        return "never"
    text = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    seconds = (ms - now) / 1000
    span = abs(seconds)
    if span < 90:
        relative = f"{span:.0f} s"
    elif span < 5400:
        relative = f"{span / 60:.0f} min"
    elif span < 172800:
        relative = f"{span / 3600:.1f} h"
    else:
        relative = f"{span / 86400:.1f} days"
    return f"{text} ({'in ' + relative if seconds > 0 else relative + ' ago'})"


def _search_text(view: ExportView) -> str:
    search = view.configuration.search.to_dict()
    search.pop("limit", None)
    search.pop("skip", None)
    if view.configuration.type == "file":
        search.pop("exclude_events", None)
    criteria = ", ".join(f"{key}={value}" for key, value in search.items())
    return criteria or "everything"


def format_list(statuses: list[ConfigStatus]) -> str:
    """One line per configuration: name, state, type, target and search."""
    if not statuses:
        return "no export configurations (add one with 'meteorpi export add')"
    now = now_ms()
    lines = []
    for status in statuses:
        view = status.view
        kind = "events" if view.configuration.type == "event" else "files"
        lines.append(f"{view.name}\t{view.state(now)}\t{kind}\t{view.configuration.target_url}"
                     f"\t{_search_text(view)}")
    return "\n".join(lines)


def format_show(status: ConfigStatus) -> str:
    """Everything about one configuration but its password."""
    view, now = status.view, now_ms()
    configuration = view.configuration
    rows = [
        ("name", view.name),
        ("id", configuration.config_id.hex),
        ("description", configuration.description or "-"),
        ("exports", "events" if configuration.type == "event" else "stand-alone files"),
        ("search", _search_text(view)),
        ("target", configuration.target_url),
        ("user", configuration.user_id),
        ("password", "(set)" if configuration.password else "(empty)"),
        ("state", view.state(now)),
    ]
    if view.disabled_reason and not configuration.enabled:
        rows.append(("disabled because", view.disabled_reason))
    rows += [
        ("target server id", view.target_server_id.hex if view.target_server_id
         else ("none (a legacy server)" if view.target_checked_at else "not asked yet")),
        ("tasks", f"{status.pending} pending, {status.done} done, {status.failed} failed"),
        ("last success", _when(view.last_success_at, now)),
        ("failures in a row", str(view.consecutive_failures)),
        ("last error", f"{view.last_error} ({_when(view.last_error_at, now)})"
         if view.last_error else "none"),
    ]
    if view.next_attempt_at > now:
        rows.append(("next attempt", _when(view.next_attempt_at, now)))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in rows)


def format_status(statuses: list[ConfigStatus]) -> str:
    """The backlog, last success, last error and state of each configuration."""
    if not statuses:
        return "no export configurations (add one with 'meteorpi export add')"
    now = now_ms()
    blocks = []
    for status in statuses:
        view = status.view
        state = view.state(now)
        if state == "disabled" and view.disabled_reason:
            state += f": {view.disabled_reason}"
        elif state == "backing off":
            state += (f" after {view.consecutive_failures} failure(s) in a row; next attempt "
                      f"{_when(view.next_attempt_at, now)}")
        if view.target_checked_at is None:
            # Nothing is marked before the target says who it is (see marking.py).
            tasks_text = "not counted yet: the target has not answered so far"
        else:
            tasks_text = f"{status.pending} pending, {status.done} done, {status.failed} failed"
            if status.failed:
                tasks_text += f" (meteorpi export retry {view.name} sends them again)"
        lines = [f"{view.name} -> {view.configuration.target_url}",
                 f"  state:        {state}",
                 f"  backlog:      {tasks_text}",
                 f"  sent:         {view.entities_sent} entities, {view.files_sent} files "
                 f"({format_bytes(view.bytes_sent)})",
                 f"  last success: {_when(view.last_success_at, now)}"]
        if view.last_error:
            lines.append(f"  last error:   {view.last_error} ({_when(view.last_error_at, now)})")
        blocks.append("\n".join(lines))
    return "\n".join(blocks)


def attention(statuses: list[ConfigStatus], now: int | None = None,
              errors_shown: frozenset[str] = frozenset()) -> list[str]:
    """A line for each configuration that cannot send until its wait is over or someone
    acts: backing off after failures, or disabled by failures. Each says what to run.
    (``errors_shown``: configurations whose last error the caller has printed already.)"""
    now = now_ms() if now is None else now
    lines = []
    for status in statuses:
        view, name = status.view, status.view.name
        if view.disabled_by_failure:
            lines.append(f"{name} is disabled ({view.disabled_reason}); once that is fixed: "
                         f"meteorpi export enable {name}")
        elif view.state(now) == "backing off":
            last = (f" (last error: {view.last_error})"
                    if view.last_error and name not in errors_shown else "")
            lines.append(f"{name} is backing off after {view.consecutive_failures} failure(s) "
                         f"in a row{last}; next attempt {_when(view.next_attempt_at, now)}; to "
                         f"try now: meteorpi export retry {name}, then meteorpi export run --once")
    return lines


def format_summary(summary: RunSummary, statuses: list[ConfigStatus] | None = None) -> str:
    """Per target: entities sent, files and bytes uploaded, failures; then, given every
    configuration's ``statuses``, what needs attention (see :func:`attention`)."""
    statuses = statuses or []
    if not summary.targets:
        text = "nothing to do: no enabled export configuration"
        disabled = [status.view.name for status in statuses
                    if not status.view.configuration.enabled]
        if disabled:
            text += (f" ({', '.join(disabled)} disabled; meteorpi export enable NAME "
                     "enables one again)")
        return "\n".join([text, *attention(statuses)])
    lines = ["export summary:"]
    width = max(len(name) for name in summary.targets)
    for name, target in summary.targets.items():
        text = (f"  {name:<{width}}  {target.entities_sent} entities sent, {target.files_uploaded}"
                f" files ({format_bytes(target.bytes_uploaded)}) uploaded, "
                f"{target.failures} failure(s)")
        notes = []
        if target.refused:
            notes.append(f"{target.refused} entities refused")
        if target.disabled:
            notes.append("configuration disabled")
        elif target.skipped:
            notes.append(f"skipped: {target.skipped}")
        if target.last_error:
            notes.append(f"last error: {target.last_error}")
        lines.append(text + (f" ({'; '.join(notes)})" if notes else ""))
    shown = frozenset(name for name, target in summary.targets.items() if target.last_error)
    return "\n".join(lines + attention(statuses, errors_shown=shown))
