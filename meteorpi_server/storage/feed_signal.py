"""Waking the change feed's readers when a change is committed, on any host.

Readers of the feed (long polls, event streams) wait for news. On PostgreSQL each
transaction that stores records sends ``NOTIFY meteorpi_feed`` with the newest sequence
it numbered (delivered at its commit, to every host on the database). Each process keeps
one listening connection, on a daemon thread started by its first reader: a notification
wakes the readers waiting in that process, who then read the feed table again, so the
notification carries nothing they must trust (its sequence may even be past theirs for
good, after a restore of the database). Readers still look every few seconds on
their own, and poll as on SQLite (every ``POLL_SECONDS``) while the listener is down:
a lost notification or a lost connection delays news, never loses it.

On SQLite (one host) readers poll.
"""
from __future__ import annotations

import logging
import os
import threading
import time

from sqlalchemy.engine import URL

log = logging.getLogger("meteorpi.feed")

CHANNEL = "meteorpi_feed"
POLL_SECONDS = 0.1
# While listening: a reader looks at the feed this often anyway.
LISTENING_POLL_SECONDS = 2.0
# Between attempts to connect the listener again.
RECONNECT_SECONDS = 1.0
# How often the listener looks whether it was closed.
_CHECK_SECONDS = 1.0


class ChangeSignal:
    """Where a process's feed readers wait for changes of one database."""

    def __init__(self, url: URL | None):
        """``url``: a PostgreSQL database to listen on, or None to poll."""
        self._conninfo = (url.set(drivername="postgresql").render_as_string(hide_password=False)
                          if url is not None else None)
        self._condition = threading.Condition()
        self._heard = 0  # notifications (and reconnections) so far
        self.listening = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    def mark(self) -> int:
        """Call before reading the feed, and give the result to :meth:`wait`: a commit
        heard of in between then ends the wait at once."""
        self._ensure_listener()
        with self._condition:
            return self._heard

    def wait(self, mark: int, timeout: float) -> None:
        """Return once a commit was heard of since :meth:`mark` gave ``mark``, or after at
        most ``timeout`` seconds (sooner while not listening: then this is a poll's pause)."""
        with self._condition:
            if self.listening:
                self._condition.wait_for(lambda: self._heard != mark or not self.listening,
                                         timeout=min(timeout, LISTENING_POLL_SECONDS))
            else:
                self._condition.wait(min(timeout, POLL_SECONDS))

    def close(self) -> None:
        """Stop listening (the thread ends within a second)."""
        with self._condition:
            self._closed = True
            self.listening = False
            self._condition.notify_all()

    def _ensure_listener(self) -> None:
        if self._conninfo is None or self._closed:
            return
        with self._condition:
            # A forked process (a gunicorn worker) has none of its parent's threads.
            if self._thread is not None and self._pid == os.getpid():
                return
            self._pid, self.listening = os.getpid(), False
            self._thread = threading.Thread(target=self._listen, name="meteorpi-feed-listener",
                                            daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        import psycopg

        while not self._closed:
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    self._set_listening(True)
                    while not self._closed:
                        for _ in connection.notifies(timeout=_CHECK_SECONDS):
                            self._wake()
            except psycopg.Error as error:
                if not self._closed:
                    reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                    log.warning("feed listener lost its connection (%s); readers poll until "
                                "it is back", reason)
            self._set_listening(False)
            if not self._closed:
                time.sleep(RECONNECT_SECONDS)

    def _set_listening(self, listening: bool) -> None:
        with self._condition:
            self.listening = listening and not self._closed
            self._heard += 1  # readers look again: commits before LISTEN went unheard
            self._condition.notify_all()

    def _wake(self) -> None:
        with self._condition:
            self._heard += 1
            self._condition.notify_all()
