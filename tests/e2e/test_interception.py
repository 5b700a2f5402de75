"""What hubcache intercepts and what it answers: other hosts untouched, Accept honoured,
multi-platform images, and the addon loaded into plain mitmdump."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
from pathlib import Path

import pytest

from harness.clients import dir_files, proxied_request, skopeo_copy
from harness.hubenv import CDN_HOST, REGISTRY_HOST
from harness.proxy import Proxy

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def tls_through(proxy: Proxy, target: str, server_name: str, cafile: Path) -> dict:
    """CONNECT through the proxy, then a TLS handshake trusting only `cafile`; the peer cert."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    ctx = ssl.create_default_context(cafile=str(cafile))
    with ctx.wrap_socket(sock, server_hostname=server_name) as tls:
        return tls.getpeercert()


def test_other_hosts_are_tunnelled_untouched(upstream, start_hubcache):
    hub = start_hubcache()
    # 127.0.0.3 is not a registry host: the client talks TLS with the real server through the tunnel
    cert = tls_through(hub, "127.0.0.3:443", "127.0.0.3", upstream.ca_cert)
    assert dict(x[0] for x in cert["issuer"])["commonName"] == "hubcache test CA"
    # the CDN host is intercepted: the same check trusting only the upstream CA fails
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_through(hub, f"{CDN_HOST}:443", CDN_HOST, upstream.ca_cert)


def get_manifest(proxy: Proxy, path: str, accept: list[str]) -> tuple[int, dict, bytes]:
    return proxied_request(proxy.port, proxy.ca_cert, "GET", REGISTRY_HOST, path, [("Accept", a) for a in accept])


def test_a_cached_media_type_the_client_did_not_accept_is_not_served(upstream, start_hubcache):
    idx = upstream.push_index("library/accept", "1", {"amd64": [(4096, 1)], "arm64": [(4096, 2)]})
    hub = start_hubcache()
    status, headers, body = get_manifest(hub, "/v2/library/accept/manifests/1", [OCI_INDEX, OCI_MANIFEST])
    assert (status, headers["content-type"], body) == (200, OCI_INDEX, idx.manifest_bytes)
    mark = upstream.mark()
    status, headers, body = get_manifest(hub, "/v2/library/accept/manifests/1", [OCI_INDEX])
    assert (status, body) == (200, idx.manifest_bytes)
    assert upstream.requests_since(mark) == []  # cached and acceptable: served here
    status, headers, body = get_manifest(hub, "/v2/library/accept/manifests/1", [OCI_MANIFEST])
    assert headers.get("content-type") != OCI_INDEX and body != idx.manifest_bytes
    assert [r.method for r in upstream.requests_since(mark) if "/manifests/" in r.path] == ["GET"]


def test_multi_platform_pull_counts_only_the_platform_fetched(upstream, start_hubcache, certs, tmp_path):
    idx = upstream.push_index("library/multi", "1", {"amd64": [(300_000, 3)], "arm64": [(300_000, 4)]})
    hub = start_hubcache()
    mark = upstream.mark()
    res = skopeo_copy("docker.io/library/multi:1", tmp_path / "cold", proxy=hub.url, cert_dir=certs,
                      extra_args=["--override-arch", "amd64", "--override-os", "linux"])
    assert res.returncode == 0, res.stderr
    manifest_gets = [r.path for r in upstream.requests_since(mark) if r.method == "GET" and "/manifests/" in r.path]
    assert sorted(manifest_gets) == sorted(
        ["/v2/library/multi/manifests/1", f"/v2/library/multi/manifests/{idx.manifests['amd64'].manifest_digest}"]
    )
    arm = idx.manifests["arm64"]
    assert not any(arm.layer_digests[0] in r.path for r in upstream.requests_since(mark))
    mark = upstream.mark()
    res = skopeo_copy("docker.io/library/multi:1", tmp_path / "warm", proxy=hub.url, cert_dir=certs,
                      extra_args=["--override-arch", "amd64", "--override-os", "linux"])
    assert res.returncode == 0, res.stderr
    assert upstream.requests_since(mark) == []
    assert (tmp_path / "warm" / "manifest.json").read_bytes() == idx.manifests["amd64"].manifest_bytes


def test_an_index_with_attestations_is_kept_whole_and_its_attestations_cost_no_pull_unless_asked(
        upstream, start_hubcache, certs, tmp_path):
    """Hub's multi-platform images carry an attestation manifest per platform (unknown/unknown):
    stored and served by digest like any child, the index never trimmed, and pulled upstream
    only when a client asks for them."""
    idx = upstream.push_index("library/attested", "1", {"amd64": [(300_000, 8)], "arm64": [(300_000, 9)]},
                              attestations=True)
    attestations = [m["digest"] for m in json.loads(idx.manifest_bytes)["manifests"]
                    if m.get("annotations", {}).get("vnd.docker.reference.type") == "attestation-manifest"]
    assert len(attestations) == 2
    hub = start_hubcache()
    mark = upstream.mark()
    one = skopeo_copy("docker.io/library/attested:1", tmp_path / "one", proxy=hub.url, cert_dir=certs,
                      extra_args=["--override-arch", "amd64", "--override-os", "linux"])
    assert one.returncode == 0, one.stderr
    gets = sorted(r.path for r in upstream.requests_since(mark) if r.method == "GET" and "/manifests/" in r.path)
    assert gets == sorted(["/v2/library/attested/manifests/1",
                           f"/v2/library/attested/manifests/{idx.manifests['amd64'].manifest_digest}"])
    direct = skopeo_copy("docker.io/library/attested:1", tmp_path / "direct", proxy=None, cert_dir=certs, all_platforms=True)
    assert direct.returncode == 0, direct.stderr
    whole = skopeo_copy("docker.io/library/attested:1", tmp_path / "all", proxy=hub.url, cert_dir=certs, all_platforms=True)
    assert whole.returncode == 0, whole.stderr
    assert dir_files(tmp_path / "all") == dir_files(tmp_path / "direct")
    assert (tmp_path / "all" / "manifest.json").read_bytes() == idx.manifest_bytes  # not trimmed
    with upstream.down():  # every attestation and its blobs are in the store now
        for digest in attestations:
            status, headers, body = get_manifest(hub, f"/v2/library/attested/manifests/{digest}", [OCI_MANIFEST])
            assert status == 200 and hashlib.sha256(body).hexdigest() == digest.split(":")[1]
        again = skopeo_copy(f"docker.io/library/attested@{idx.digest}", tmp_path / "again", proxy=hub.url,
                            cert_dir=certs, all_platforms=True)
        assert again.returncode == 0, again.stderr
        assert dir_files(tmp_path / "again") == dir_files(tmp_path / "direct")


class MitmdumpWithAddon(Proxy):
    def command(self) -> list[str]:
        return super().command() + ["-s", str(ROOT / "addon" / "hubcache_addon.py"), "--set", f"hubcache_store={self.store}"]


def test_addon_loads_in_plain_mitmdump(upstream, confdir, certs, tmp_path):
    upstream.push_image("library/viamitmdump", "1", [(500_000, 5)])
    with MitmdumpWithAddon(tmp_path / "m", upstream.ca_cert, confdir=confdir, kind="mitmdump") as proxy:
        cold = skopeo_copy("docker.io/library/viamitmdump:1", tmp_path / "cold", proxy=proxy.url, cert_dir=certs)
        assert cold.returncode == 0, cold.stderr
        mark = upstream.mark()
        warm = skopeo_copy("docker.io/library/viamitmdump:1", tmp_path / "warm", proxy=proxy.url, cert_dir=certs)
        assert warm.returncode == 0, warm.stderr
        assert upstream.requests_since(mark) == []
        assert "hubcache: hit" in proxy.log()
