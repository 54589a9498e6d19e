"""Following GET /changes and GET /changes/stream over a real socket, as a client would."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

import requests


class FeedFollower(threading.Thread):
    """Long-polls GET /changes from ``since`` until stopped, keeping every change seen.

    ``stop()`` asks it to finish once it has caught up with ``until`` (a sequence number,
    or None to stop after the current poll).
    """

    def __init__(self, base_url: str, auth, since: int = 0, limit: int = 7, wait_ms: int = 2000):
        super().__init__(daemon=True)
        self.base_url, self.auth = base_url, auth
        self.since, self.limit, self.wait_ms = since, limit, wait_ms
        self.changes: list[dict] = []
        self.polls = 0
        self.error: BaseException | None = None
        self._until: int | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            with requests.Session() as session:
                session.auth = self.auth
                while True:
                    response = session.get(
                        f"{self.base_url}/changes", timeout=30,
                        params={"since": self.since, "limit": self.limit, "timeout": self.wait_ms})
                    response.raise_for_status()
                    reply = response.json()
                    self.polls += 1
                    self.changes += reply["changes"]
                    self.since = reply["last"]
                    caught_up = self._until is None or self.since >= self._until
                    if self._stopping.is_set() and caught_up and not reply["more"]:
                        return
        except BaseException as error:  # reported by stop()
            self.error = error

    def stop(self, until: int | None = None, timeout: float = 60) -> list[dict]:
        self._until = until
        self._stopping.set()
        self.join(timeout)
        if self.error is not None:
            raise self.error
        assert not self.is_alive(), "the follower did not catch up"
        return self.changes


@dataclass
class ServerSentEvent:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)

    @property
    def json(self):
        return json.loads("\n".join(self.data))


def server_sent_events(response: requests.Response):
    """Yield each event (or comment-only block) of a text/event-stream response."""
    current = ServerSentEvent()
    for line in response.iter_lines(decode_unicode=True):
        if line == "":
            yield current
            current = ServerSentEvent()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                current.data.append(value)
            elif name in ("id", "event"):
                setattr(current, name, value)
