"""What an exporter run shows while it works: progress bars on a terminal, log lines otherwise.

The runner calls a :class:`Reporter` from one thread per target; implementations are
thread-safe.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TextIO

log = logging.getLogger("meteorpi.exporter")


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


@dataclass
class Batch:
    """One batch of tasks worked through for one target."""

    entities: int = 0
    complete: int = 0
    refused: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    seconds: float = 0.0
    pending_after: int = 0


class Reporter:
    """Does nothing; subclasses show progress. Every method may be called from any thread."""

    def add_work(self, target: str, entities: int, total_bytes: int) -> None:
        """``entities`` more tasks, holding ``total_bytes`` of files, are due for ``target``."""

    def bytes_sent(self, target: str, count: int) -> None:
        """The target confirmed ``count`` more bytes of a file."""

    def entity_done(self, target: str, ok: bool, file_bytes: int) -> None:
        """One task is finished with for now (``ok``: complete); its files hold ``file_bytes``."""

    def batch_done(self, target: str, batch: Batch) -> None:
        """A batch of tasks is worked through."""

    def close(self) -> None:
        """The run is over."""


class LogReporter(Reporter):
    """One log line per batch: for logs, cron mail and systemd. (The runner logs target
    failures itself, whatever the reporter.)"""

    def batch_done(self, target: str, batch: Batch) -> None:
        log.info("export %s: %d entities in %.1f s (%d complete, %d refused), %d files, %s "
                 "uploaded; %d pending", target, batch.entities, batch.seconds, batch.complete,
                 batch.refused, batch.files_uploaded, format_bytes(batch.bytes_uploaded),
                 batch.pending_after)


class BarReporter(LogReporter):
    """Two tqdm bars per target, entities and bytes, on a terminal."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self._bars: dict[str, tuple] = {}
        self._unreported: dict[str, int] = {}
        self._lock = threading.Lock()

    def _bars_for(self, target: str):
        from tqdm import tqdm

        with self._lock:
            if target not in self._bars:
                position = 2 * len(self._bars)
                entities = tqdm(total=0, desc=f"{target} entities", unit=" entities",
                                position=position, file=self.stream, leave=True,
                                dynamic_ncols=True)
                data = tqdm(total=0, desc=f"{target} bytes", unit="B", unit_scale=True,
                            unit_divisor=1024, position=position + 1, file=self.stream,
                            leave=True, dynamic_ncols=True)
                self._bars[target] = (entities, data)
                self._unreported[target] = 0
            return self._bars[target]

    def add_work(self, target: str, entities: int, total_bytes: int) -> None:
        entity_bar, byte_bar = self._bars_for(target)
        entity_bar.total += entities
        byte_bar.total += total_bytes
        entity_bar.refresh()
        byte_bar.refresh()

    def bytes_sent(self, target: str, count: int) -> None:
        _, byte_bar = self._bars_for(target)
        with self._lock:
            self._unreported[target] += count
        byte_bar.update(count)

    def entity_done(self, target: str, ok: bool, file_bytes: int) -> None:
        entity_bar, byte_bar = self._bars_for(target)
        entity_bar.update(1)
        # Files the target already had are never uploaded: move the bar past them too.
        # Uploaded bytes not yet matched to a finished entity are credited to this one, up
        # to its size, and the rest kept for the next: with protocol v2 a whole batch is
        # uploaded before its first entity is done, so the credit spans many entities.
        with self._lock:
            credited = min(file_bytes, self._unreported[target])
            self._unreported[target] -= credited
            rest = file_bytes - credited
        if rest:
            byte_bar.update(rest)

    def batch_done(self, target: str, batch: Batch) -> None:
        """The bars say it all."""

    def close(self) -> None:
        with self._lock:
            bars = [bar for pair in self._bars.values() for bar in pair]
        for bar in bars:
            bar.close()


def reporter_for(stream: TextIO) -> Reporter:
    """Bars if ``stream`` is a terminal, else log lines."""
    isatty = getattr(stream, "isatty", None)
    return BarReporter(stream) if isatty is not None and isatty() else LogReporter()
