"""prometheus_client's multiprocess mode under ``meteorpi serve``.

Each gunicorn worker counts in files of its own in one directory, and a scrape of any
worker sums them all. ``meteorpi serve`` makes that directory empty before the workers
start, marks each worker that exits as dead (its live gauges, such as open streams, stop
counting; its counters keep their totals) and removes the directory when it stops.

Nothing here imports the metrics: the mode must be chosen before the first metric is made.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def directory() -> Path | None:
    """The multiprocess directory of this process, or None (metrics are this process's)."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def enable() -> tuple[Path, bool]:
    """Choose multiprocess mode for this process and the workers it forks.

    Uses ``$PROMETHEUS_MULTIPROC_DIR`` if set (emptied of old metric files, which would
    otherwise add a previous run's counts), else a new temporary directory. Returns it
    and whether it was made here (and so should be removed by :func:`disable`).
    """
    given = directory()
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        for stale in given.glob("*.db"):
            stale.unlink(missing_ok=True)
        path, made = given, False
    else:
        path, made = Path(tempfile.mkdtemp(prefix="meteorpi-metrics-")), True
        os.environ[ENV] = str(path)
    from prometheus_client import values

    # The value class is chosen when prometheus_client is first imported; this process
    # may have imported it before the variable was set.
    values.ValueClass = values.get_value_class()
    return path, made


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit hook: a dead worker's live gauges no longer count."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


def disable(path: Path, made: bool) -> None:
    """Remove the metric files (and the directory, if :func:`enable` made it)."""
    if made:
        shutil.rmtree(path, ignore_errors=True)
        os.environ.pop(ENV, None)
    else:
        for stale in path.glob("*.db"):
            stale.unlink(missing_ok=True)
