"""The file store's placement lock (FileStore.locked): one holder of a file id at a time,
across threads and processes, while holders of other ids never wait."""
from __future__ import annotations

import multiprocessing
import threading
import uuid

import pytest

from meteorpi_server.storage import files as files_module
from meteorpi_server.storage.files import FileStore

WAIT = 0.3  # long enough for a holder that did not wait to have got in


@pytest.fixture(params=["per_file", "per_shard"])
def store(request, tmp_path, monkeypatch) -> FileStore:
    """A store with each kind of lock: one per file id (open file description locks),
    and the fallback of one per shard for kernels without them."""
    if request.param == "per_shard":
        monkeypatch.setattr(files_module, "_OFD_SETLKW", None)
    return FileStore(tmp_path / "files")


def _got_in(store: FileStore, file_ids: list[uuid.UUID]) -> threading.Event:
    """Start a thread that takes the lock of ``file_ids``; its event is set once it has."""
    entered = threading.Event()

    def hold():
        with store.locked(file_ids):
            entered.set()

    threading.Thread(target=hold, daemon=True).start()
    return entered


def test_a_second_holder_of_a_file_id_waits_for_the_first(store):
    file_id = uuid.uuid4()
    with store.locked([uuid.uuid4(), file_id]):
        entered = _got_in(store, [file_id])
        assert not entered.wait(WAIT)
    assert entered.wait(10)


def test_holders_of_different_files_do_not_wait_for_each_other(tmp_path):
    store = FileStore(tmp_path / "files")
    # Same shard (first two hex digits), different files: only the per-shard fallback
    # would make these wait.
    first, second = uuid.UUID("ab" + "0" * 30), uuid.UUID("ab" + "1" * 30)
    with store.locked([first]):
        assert _got_in(store, [second]).wait(10)


def _hold_in_child(root: str, file_id: str, held, release) -> None:
    with FileStore(root).locked([uuid.UUID(file_id)]):
        held.set()
        release.wait(30)


def test_the_lock_holds_across_processes(store):
    file_id = uuid.uuid4()
    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    child = context.Process(target=_hold_in_child, args=(str(store.root), file_id.hex, held, release))
    child.start()
    try:
        assert held.wait(10)
        entered = _got_in(store, [file_id])
        assert not entered.wait(WAIT)
        release.set()
        assert entered.wait(10)
    finally:
        release.set()
        child.join(10)


def test_overlapping_sets_taken_at_once_never_deadlock(store):
    ids = [uuid.uuid4() for _ in range(50)]
    done = []

    def take(some):
        for _ in range(20):
            with store.locked(some):
                pass
        done.append(True)

    threads = [threading.Thread(target=take, args=(ids[start:] + ids[:start],), daemon=True)
               for start in (0, 10, 25, 40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(done) == 4
