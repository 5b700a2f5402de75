"""`hubcache warm`'s sources (files, directories, names) and platform choice, without a network."""

from __future__ import annotations

import pytest

from hubcache.tools.warm import platforms, sources
from hubcache.tools.warm.platforms import Platform


def test_a_list_file_a_directory_and_a_name(tmp_path):
    listing = tmp_path / "images.txt"
    listing.write_text("# comment\n\npostgres:12.2  # db\nquay.io/org/app@sha256:" + "a" * 64 + "\n")
    wanted, skipped = sources.read_source(str(listing), {})
    assert [(w.image, w.origin) for w in wanted] == [("postgres:12.2", f"{listing}:3"),
                                                    ("quay.io/org/app@sha256:" + "a" * 64, f"{listing}:4")]
    assert skipped == []
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "ci").mkdir()
    (repo / "ci/base.yml").write_text("j:\n  image: alpine:$V\n")
    (repo / "sub").mkdir()
    (repo / "sub/pipeline.yml").write_text("include: /ci/base.yml\nvariables:\n  V: '3'\n")
    wanted, _ = sources.read_source(str(repo / "sub/pipeline.yml"), {})  # includes are relative to the repository root
    assert [w.image for w in wanted] == ["alpine:3"]
    (repo / ".gitlab-ci.yml").write_text("j:\n  image: $X/y\n")
    wanted, _ = sources.read_source(str(repo), {"X": "ghcr.io/o"})
    assert [w.image for w in wanted] == ["ghcr.io/o/y"]
    assert sources.read_source("redis:7", {})[0] == [sources.Wanted("redis:7", "argument")]


@pytest.mark.parametrize("source", ["./missing.yml", "/nowhere/.gitlab-ci.yml", "images.txt"])
def test_a_missing_file_is_an_error_not_an_image_name(source, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(sources.SourceError, match="no such file"):
        sources.read_source(source, {})


def test_a_directory_without_a_ci_file(tmp_path):
    with pytest.raises(sources.SourceError, match="without a .gitlab-ci.yml"):
        sources.read_source(str(tmp_path), {})


def test_check_dedupes_by_canonical_name_and_names_bad_references():
    good, bad = sources.check([sources.Wanted("postgres", "a"), sources.Wanted("docker.io/library/postgres:latest", "b"),
                               sources.Wanted("index.docker.io/library/postgres", "c"), sources.Wanted("Bad Name", "d")])
    assert [(w.image, w.origin) for w in good] == [("postgres", "a")]
    assert [(s.text, s.reason) for s in bad] == [("Bad Name", "not an image reference")]
    assert sources.canonical("ghcr.io/o/a") == "ghcr.io/o/a:latest"


INDEX = {"manifests": [
    {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
    {"digest": "sha256:arm64", "platform": {"os": "linux", "architecture": "arm64"}},  # no variant: v8
    {"digest": "sha256:armv6", "platform": {"os": "linux", "architecture": "arm", "variant": "v6"}},
    {"digest": "sha256:armv7", "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
    {"digest": "sha256:att", "platform": {"os": "unknown", "architecture": "unknown"}},
]}


@pytest.mark.parametrize("wanted, digests, missing", [
    (["linux/amd64"], ["sha256:amd"], []),
    (["linux/arm64/v8"], ["sha256:arm64"], []),
    (["arm64"], ["sha256:arm64"], []),
    (["linux/arm/v7", "linux/amd64"], ["sha256:armv7", "sha256:amd"], []),
    (["linux/s390x"], [], ["linux/s390x"]),
    (["windows/amd64"], [], ["windows/amd64"]),
])
def test_select_platforms(wanted, digests, missing):
    chosen, absent = platforms.select(INDEX, [platforms.parse(w) for w in wanted])
    assert [c["digest"] for c in chosen] == digests
    assert [str(p) for p in absent] == missing


def test_parse_and_host():
    assert platforms.parse("linux/arm64") == Platform("linux", "arm64", "v8")
    assert str(platforms.parse("Linux/ARM/v7")) == "linux/arm/v7"
    for bad in ("", "linux//v7", "a/b/c/d"):
        with pytest.raises(ValueError, match="OS/ARCH"):
            platforms.parse(bad)
    assert platforms.of_host().os == "linux"


class _Resp:
    """What http.client gives Client.get: status, headers, a body read in chunks."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, headers, body
        self.will_close = False

    def getheaders(self):
        return list(self.headers.items())

    def read(self, n: int = -1) -> bytes:
        out, self.body = (self.body, b"") if n < 0 else (self.body[:n], self.body[n:])
        return out

    def isclosed(self) -> bool:
        return not self.body


def test_redirects_are_followed_and_the_token_stays_with_the_registry(monkeypatch, tmp_path):
    """A blob's 307 (to hubcache's blob listener or a storage host) is followed; the registry's
    Bearer token is not sent to the other host, and that host is not held to hubcache's CA alone."""
    from hubcache.tools.doctor.proxyenv import ProxyURL
    from hubcache.tools.warm.client import Client

    ca = tmp_path / "ca.pem"
    ca.write_text(open("/etc/ssl/certs/ca-certificates.crt").read())
    client = Client(ProxyURL("127.0.0.1", 1), str(ca))
    sent = []
    answers = [_Resp(307, {"Location": "https://blobs.example/b/1?sig=x"}), _Resp(200, {}, b"abc")]

    def send(method, url, headers, own):
        sent.append((url, dict(headers), own))
        return answers.pop(0)

    monkeypatch.setattr(client, "_send", send)
    chunks: list[bytes] = []
    answer = client.get("https://registry-1.docker.io/v2/x/blobs/sha256:1", {"Authorization": "Bearer t"}, chunks.append)
    assert answer.status == 200 and b"".join(chunks) == b"abc" and answer.url == "https://blobs.example/b/1?sig=x"
    assert sent == [("https://registry-1.docker.io/v2/x/blobs/sha256:1", {"Authorization": "Bearer t"}, True),
                    ("https://blobs.example/b/1?sig=x", {}, False)]
