"""What the unit tests share."""

from __future__ import annotations

import pytest
from mitmproxy.test import taddons

from hubcache.hooks.addon import HubCache


@pytest.fixture
def hub_ctx(tmp_path):
    """The addon with its store open in tmp_path, driven by mitmproxy's test context."""
    addon = HubCache()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, hubcache_store=str(tmp_path / "store"))
        addon._running = True  # as after the running hook, without a proxy server
        addon.configure({"hubcache_store"})
        yield addon, tctx
    addon.done()
