"""Flights and the blob server together, with a scripted upstream: followers get the bytes as they
are written, the last byte only after the digest matched, and a failed download reaches them as a
cut-short body, never as a complete wrong one."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import os
import threading
import time

import pytest

from hubcache.serve.blobserver import BlobServer
from hubcache.serve.flights import Flight, Flights
from hubcache.store import Store
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
