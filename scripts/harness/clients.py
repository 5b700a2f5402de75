"""Registry clients for end-to-end tests (skopeo for now).

Pulls go to skopeo's `dir:` layout: `manifest.json` holds the manifest bytes as
served, and each blob is a file named by its hex digest, exactly as downloaded
(no decompression, no re-encoding), so tests compare bytes and digests with
plain file reads.
"""

from __future__ import annotations

import http.client
import os
import shutil
import ssl
import subprocess
from pathlib import Path

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY")


def make_cert_dir(path: Path, *pem_files: Path) -> Path:
    """Write a containers-style cert dir: every `*.crt` in it is a trusted CA."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for i, pem in enumerate(pem_files):
        shutil.copyfile(pem, path / f"ca-{i}.crt")
    return path


def client_env(proxy: str | None, env: dict | None = None) -> dict:
    """os.environ without any proxy variable, then HTTPS_PROXY if given, then `env`.

    Go clients bypass a proxy for 127.0.0.1/localhost whatever NO_PROXY says:
    always address the upstream by its host names.
    """
    out = {k: v for k, v in os.environ.items() if k.upper() not in PROXY_VARS}
    if proxy:
        out["HTTPS_PROXY"] = out["https_proxy"] = proxy
    out.update(env or {})
    return out


def _policy_file(dest_dir: Path) -> Path:
    # Our own signature policy: the machine's /etc/containers/policy.json may be absent or strict.
    policy = dest_dir.parent / f".{dest_dir.name}.policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
    return policy


def skopeo_copy(
    src_ref: str,
    dest_dir: Path,
    *,
    proxy: str | None,
    cert_dir: Path,
    env: dict | None = None,
    creds: str | None = None,
    all_platforms: bool = False,
    extra_args: list[str] | tuple[str, ...] = (),
    timeout: float = 600,
    authfile: Path | None = None,
) -> subprocess.CompletedProcess:
    """`skopeo copy docker://SRC dir:DEST`, through `proxy` (e.g. "http://hubcache.test:8080").

    src_ref: "docker.io/library/alpine:3.19" (a "docker://" prefix is optional).
    creds: "user:password" or None for an anonymous pull. authfile: a docker config.json whose
    `auths` login for the registry is used instead (Upstream.docker_config). Never raises on a
    failed copy: check `.returncode` and `.stderr`.
    """
    dest_dir = Path(dest_dir)
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    ref = src_ref if src_ref.startswith("docker://") else "docker://" + src_ref
    cmd = ["skopeo", "--policy", str(_policy_file(dest_dir)), "copy", "--quiet",
           "--src-cert-dir", str(cert_dir)]
    if authfile is not None:
        cmd += ["--src-authfile", str(authfile)]
    else:
        cmd += ["--src-creds", creds] if creds else ["--src-no-creds"]
    if all_platforms:
        cmd.append("--all")
    cmd += [*extra_args, ref, f"dir:{dest_dir}"]
    return subprocess.run(
        cmd, env=client_env(proxy, env), capture_output=True, text=True, timeout=timeout
    )


def dir_blob(dest_dir: Path, digest: str) -> Path:
    """Path of a blob inside a `dir:` layout written by skopeo_copy."""
    return Path(dest_dir) / digest.split(":", 1)[1]


def https_connection(host: str, tls: ssl.SSLContext, proxy_port: int | None = None) -> http.client.HTTPSConnection:
    """A connection to host:443, straight or through the proxy at 127.0.0.1:proxy_port (CONNECT,
    then TLS end to end, as registry clients do)."""
    if proxy_port is None:
        return http.client.HTTPSConnection(host, 443, context=tls, timeout=60)
    conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=tls, timeout=60)
    conn.set_tunnel(host, 443)
    return conn


def send(conn: http.client.HTTPSConnection, method: str, path: str,
         headers: list[tuple[str, str]] = ()) -> tuple[int, dict[str, str], bytes]:
    """One request on `conn`; repeated headers (several Accept lines) are sent as given.
    Returns (status, lower-case headers, body)."""
    conn.putrequest(method, path)
    for k, v in headers:
        conn.putheader(k, v)
    conn.endheaders()
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def proxied_request(proxy_port: int, cafile: Path, method: str, host: str, path: str,
                    headers: list[tuple[str, str]] = ()) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request through the proxy at 127.0.0.1:proxy_port, trusting `cafile`."""
    conn = https_connection(host, ssl.create_default_context(cafile=str(cafile)), proxy_port)
    try:
        return send(conn, method, path, headers)
    finally:
        conn.close()


def pull_ok(ref: str, dest: Path, proxy, cert_dir: Path) -> Path:
    """skopeo_copy through `proxy` (a harness.proxy.Proxy, or None for a direct pull) that must work."""
    res = skopeo_copy(ref, dest, proxy=proxy.url if proxy else None, cert_dir=cert_dir)
    assert res.returncode == 0, f"pull of {ref} failed: {res.stderr}"
    return Path(dest)


def dir_files(d: Path) -> dict[str, bytes]:
    """Manifest and blobs of a `dir:` pull, by file name, for byte-for-byte comparison."""
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir()) if p.name != "version"}


def skopeo_push(src_dir: Path, dest_ref: str, *, proxy: str | None, cert_dir: Path, creds: str,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """`skopeo copy dir:SRC docker://DEST` with a login, through `proxy` (None: direct), digests
    preserved. Never raises on a failed push: check `.returncode` and `.stderr`."""
    src_dir = Path(src_dir)
    ref = dest_ref if dest_ref.startswith("docker://") else "docker://" + dest_ref
    cmd = ["skopeo", "--policy", str(_policy_file(src_dir)), "copy", "--quiet", "--preserve-digests",
           "--dest-cert-dir", str(cert_dir), "--dest-creds", creds, f"dir:{src_dir}", ref]
    env = {"REGISTRY_AUTH_FILE": str(src_dir.parent / f".{src_dir.name}.auth.json")}  # not the machine's logins
    return subprocess.run(cmd, env=client_env(proxy, env), capture_output=True, text=True, timeout=timeout)


def skopeo_list_tags(ref: str, *, proxy: str | None, cert_dir: Path, creds: str | None = None,
                     timeout: float = 120) -> subprocess.CompletedProcess:
    """`skopeo list-tags docker://REF` (anonymous unless `creds`), through `proxy` (None: direct)."""
    ref = ref if ref.startswith("docker://") else "docker://" + ref
    cmd = ["skopeo", "list-tags", "--cert-dir", str(cert_dir)]
    cmd += ["--creds", creds] if creds else ["--no-creds"]
    return subprocess.run(cmd + [ref], env=client_env(proxy), capture_output=True, text=True, timeout=timeout)


def direct_request(cafile: Path, method: str, host: str, path: str,
                   headers: list[tuple[str, str]] = ()) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request straight to `host` (no proxy), trusting `cafile`: what the registry
    itself answers, to compare with hubcache's answer."""
    conn = https_connection(host, ssl.create_default_context(cafile=str(cafile)))
    try:
        return send(conn, method, path, headers)
    finally:
        conn.close()


def warm_pull_ok(upstream, hub, ref: str, dest: Path, expected: Path, cert_dir: Path) -> None:
    """A pull through `hub` that the store answers whole: the same files as `expected` (a direct
    pull's), and not one request at any upstream host."""
    mark = upstream.mark()
    res = skopeo_copy(ref, dest, proxy=hub.url, cert_dir=cert_dir)
    assert res.returncode == 0, res.stderr
    assert dir_files(dest) == dir_files(expected)
    assert upstream.requests_since(mark) == []
