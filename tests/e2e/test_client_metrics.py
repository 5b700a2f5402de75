"""Per-client metrics on a real proxy: two runners with their own proxy logins (an htpasswd file,
mitmproxy's proxyauth) pull through one hubcache; /metrics counts each one's requests, by outcome,
and bytes, from upstream or the store, exactly as the log lines name them; with
hubcache_metrics_clients=1 the second runner is counted under `other`; a client without a login
is named by its address, without the port; 0 names nobody. Passwords never reach the page."""

from __future__ import annotations

import collections
import json
import re
import urllib.request

import bcrypt
import pytest

from harness.clients import skopeo_copy
from harness.proxy import free_port

pytestmark = pytest.mark.e2e
LOGINS = {"runner-a": "pw-of-runner-a", "runner-b": "pw-of-runner-b"}
SMALL, LARGE = 300_000, 2_600_000  # the large layer goes by hubcache's own TLS listener (hubcache_direct_min 2m)


def htpasswd(path, logins: dict[str, str]):
    path.write_text("".join(f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(4)).decode()}\n"
                            for user, pw in logins.items()))
    path.chmod(0o600)  # hubcache refuses an htpasswd file others can read
    return path


def page_of(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()


def series(page: str, name: str) -> dict[tuple[str, ...], float]:
    """name_total{a="x",b="y"} v -> {("x", "y"): v}, labels in the page's order."""
    found = re.findall(rf'^{name}_total\{{([^}}]*)\}} (\S+)$', page, re.M)
    return {tuple(re.findall(r'="([^"]*)"', labels)): float(v) for labels, v in found}


def by(values: dict[tuple[str, ...], float], *keep: int) -> dict[tuple[str, ...], float]:
    """Sums over the labels not kept (e.g. over clients)."""
    out: dict[tuple[str, ...], float] = collections.defaultdict(float)
    for labels, v in values.items():
        out[tuple(labels[i] for i in keep)] += v
    return dict(out)


def logged(hub) -> collections.Counter:
    """(login, outcome) of every request line of the JSON log (client: login@address:port)."""
    lines = [json.loads(ln) for ln in hub.log().splitlines() if ln.startswith("{")]
    return collections.Counter((r["client"].split("@")[0] if "@" in r["client"] else r["client"].rsplit(":", 1)[0],
                                r["outcome"]) for r in lines if r.get("event") == "request")


def pull(image: str, dest, hub, certs, login: str = ""):
    port = hub.url.rsplit(":", 1)[1]
    proxy = f"http://{login}:{LOGINS[login]}@127.0.0.1:{port}" if login else hub.url
    res = skopeo_copy(image, dest, proxy=proxy, cert_dir=certs)
    assert res.returncode == 0, res.stderr


def test_each_proxy_login_has_its_own_requests_and_bytes(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/perclient", "1", [(SMALL, 9351), (LARGE, 9352)])
    assert max(img.layer_sizes) >= 2 << 20  # the direct path is part of what is counted
    content = len(img.manifest_bytes) + len(img.config_bytes) + sum(img.layer_sizes)
    port = free_port()
    hub = start_hubcache(f"proxyauth=@{htpasswd(tmp_path / 'htpasswd', LOGINS)}",
                         f"hubcache_metrics_listen=127.0.0.1:{port}", "hubcache_log_format=json")
    pull("docker.io/library/perclient:1", tmp_path / "a", hub, certs, login="runner-a")  # cold
    pull("docker.io/library/perclient:1", tmp_path / "b", hub, certs, login="runner-b")  # warm
    page = page_of(port)
    requests = series(page, "hubcache_client_requests")
    sent = series(page, "hubcache_client_bytes")

    # every request is counted under its client and outcome exactly as its log line names them
    assert collections.Counter({k: int(v) for k, v in requests.items()}) == logged(hub)
    assert {client for client, _ in requests} == {"runner-a", "runner-b"}
    assert requests[("runner-a", "miss")] == 3 + 1  # manifest, config, two layers: fetched upstream
    assert ("runner-b", "miss") not in requests and requests[("runner-b", "hit")] >= 4  # all from the store
    # bytes: runner-a's content came from upstream, byte for byte; runner-b's all from the store
    assert sent[("runner-a", "upstream")] == content
    assert ("runner-b", "upstream") not in sent and sent[("runner-b", "store")] >= content
    # the per-client counters add up to the totals
    assert by(requests, 1) == by(series(page, "hubcache_requests"), 1)  # by outcome
    assert by(sent, 1) == by(series(page, "hubcache_bytes"), 0)  # by source
    for secret in LOGINS.values():
        assert secret not in page and secret not in hub.log()


def test_past_hubcache_metrics_clients_the_next_login_counts_under_other(upstream, start_hubcache, certs, tmp_path):
    img = upstream.push_image("library/perclient-other", "1", [(SMALL, 9353)])
    content = len(img.manifest_bytes) + len(img.config_bytes) + sum(img.layer_sizes)
    port = free_port()
    hub = start_hubcache(f"proxyauth=@{htpasswd(tmp_path / 'htpasswd', LOGINS)}", "hubcache_metrics_clients=1",
                         f"hubcache_metrics_listen=127.0.0.1:{port}", "hubcache_log_format=json")
    pull("docker.io/library/perclient-other:1", tmp_path / "a", hub, certs, login="runner-a")
    pull("docker.io/library/perclient-other:1", tmp_path / "b", hub, certs, login="runner-b")
    page = page_of(port)
    requests = series(page, "hubcache_client_requests")
    sent = series(page, "hubcache_client_bytes")
    assert {client for client, _ in requests} | {client for client, _ in sent} == {"runner-a", "other"}
    assert "runner-b" not in page
    seen = logged(hub)
    assert {outcome: int(v) for (client, outcome), v in requests.items() if client == "other"} == \
        {outcome: n for (login, outcome), n in seen.items() if login == "runner-b"}
    assert sent[("runner-a", "upstream")] == content
    assert ("other", "upstream") not in sent and sent[("other", "store")] >= content
    assert by(requests, 1) == by(series(page, "hubcache_requests"), 1)


def test_a_client_without_a_login_is_named_by_its_address_and_zero_names_nobody(upstream, start_hubcache, certs, tmp_path):
    upstream.push_image("library/perclient-addr", "1", [(SMALL, 9354)])
    named, off = free_port(), free_port()
    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{named}", name="named")
    pull("docker.io/library/perclient-addr:1", tmp_path / "pulled-named", hub, certs)
    requests = series(page_of(named), "hubcache_client_requests")
    assert {client for client, _ in requests} == {"127.0.0.1"} and requests[("127.0.0.1", "miss")] == 3

    hub = start_hubcache(f"hubcache_metrics_listen=127.0.0.1:{off}", "hubcache_metrics_clients=0", name="off")
    pull("docker.io/library/perclient-addr:1", tmp_path / "pulled-off", hub, certs)
    page = page_of(off)
    assert series(page, "hubcache_client_requests") == {} and series(page, "hubcache_client_bytes") == {}
    assert series(page, "hubcache_requests")  # the other metrics are there
