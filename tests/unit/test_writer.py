"""BlobWriter hands a full batch to the commit thread and goes on receiving: what it may and may
not do while a batch is still being committed (a sink whose commits the test releases)."""

import hashlib
import os
import threading

import lmdb
import pytest

from hubcache.store import CHUNK_SIZE, BlobWriter, StoreError


class GatedSink:
    """A BlobSink whose batches commit only when the test says so (release()); records what
    reached it, in order, and whether a batch's views were still intact when it committed."""

    def __init__(self, limit: int = 2 * CHUNK_SIZE) -> None:
        self.limit = limit
        self.events: list[tuple] = []
        self.queued: list[tuple[threading.Event, list[bytes], list[memoryview], list[BaseException]]] = []
        self.fail_next = False

    def batch_limit(self) -> int:
        return self.limit

    def count_writer(self, delta: int) -> None:
        pass

    def write_batch(self, blob_id, first, chunks, pending):
        gate = threading.Event()
        copies = [bytes(c) for c in chunks]  # what the batch held when it was handed over
        errors: list[BaseException] = [lmdb.Error("disk full")] if self.fail_next else []
        self.fail_next = False
        entry = (gate, copies, chunks, errors)
        self.queued.append(entry)
        self.events.append(("batch", first, len(chunks)))

        def wait() -> None:
            if not chunks:  # the pending record alone (register): committed at once
                gate.set()
            assert gate.wait(5), "a batch was waited for that the test never released"
            assert [bytes(c) for c in chunks] == copies, "the area under a committing batch was overwritten"
            if errors:
                raise errors[0]
            self.events.append(("committed", first))

        return wait

    def release(self) -> None:
        for gate, *_ in self.queued:
            gate.set()

    def publish(self, digest, repository, blob_id, size, first, chunks):
        self.events.append(("publish", first, len(chunks)))

    def drop(self, blob_id):
        self.events.append(("drop",))


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_a_full_batch_is_handed_over_and_the_next_one_filled_while_it_commits():
    sink = GatedSink()
    data = os.urandom(5 * CHUNK_SIZE + 7)
    w = BlobWriter(sink, digest_of(data), len(data), "P:r")
    w.register()
    w.write(data[: 2 * CHUNK_SIZE + 3])  # one batch handed over, not committed: write() returned anyway
    assert sink.events[-1] == ("batch", 0, 2)
    done = threading.Event()

    def rest() -> None:
        w.write(data[2 * CHUNK_SIZE + 3 :])  # the next batch waits for the first's commit
        done.set()

    t = threading.Thread(target=rest)
    t.start()
    assert not done.wait(0.3)
    sink.release()
    t.join(5)
    assert done.is_set()
    sink.release()
    w.commit()
    kinds = [e[0] for e in sink.events]
    assert kinds.index("publish") > max(i for i, k in enumerate(kinds) if k == "committed")  # every batch first
    batched = sum(e[2] for e in sink.events if e[0] == "batch")
    assert sink.events[-1] == ("publish", batched, 6 - batched)  # the rest, down to the 7-byte tail


def test_publishing_waits_for_the_batch_still_committing():
    sink = GatedSink()
    data = os.urandom(2 * CHUNK_SIZE + 1)
    w = BlobWriter(sink, digest_of(data), len(data), "P:r")
    w.register()
    w.write(data)
    t = threading.Thread(target=w.commit)
    t.start()
    t.join(0.3)
    assert t.is_alive() and ("publish", 2, 1) not in sink.events
    sink.release()
    t.join(5)
    assert sink.events[-2:] == [("committed", 0), ("publish", 2, 1)]


def test_a_batch_that_fails_to_commit_stops_storing_and_drops_after_it_settled():
    sink = GatedSink()
    data = os.urandom(4 * CHUNK_SIZE)
    w = BlobWriter(sink, digest_of(data), len(data), "P:r")
    w.register()
    sink.fail_next = True
    w.write(data[: 2 * CHUNK_SIZE])  # handed over; it will fail
    assert w.failed is None
    sink.release()
    w.write(data[2 * CHUNK_SIZE :])  # the next hand-over finds the failure
    assert isinstance(w.failed, lmdb.Error)
    assert sink.events[-1] == ("drop",) and not any(e[0] == "batch" and e[1] == 2 for e in sink.events)
    with pytest.raises(StoreError):
        w.commit()


def test_flush_waits_until_everything_handed_over_is_committed():
    sink = GatedSink(limit=8 * CHUNK_SIZE)
    data = os.urandom(3 * CHUNK_SIZE)
    w = BlobWriter(sink, digest_of(data), len(data), "P:r")
    w.register()
    w.write(data)
    w.flush(wait=False)  # handed over, returns at once
    assert sink.events[-1] == ("batch", 0, 3)
    t = threading.Thread(target=w.flush)
    t.start()
    t.join(0.3)
    assert t.is_alive()
    sink.release()
    t.join(5)
    assert sink.events[-1] == ("committed", 0)
