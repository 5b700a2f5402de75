"""Flights and the blob server together, with a scripted upstream: followers get the bytes as they
are written, the last byte only after the digest matched, and a failed download reaches them as a
cut-short body, never as a complete wrong one. With worker processes, a flight follows a sibling's
download in the store instead of making its own, and takes it over when it ends without the blob."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import threading
import time

import pytest

from hubcache.serve.blobserver import BlobServer
from hubcache.serve.flights import Flight, Flights
from hubcache.serve.siblings import Siblings, owner_key
from hubcache.store import Store
from hubcache.store.claims import Claim
from hubcache.upstream.client import UpstreamError

MiB = 1 << 20


class ScriptedResponse:
    """Shaped like fetch.Response: the body comes in pieces, each released by the test."""

    def __init__(self, status: int, body: bytes, *, piece: int = 256 * 1024, gated: bool = False,
                 fail_at: int | None = None, length: int | None = None) -> None:
        self.status = status
        self.headers = {"content-length": str(len(body) if length is None else length)}
        self.hops = []
        self._body, self._piece, self._fail_at = body, piece, fail_at
        self.released = threading.Semaphore(0 if gated else 10**6)
        self._pieces, self._rest = None, b""

    def header(self, name: str, default: str = "") -> str:
        return self.headers.get(name, default)

    def iter_body(self, idle=lambda: None, tick: float = 0.1):
        for i in range(0, len(self._body), self._piece):
            while not self.released.acquire(timeout=tick):
                idle()
            if self._fail_at is not None and i >= self._fail_at:
                raise UpstreamError("transfer broke off")
            yield self._body[i : i + self._piece]

    def read_into(self, space, idle=lambda: None, tick: float = 0.1) -> int:
        if self._pieces is None:
            self._pieces = self.iter_body(idle, tick)
        if not self._rest:
            self._rest = next(self._pieces, b"")
        buf = space()  # after the idle() calls: they may have moved it
        n = min(len(buf), len(self._rest))
        buf[:n] = self._rest[:n]
        self._rest = self._rest[n:]
        return n

    def read_small(self) -> bytes:
        return self._body[:65536]

    def close(self) -> None:
        pass


@pytest.fixture
def served(tmp_path):
    store = Store(tmp_path / "s")
    flights = Flights()
    server = BlobServer(store, flights.wait, writing=flights.writing)
    yield store, flights, server
    server.stop()
    store.close()


def blob(n: int) -> tuple[bytes, str]:
    data = os.urandom(n)
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def start(store, flights, digest, resp) -> Flight:
    f = Flight(digest, lambda: resp, lambda size: store.begin_blob(digest, size, "P:library/x"), on_end=flights.end)
    return flights.add(f).start()


class Follower(threading.Thread):
    """A client of the blob server that records how many bytes it had when."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.got = bytearray()
        self.status = 0
        self.error: Exception | None = None
        self.start()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request("GET", self.path)
            resp = conn.getresponse()
            self.status = resp.status
            while piece := resp.read1(65536):
                self.got += piece
            if resp.length:  # http.client raises nothing for a short read1 loop: check the length
                raise http.client.IncompleteRead(bytes(self.got), resp.length)
        except Exception as e:  # noqa: BLE001 - recorded for the test to look at
            self.error = e
        finally:
            conn.close()


def wait_for(cond, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_followers_get_bytes_as_they_arrive_and_the_end_only_when_verified(served):
    store, flights, server = served
    data, digest = blob(3 * MiB)

    async def go():
        resp = ScriptedResponse(200, data, gated=True)
        flight = start(store, flights, digest, resp)
        head = await flight.head()
        assert head.status == 200 and head.size == len(data)
        path = server.path(digest, head.blob_id)
        first = Follower(server.port, path)
        for _ in range(8):  # 2 MiB of 3
            resp.released.release()
        wait_for(lambda: len(first.got) >= 1 * MiB)  # streamed before the download ends
        late = Follower(server.port, path)
        wait_for(lambda: len(late.got) >= 1 * MiB)  # a late joiner gets what is written at once
        assert not flight.done and len(first.got) < len(data)
        for _ in range(4):
            resp.released.release()
        for f in (first, late):
            f.join(10)
            assert f.error is None and f.status == 200 and bytes(f.got) == data
        flight.join(10)
        assert flight.stored and flights.get(digest) is None
        assert b"".join(store.read_blob(store.blob_info(digest))) == data

    asyncio.run(go())


def test_a_download_that_does_not_match_its_digest_cuts_every_follower_short(served):
    store, flights, server = served
    data, digest = blob(2 * MiB)
    tampered = data[:-1] + bytes([data[-1] ^ 1])

    async def go():
        resp = ScriptedResponse(200, tampered, gated=True)
        flight = start(store, flights, digest, resp)
        head = await flight.head()
        followers = [Follower(server.port, server.path(digest, head.blob_id)) for _ in range(3)]
        for _ in range(7):
            resp.released.release()
        wait_for(lambda: all(len(f.got) >= 1 * MiB for f in followers))  # all mid-body
        resp.released.release()  # the last piece: now the digest is checked
        for f in followers:
            f.join(10)
            assert f.status == 200 and isinstance(f.error, http.client.IncompleteRead)
            assert len(f.got) < len(data)  # never the whole length: the client knows it failed
        flight.join(10)
        assert flight.rejected and not flight.stored
        assert store.blob_info(digest) is None and store.recover() == 0  # nothing half-written left
        assert flights.get(digest) is None  # the next request starts afresh

    asyncio.run(go())


def test_a_broken_transfer_reaches_followers_and_leaves_nothing(served):
    store, flights, server = served
    data, digest = blob(2 * MiB)

    async def go():
        resp = ScriptedResponse(200, data, gated=True, fail_at=1 * MiB)
        flight = start(store, flights, digest, resp)
        head = await flight.head()
        f = Follower(server.port, server.path(digest, head.blob_id))
        for _ in range(4):
            resp.released.release()
        wait_for(lambda: len(f.got) >= 512 * 1024)
        resp.released.release()  # the piece at which upstream breaks off
        f.join(10)
        flight.join(10)
        assert isinstance(f.error, http.client.IncompleteRead) and len(f.got) < len(data)
        assert "broke off" in flight.failure and store.blob_info(digest) is None and store.recover() == 0

    asyncio.run(go())


def test_the_download_finishes_and_is_stored_with_nobody_following(served):
    store, flights, _ = served
    data, digest = blob(1 * MiB + 5)

    async def go():
        flight = start(store, flights, digest, ScriptedResponse(200, data))
        await flight.head()
        flight.join(10)
        assert flight.stored and b"".join(store.read_blob(store.blob_info(digest))) == data

    asyncio.run(go())


def test_an_upstream_refusal_is_relayed_and_nothing_is_written(served):
    store, flights, _ = served

    async def go():
        resp = ScriptedResponse(404, b'{"errors":[{"code":"BLOB_UNKNOWN"}]}')
        resp.headers["content-type"] = "application/json"
        flight = start(store, flights, "sha256:" + "a" * 64, resp)
        head = await flight.head()
        assert head.status == 404 and b"BLOB_UNKNOWN" in head.body and head.headers["content-type"] == "application/json"
        flight.join(10)
        assert store.recover() == 0

    asyncio.run(go())


def test_a_download_that_ends_while_a_request_looks_for_the_blob_is_found_in_one_place_or_the_other(served):
    """The thread race that once made 16 concurrent pulls download one layer twice: the store is
    looked at just before the flight publishes and leaves the table. Flights.locate must still
    find the blob (here: the flight, which a late joiner can still follow to the end)."""
    store, flights, server = served
    data, digest = blob(1 * MiB)

    async def go():
        resp = ScriptedResponse(200, data, gated=True)
        flight = start(store, flights, digest, resp)
        head = await flight.head()

        def stored_then_flight_ends(d: str):
            info = store.blob_info(d)  # not yet published...
            for _ in range(8):  # ...and now the flight gets the rest, publishes and leaves the table
                resp.released.release()
            flight.join(10)
            assert flight.stored and flights.get(d) is None
            return info

        info, found = flights.locate(digest, stored_then_flight_ends)
        assert info is None and found is flight, "the blob was in neither place: it would be downloaded again"
        late = Follower(server.port, server.path(digest, head.blob_id))
        late.join(10)
        assert late.error is None and late.status == 200 and bytes(late.got) == data
        info, found = flights.locate(digest, store.blob_info)
        assert found is None and info is not None and info.size == len(data)

    asyncio.run(go())


def fallback_flight(store, flights, digest, first, then, why: list[str]) -> Flight:
    f = Flight(digest, lambda: first, lambda size: store.begin_blob(digest, size, "P:library/x"), on_end=flights.end,
               fallback=lambda: then, on_fallback=why.append)
    return flights.add(f).start()


def test_wrong_bytes_from_the_first_source_send_a_follower_that_has_nothing_yet_to_the_next_one(served):
    store, flights, server = served
    data, digest = blob(2 * MiB)
    tampered = data[:-1] + bytes([data[-1] ^ 1])

    async def go():
        first, then = ScriptedResponse(200, tampered, gated=True), ScriptedResponse(200, data, gated=True)
        why: list[str] = []
        flight = fallback_flight(store, flights, digest, first, then, why)
        head = await flight.head()
        early = Follower(server.port, server.path(digest, head.blob_id))  # gets the first source's bytes
        for _ in range(7):
            first.released.release()
        wait_for(lambda: len(early.got) >= 1 * MiB)
        first.released.release()  # the last piece: the digest does not match
        while not why:
            await asyncio.sleep(0.01)  # the event loop runs the flight's hand-overs meanwhile
        await asyncio.sleep(0.05)
        assert "hashing to" in why[0]
        # a client redirected to the dropped write before it was dropped, that has nothing yet
        late = Follower(server.port, server.path(digest, head.blob_id))
        renewed = await flight.head()  # a request now waits for the next source's write
        assert renewed.blob_id != head.blob_id
        for _ in range(8):
            then.released.release()
        for f in (early, late):
            f.join(10)
        assert isinstance(early.error, http.client.IncompleteRead) and len(early.got) < len(data)  # never whole and wrong
        assert late.error is None and late.status == 200 and bytes(late.got) == data
        flight.join(10)
        assert flight.stored and flight.fell_back and b"".join(store.read_blob(store.blob_info(digest))) == data

    asyncio.run(go())


def test_a_first_source_that_refuses_or_breaks_off_is_replaced_by_the_next_and_only_the_last_answer_is_relayed(served):
    store, flights, _ = served
    data, digest = blob(1 * MiB)

    async def go():
        for first in (ScriptedResponse(500, b"parent error"), ScriptedResponse(200, data, fail_at=512 * 1024)):
            why: list[str] = []
            flight = fallback_flight(store, flights, digest, first, ScriptedResponse(404, b"BLOB_UNKNOWN"), why)
            while not flight.done:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            head = await flight.head()  # what a request asking now is told
            assert head.status == 404 and head.body == b"BLOB_UNKNOWN"  # the registry's answer, not the parent's
            assert why and ("answered 500" in why[0] or "broke off" in why[0])
            assert store.blob_info(digest) is None and store.recover() == 0

    asyncio.run(go())


# -- single flight across worker processes (hubcache run --workers N) -------------------------
# In one process: a "sibling" is a claim in another live pid's name (this test's parent process).

SIBLING = os.getppid()  # alive for the whole test, and not this process
DEAD = 2**22 + 12345  # beyond pid_max's default: no such process


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "s")
    yield s
    s.close()


def test_a_claim_is_the_first_takers_until_released(store):
    digest = blob(10)[1]
    assert store.claims.take(digest, "") is None  # ours
    theirs = store.claims.take(digest, "", pid=SIBLING)
    assert isinstance(theirs, Claim) and theirs.pid == os.getpid()
    store.claims.writing(digest, b"\x01" * 8)
    assert store.claims.held(digest) == Claim(os.getpid(), b"\x01" * 8, "")
    store.claims.release(digest, pid=SIBLING)  # not the holder: nothing happens
    assert store.claims.held(digest) is not None
    store.claims.release(digest)
    assert store.claims.held(digest) is None
    assert store.claims.take(digest, "", pid=SIBLING) is None


def test_a_dead_workers_claim_is_free_and_its_writes_are_dropped_alone(store):
    d1, d2 = blob(10)[1], blob(11)[1]
    assert store.claims.take(d1, "", pid=DEAD) is None
    assert store.claims.held(d1) is None  # its pid is gone: free
    assert store.claims.take(d1, "") is None  # taken over
    assert store.claims.take(d2, "", pid=DEAD) is None
    data, digest = blob(3 * MiB)
    mine = store.begin_blob(digest, len(data), "P:library/x")
    mine.register()
    mine.write(data[: MiB])
    mine.flush()
    assert store.drop_writes_of(DEAD) == 0  # no write of its own; its claim on d2 goes
    assert store.claims.held(d1) is not None and store._txns.read(
        lambda txn: txn.get(d2.encode(), db=store.claims._db)) is None
    assert store.progress(digest, mine.blob_id)[0] == "pending"
    assert store.drop_writes_of(os.getpid()) == 1  # pending records name their process
    assert store.progress(digest, mine.blob_id)[0] == "gone"


def test_a_kept_claim_tells_a_late_sibling_the_work_was_just_done(store, monkeypatch):
    name = "manifest 1234"
    assert store.claims.take(name, "", pid=SIBLING) is None
    store.claims.release(name, pid=SIBLING, keep=True)  # its GET ended, the manifest stored
    assert store.claims.held(name) is None  # nothing under way: nobody waits for it
    late = store.claims.take(name, "")  # a worker that missed in the store a moment before
    assert isinstance(late, Claim) and late.done and late.pid == SIBLING
    import hubcache.store.claims as claims

    monkeypatch.setattr(claims, "RECENT", 0.0)  # long after: the mark is no reason not to ask
    assert store.claims.take(name, "") is None


def test_a_published_blob_is_not_claimed(store):
    data, digest = blob(1000)
    w = store.begin_blob(digest, len(data), "P:library/x")
    w.write(data)
    w.commit()
    assert store.claims.take(digest, "") is True


def test_reopening_the_store_clears_every_claim(tmp_path):
    s = Store(tmp_path / "s")
    s.claims.take(blob(10)[1], "", pid=SIBLING)
    s.close()
    s = Store(tmp_path / "s")
    try:
        assert s._txns.read(lambda txn: txn.stat(s.claims._db)["entries"]) == 0
    finally:
        s.close()


def test_a_claims_owner_is_kept_hashed():
    cdn = "cdn /blobs/x?signature=secret"
    assert "secret" not in owner_key(cdn) and owner_key(cdn) == owner_key(cdn) and owner_key("") == ""


def _flight(store, flights, digest, resp) -> Flight:
    f = Flight(digest, lambda: resp, lambda size: store.begin_blob(digest, size, "P:library/x"), on_end=flights.end,
               siblings=flights.siblings)
    return flights.add(f).start()


@pytest.fixture
def served_with_siblings(store):
    flights = Flights()
    flights.siblings = Siblings(store)
    server = BlobServer(store, flights.wait, writing=flights.writing)
    yield store, flights, server
    server.stop()


def test_a_flight_follows_a_siblings_download_instead_of_making_its_own(served_with_siblings):
    store, flights, server = served_with_siblings
    data, digest = blob(3 * MiB)
    sibling = store.begin_blob(digest, len(data), "P:library/x")  # the sibling worker's write
    sibling.register()
    store.claims.take(digest, "", pid=SIBLING)
    store.claims.writing(digest, sibling.blob_id, pid=SIBLING)

    async def go():
        mine = ScriptedResponse(200, data)
        flight = _flight(store, flights, digest, mine)
        head = await flight.head()
        assert head.status == 200 and head.blob_id == sibling.blob_id  # its clients follow the sibling's write
        follower = Follower(server.port, server.path(digest, head.blob_id))
        sibling.write(data[: 2 * MiB])
        sibling.flush()
        wait_for(lambda: len(follower.got) >= 2 * MiB - 256 * 1024)  # streamed as the sibling writes
        sibling.write(data[2 * MiB :])
        sibling.commit()
        store.claims.release(digest, pid=SIBLING)
        follower.join(10)
        assert follower.error is None and bytes(follower.got) == data
        flight.join(10)
        assert flight.stored and flight.sibling == SIBLING and flight.received == 0  # nothing downloaded here

    asyncio.run(go())


def test_a_siblings_download_that_ends_without_the_blob_is_taken_over(served_with_siblings):
    store, flights, server = served_with_siblings
    data, digest = blob(2 * MiB)
    sibling = store.begin_blob(digest, len(data), "P:library/x")
    sibling.register()
    store.claims.take(digest, "", pid=SIBLING)
    store.claims.writing(digest, sibling.blob_id, pid=SIBLING)

    async def go():
        flight = _flight(store, flights, digest, ScriptedResponse(200, data))
        head = await flight.head()
        follower = Follower(server.port, server.path(digest, head.blob_id))  # nothing sent yet
        await asyncio.sleep(0.2)
        store.drop_writes_of(SIBLING)  # the sibling died: its supervisor drops what it left
        for _ in range(200):
            await asyncio.sleep(0.02)  # the flight's hand-overs run on this loop
            if flight.done:
                break
        flight.join(10)
        assert flight.stored and flight.sibling == 0 and flight.received == len(data)  # downloaded here
        follower.join(10)
        assert follower.error is None and bytes(follower.got) == data  # it moved to the takeover's write
        raw = store._txns.read(lambda txn: txn.get(digest.encode(), db=store.claims._db))
        assert raw is None, json.loads(raw)  # released after publishing

    asyncio.run(go())


def test_someone_elses_private_download_is_not_followed(served_with_siblings):
    store, flights, _ = served_with_siblings
    data, digest = blob(MiB)
    store.claims.take(digest, owner_key("alice"), pid=SIBLING)

    async def go():
        f = Flight(digest, lambda: ScriptedResponse(200, data), lambda size: store.begin_blob(digest, size, "P:x"),
                   owner="bob", on_end=flights.end, siblings=flights.siblings)
        flights.add(f).start()
        await f.head()
        f.join(10)
        assert f.stored and f.sibling == 0 and f.received == len(data)

    asyncio.run(go())
    assert hashlib.sha256(data).hexdigest() in store.blob_info(digest).digest
