"""Keeping an exporter's claim on a configuration while it works.

Several exporters may share one database (two processes on a node, or a restart while
the old process is still winding down); a lease in the configuration's row says which of
them works on it, until when. The work itself can take long without a pause: one large
file over a slow link, or a protocol v2 batch of hundreds of entities. So the lease is
renewed by a thread of its own, every third of its length, rather than between requests:
only an exporter that died (or whose database stopped answering for a whole lease) loses
its claim.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

log = logging.getLogger("meteorpi.exporter")


class StopSignal(Protocol):
    """What the work checks between requests: a ``threading.Event`` or a StopOrLost."""

    def is_set(self) -> bool: ...


class StopOrLost:
    """Set once the run is asked to stop or the lease is lost: what the work checks
    between requests (it has the ``is_set`` of a ``threading.Event``)."""

    def __init__(self, stop: threading.Event, lost: threading.Event):
        self._stop, self._lost = stop, lost

    def is_set(self) -> bool:
        return self._stop.is_set() or self._lost.is_set()


class LeaseKeeper:
    """Renews a lease with ``renew`` (True: still ours) every ``seconds / 3`` while the
    ``with`` block runs. ``lost`` is set if another exporter has taken it over; ``stop``
    then tells the work to end after the request in flight."""

    def __init__(self, name: str, renew: Callable[[], bool], seconds: float,
                 stop: threading.Event):
        self.name = name
        self._renew = renew
        self._interval = seconds / 3
        self.lost = threading.Event()
        self.stop = StopOrLost(stop, self.lost)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._keep, name=f"lease-{name}", daemon=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()

    def _keep(self) -> None:
        while not self._done.wait(self._interval):
            try:
                still_ours = self._renew()
            except Exception:  # the database hiccuped: try again at the next renewal
                log.warning("export %s: could not renew the claim on this configuration; "
                            "trying again", self.name, exc_info=True)
                continue
            if not still_ours:
                log.warning("export %s: another exporter took this configuration over "
                            "(this one could not renew its claim in time); leaving it", self.name)
                self.lost.set()
                return
