"""What ``export run`` shows while it works: bars on a terminal, one log line per batch otherwise."""
from __future__ import annotations

import io
import logging

from meteorpi_server.exporter.progress import (Batch, BarReporter, LogReporter, format_bytes,
                                               reporter_for)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_bars_and_anything_else_log_lines():
    assert isinstance(reporter_for(Terminal()), BarReporter)
    assert type(reporter_for(io.StringIO())) is LogReporter


def test_the_log_reporter_writes_one_line_per_batch(caplog):
    caplog.set_level(logging.INFO, logger="meteorpi.exporter")
    reporter = LogReporter()
    reporter.add_work("central", 3, 3000)
    reporter.entity_done("central", True, 1000)
    reporter.batch_done("central", Batch(entities=3, complete=2, refused=1, files_uploaded=4,
                                         bytes_uploaded=5 * 1024 * 1024, seconds=1.5,
                                         pending_after=7))
    assert caplog.messages == ["export central: 3 entities in 1.5 s (2 complete, 1 refused), "
                               "4 files, 5.0 MiB uploaded; 7 pending"]


def test_bars_count_entities_and_bytes_including_files_the_target_had():
    stream = Terminal()
    reporter = BarReporter(stream)
    reporter.add_work("central", 2, 3000)
    reporter.bytes_sent("central", 1500)  # half of the first entity's files uploaded
    reporter.entity_done("central", True, 2000)
    reporter.entity_done("central", True, 1000)  # the target already had these bytes
    entity_bar, byte_bar = reporter._bars["central"]
    assert (entity_bar.n, entity_bar.total) == (2, 2)
    assert (byte_bar.n, byte_bar.total) == (3000, 3000)
    reporter.close()
    assert "central entities" in stream.getvalue() and "central bytes" in stream.getvalue()


def test_sizes_read_well():
    assert [format_bytes(n) for n in (0, 1023, 1024, 5 * 1024 ** 2, 3 * 1024 ** 4)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 TiB"]


def test_the_byte_bar_counts_each_byte_once_when_a_whole_batch_is_uploaded_first():
    # Protocol v2's order: every upload of the batch, then each entity's completion.
    reporter = BarReporter(Terminal())
    sizes = [2000, 1000, 3000, 500]
    reporter.add_work("central", len(sizes), sum(sizes))
    for size in sizes[:3]:  # the target already had the last entity's files
        reporter.bytes_sent("central", size // 2)
        reporter.bytes_sent("central", size - size // 2)
    for size in sizes:
        reporter.entity_done("central", True, size)
    _, byte_bar = reporter._bars["central"]
    assert (byte_bar.n, byte_bar.total) == (sum(sizes), sum(sizes))
    reporter.close()
