"""Single flight for hubcache's own upstream requests, and the manifest check."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from hubcache.decide import manifests
from hubcache.decide.routes import classify_registry
from hubcache.upstream.singleflight import Shared


def test_concurrent_callers_share_one_run_and_the_next_caller_starts_afresh():
    runs = []

    async def work():
        runs.append(1)
        await asyncio.sleep(0.05)
        return len(runs)

    async def go():
        shared = Shared()
        first = await asyncio.gather(*(shared.run("k", work) for _ in range(10)))
        assert [r for r, _ in first] == [1] * 10 and sum(joined for _, joined in first) == 9
        again, joined = await shared.run("k", work)
        assert (again, joined, len(shared)) == (2, False, 0)

    asyncio.run(go())


def test_a_failure_reaches_every_waiter_and_a_leaving_waiter_does_not_cancel_the_run():
    calls = []

    async def failing():
        calls.append(1)
        await asyncio.sleep(0.05)
        raise ValueError("upstream broke")

    async def go():
        shared = Shared()
        leaver = asyncio.ensure_future(shared.run("k", failing))
        stayers = [asyncio.ensure_future(shared.run("k", failing)) for _ in range(3)]
        await asyncio.sleep(0.01)
        leaver.cancel()  # its client went away
        for s in stayers:
            with pytest.raises(ValueError):
                await s
        assert len(calls) == 1 and len(shared) == 0

    asyncio.run(go())


def test_manifest_check():
    body = b'{"schemaVersion":2}'
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    by_tag = classify_registry("GET", "/v2/library/x/manifests/1")
    by_digest = classify_registry("GET", f"/v2/library/x/manifests/{digest}")
    m = manifests.check(by_tag, "application/vnd.oci.image.manifest.v1+json; charset=utf-8", digest, body)
    assert (m.digest, m.media_type, m.body) == (digest, "application/vnd.oci.image.manifest.v1+json", body)
    assert manifests.check(by_digest, "x", "", body).digest == digest
    assert "expected" in manifests.check(by_tag, "x", "sha256:" + "0" * 64, body)  # upstream's claim is checked
    assert "expected" in manifests.check(by_digest, "x", "", body + b" ")  # the digest asked for is checked
