"""Limits on what clients hold (issue 15 item 3): 2,000 idle client connections do not stop a pull
by another client; a client over hubcache_client_max_per_address or hubcache_client_max is
refused while other clients pull; a connection that sends no request is closed after
hubcache_client_idle seconds; every connection's descriptors are given back when it closes.

The idle connections come from loopback source addresses of their own (127.0.0.10 and up, in the
test's network namespace); skopeo pulls from 127.0.0.1."""

from __future__ import annotations

import itertools
import os
import re
import time
import urllib.request

import pytest

from harness.clients import dir_files, pull_ok, skopeo_copy
from harness.proxy import free_port

pytestmark = pytest.mark.e2e
MiB = 1 << 20
REG = "registry-1.docker.io"
_seeds = itertools.count(91000)


def push(upstream, name: str):
    """An image of the shape the other e2e tests pull: a small config, a 300 kB, 1 MiB and 4 MiB layer
    (the 4 MiB one through hubcache's own TLS listener)."""
    return upstream.push_image(name, "1", [(size, next(_seeds)) for size in (300_000, 1 * MiB, 4 * MiB)])


def metric(port: int, name: str, **labels: str) -> float:
    page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}(?:{{{want}}})? (\S+)$", page, re.M)
    return float(m[1]) if m else 0.0


def wait_for(predicate, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:  # the metrics listener is not up yet
            pass
        time.sleep(0.1)
    return predicate()


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def read_to_end(sock, request: str) -> bytes:
    """Send one request head and read until the proxy closes the connection."""
    sock.sendall(request.encode() + b"\r\n\r\n")
    sock.settimeout(10)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def settle(idle, port: int) -> None:
    """Wait until no client connection is open: the harness's readiness probe of the proxy port is
    released (one round trip through the proxy first, so that the probe was seen)."""
    idle.close(idle.open(1, "127.0.0.2", connect_to=f"{REG}:443"))
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 0)


def timed_pull(ref: str, dest, hub, certs) -> float:
    start = time.monotonic()
    pull_ok(ref, dest, hub, certs)
    return time.monotonic() - start


def test_two_thousand_idle_connections_do_not_stop_a_pull(upstream, start_hubcache, idle_clients, certs, tmp_path):
    for i in range(3):
        push(upstream, f"library/idleload{i}")
    port = free_port()
    # started with the soft open-file limit many hosts have (1024): hubcache raises its own
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{port}", "hubcache_client_idle=300",
                         wrap=["prlimit", "--nofile=1024:20000", "--"])
    assert hub.proc is not None
    usual = [timed_pull(f"docker.io/library/idleload{i}:1", tmp_path / f"usual{i}", hub, certs) for i in range(2)]
    base_fds, base_rss = fds(hub.proc.pid), hub.rss_mb()["VmRSS"]

    idle = idle_clients(hub.port)
    silent = [s for i in range(2) for s in idle.open(500, f"127.0.0.{10 + i}")]  # sent nothing at all
    tunnels = [s for i in range(2) for s in idle.open(500, f"127.0.0.{20 + i}", connect_to=f"{REG}:443")]  # a CONNECT, then nothing
    held = silent + tunnels
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 2000), metric(port, "hubcache_client_connections")
    held_fds, held_rss = fds(hub.proc.pid), hub.rss_mb()["VmRSS"]
    assert held_fds >= base_fds + 2000  # every one of them is open in hubcache, past the 1024 it started with

    mark = upstream.mark()
    took = timed_pull("docker.io/library/idleload2:1", tmp_path / "during", hub, certs)
    direct = pull_ok("docker.io/library/idleload2:1", tmp_path / "direct", None, certs)
    assert dir_files(tmp_path / "during") == dir_files(direct)
    assert sum(1 for r in upstream.requests_since(mark) if r.host == REG and "/manifests/" in r.path) == 2  # hubcache's and the direct one
    usual_s = max(usual)
    print(f"pull: usual {usual_s:.2f} s, with 2000 idle connections {took:.2f} s; hubcache fds {base_fds} -> {held_fds}, "
          f"RSS {base_rss:.0f} -> {held_rss:.0f} MiB ({(held_rss - base_rss) * 1024 / 2000:.1f} KiB per idle connection)")
    assert took <= max(3 * usual_s, usual_s + 3), f"the pull took {took:.2f} s, usually {usual_s:.2f} s"
    assert not any(idle.closed_by_peer(held, within=0.5)), "hubcache dropped idle connections under its caps"

    idle.close()  # released: hubcache gives their descriptors back
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 0)
    assert wait_for(lambda: fds(hub.proc.pid) <= base_fds + 10), (fds(hub.proc.pid), base_fds)
    assert "fd_limit_low" not in hub.log()  # 20000 is enough for 8192 * 3 + 1024


def test_over_the_per_address_cap_that_client_is_refused_and_the_others_pull(upstream, start_hubcache, idle_clients,
                                                                             certs, tmp_path):
    push(upstream, "library/capped")
    port = free_port()
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{port}", "hubcache_client_max_per_address=50",
                         "hubcache_client_idle=3")
    idle = idle_clients(hub.port)
    settle(idle, port)
    idle.open(50, "127.0.0.30", connect_to=f"{REG}:443")  # a request each: held past hubcache_client_idle
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 50)  # taken before any more come
    over = idle.open(5, "127.0.0.30")
    assert all(idle.closed_by_peer(over, within=10)), "connections over the per-address cap were kept"
    for request in (f"CONNECT {REG}:443 HTTP/1.1\r\nHost: {REG}:443", "GET http://example.test/ HTTP/1.1\r\nHost: example.test"):
        answer = read_to_end(idle.open(1, "127.0.0.30")[0], request)  # a 503 naming the cap, then the end
        assert answer.startswith(b"HTTP/1.1 503 hubcache: 50 connections are open from 127.0.0.30"), answer
        assert b"(hubcache_client_max_per_address)" in answer.split(b"\r\n")[0], answer
    pull_ok("docker.io/library/capped:1", tmp_path / "other", hub, certs)  # another address: served
    # skopeo's connections from 127.0.0.1 close as it exits: wait until hubcache has let them go,
    # or one of them still counts against the 50 opened next (seen: the 50th then got the 503)
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 50)

    mine = idle.open(50, "127.0.0.1", connect_to=f"{REG}:443")  # now skopeo's own address is full
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 100)
    refused = skopeo_copy("docker.io/library/capped:1", tmp_path / "refused", proxy=hub.url, cert_dir=certs, timeout=120)
    print("refused pull:", refused.stderr.strip()[-400:])
    assert refused.returncode != 0 and "127.0.0.1, the most from one address (hubcache_client_max_per_address)" in refused.stderr
    assert metric(port, "hubcache_client_refused_total", cap="hubcache_client_max_per_address") >= 6
    lines = [line for line in hub.log().splitlines() if "refused" in line and "hubcache_client_max_per_address" in line]
    assert any("127.0.0.30" in line for line in lines) and any("127.0.0.1" in line for line in lines), hub.log()[-3000:]
    assert len([line for line in lines if "127.0.0.30" in line]) == 1  # one warning a minute per address, not one per connection

    idle.close(mine)  # released: the same address pulls again
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 50)
    pull_ok("docker.io/library/capped:1", tmp_path / "again", hub, certs)


def test_over_the_total_cap_every_new_client_waits_until_one_closes(upstream, start_hubcache, idle_clients, certs, tmp_path):
    push(upstream, "library/totalcap")
    port = free_port()
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{port}", "hubcache_client_max=100", "hubcache_client_idle=3")
    idle = idle_clients(hub.port)
    settle(idle, port)
    first = [idle.open(25, f"127.0.0.{40 + i}", connect_to=f"{REG}:443") for i in range(4)]
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 100)  # taken before any more come
    over = idle.open(3, "127.0.0.50")
    assert all(idle.closed_by_peer(over, within=10))
    refused = skopeo_copy("docker.io/library/totalcap:1", tmp_path / "refused", proxy=hub.url, cert_dir=certs, timeout=120)
    assert refused.returncode != 0 and "the most hubcache takes (hubcache_client_max)" in refused.stderr
    assert "hubcache_client_max" in hub.log()
    idle.close(first[0])
    pull_ok("docker.io/library/totalcap:1", tmp_path / "after", hub, certs)


def test_a_connection_that_sends_no_request_is_closed_after_hubcache_client_idle(upstream, start_hubcache, idle_clients):
    port = free_port()
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{port}", "hubcache_client_idle=2")
    idle = idle_clients(hub.port)
    silent = idle.open(20, "127.0.0.60")
    spoke = idle.open(20, "127.0.0.61", connect_to=f"{REG}:443")
    start = time.monotonic()
    assert all(idle.closed_by_peer(silent, within=10))
    waited = time.monotonic() - start
    assert 1.5 <= waited <= 10, waited
    assert not any(idle.closed_by_peer(spoke, within=1))  # a CONNECT was a request: mitmproxy's tcp_timeout applies to it
    assert metric(port, "hubcache_client_idle_closed_total") == 20
    assert wait_for(lambda: metric(port, "hubcache_client_connections") == 20)
    lines = [line for line in hub.log().splitlines() if "sent no request" in line]
    assert len(lines) == 1 and "127.0.0.60" in lines[0] and "hubcache_client_idle" in lines[0], lines


def test_a_hard_open_file_limit_below_what_the_caps_need_is_a_warning_with_the_fix(start_hubcache):
    hub = start_hubcache(wrap=["prlimit", "--nofile=4096:4096", "--"])  # hubcache_client_max 8192 needs 25600
    line = next((line for line in hub.log().splitlines() if "open-file limit 4096" in line), None)
    assert line and "LimitNOFILE=25600" in line and "hubcache_client_max to 1024" in line, hub.log()[-2000:]
    assert hub.proc is not None and hub.proc.poll() is None  # a warning: it runs
