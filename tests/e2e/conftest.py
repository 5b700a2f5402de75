"""Fixtures for end-to-end tests against the Docker-Hub-shaped upstream (support.hubenv)."""

from __future__ import annotations

import pytest

from support.hubenv import Upstream, missing_prerequisites


@pytest.fixture(scope="session")
def upstream(tmp_path_factory):
    """A started Upstream for the whole session; this process stays in its namespaces
    until the session ends, so every client started by a test sees the fake Hub."""
    why = missing_prerequisites()
    if why:
        pytest.skip(f"e2e upstream unavailable: {why}")
    up = Upstream(tmp_path_factory.mktemp("upstream"))
    up.start()
    try:
        yield up
    finally:
        up.stop()
