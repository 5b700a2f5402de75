"""`hubcache doctor`: run on a runner host, checks that the host pulls Docker Hub through hubcache.

One line per check, `OK`, `FAIL` (with the fix in one sentence) or `SKIP` (could not check, and
why). Exit code 0 when every check that ran passed, 1 otherwise.

The pure parts (proxy URLs, NO_PROXY, /proc/<pid>/environ, `systemctl show`, daemon.json, the
verdicts and their messages) are functions of their own, tested without a network; `run()` does the
I/O. Nothing here needs root except reading another user's /proc/<pid>/environ, and nothing is
changed on the host. The test pull sends only `GET /v2/`, an anonymous token request and a
manifest HEAD (Docker Hub does not count HEADs against the pull limit); only when the HEAD fails,
a manifest GET to show the error message.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import re
import shlex
import socket
import ssl
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlencode, urlsplit

from hubcache.serve.blobserver import DIRECT_HOST

REGISTRY = "registry-1.docker.io"
DEFAULT_PROXY = "http://127.0.0.1:3128"
DEFAULT_IMAGE = "library/hello-world:latest"
DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_PIDFILE = "/var/run/docker.pid"
GUIDE = "docs/runner-guide.md"
TIMEOUT = 10.0
# Where distributions keep the bundle that update-ca-certificates / update-ca-trust write.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora, Rocky
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",
)
MANIFEST_ACCEPT = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)


# ---------------------------------------------------------------------------- results


@dataclass
class Check:
    name: str
    ok: bool | None  # None: the check could not run
    detail: str
    fix: str = ""

    def line(self) -> str:
        status = {True: "OK  ", False: "FAIL", None: "SKIP"}[self.ok]
        text = f"{status} {self.name}: {self.detail}"
        if self.ok is False and self.fix:
            text += f" -- fix: {self.fix}"
        return text


def exit_code(checks: list[Check]) -> int:
    """0 when every check that ran passed (skipped ones do not count), else 1."""
    return 1 if any(c.ok is False for c in checks) else 0


# ------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class ProxyURL:
    host: str
    port: int
    user: str = ""
    password: str = ""

    @property
    def auth_header(self) -> str:
        if not self.user:
            return ""
        raw = f"{self.user}:{self.password}".encode()
        return "Basic " + base64.b64encode(raw).decode()

    def show(self) -> str:
        """The URL without the password."""
        who = f"{self.user}:***@" if self.user else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{who}{host}:{self.port}"


def parse_proxy(url: str) -> ProxyURL:
    """`http://[user:pass@]host[:port]` (a bare `host:port` too, as Go clients take it).

    hubcache speaks plain HTTP to its clients: an `https://` proxy URL is an error here.
    """
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise ValueError(f"{parts.scheme}:// proxy URLs are not what hubcache serves: use http://HOST:PORT")
    if not parts.hostname:
        raise ValueError(f"no host in proxy URL {url!r}")
    try:
        port = parts.port or 80
    except ValueError as e:
        raise ValueError(f"bad port in proxy URL {url!r}") from e
    return ProxyURL(parts.hostname, port, unquote(parts.username or ""), unquote(parts.password or ""))


def proxy_from_env(env: dict[str, str]) -> str:
    """The HTTPS proxy a Go program (dockerd, containerd) would use with this environment."""
    return env.get("HTTPS_PROXY") or env.get("https_proxy") or ""


def no_proxy_from_env(env: dict[str, str]) -> str:
    return env.get("NO_PROXY") or env.get("no_proxy") or ""


def no_proxy_match(no_proxy: str, host: str) -> str:
    """The NO_PROXY entry that sends `host` around the proxy, or "" (Go's rules for names:
    `*` matches all, `example.com` matches it and its subdomains, `.example.com` subdomains only;
    a port after the name is ignored here)."""
    host = host.lower().rstrip(".")
    for raw in no_proxy.split(","):
        entry = raw.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return raw.strip()
        if re.fullmatch(r"[^\[\]:]+:\d+", entry):
            entry = entry.rsplit(":", 1)[0]
        entry = entry.lstrip("*")  # "*.example.com" acts like ".example.com"
        if entry.startswith("."):
            if host.endswith(entry):
                return raw.strip()
        elif host == entry or host.endswith("." + entry):
            return raw.strip()
    return ""


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/<pid>/environ: NUL-separated NAME=value."""
    env = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def parse_systemctl_environment(text: str) -> dict[str, str]:
    """`systemctl show docker --property=Environment` output: `Environment=A=1 "B=2 3"`."""
    env = {}
    for line in text.splitlines():
        if not line.startswith("Environment="):
            continue
        try:
            items = shlex.split(line[len("Environment="):])
        except ValueError:
            items = line[len("Environment="):].split()
        for item in items:
            if "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
    return env


def daemon_json_proxies(text: str) -> dict[str, str]:
    """The `proxies` object of /etc/docker/daemon.json (Docker >= 23), {} if none; ValueError if
    the file is not a JSON object (dockerd would refuse to start)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    proxies = data.get("proxies") or {}
    if not isinstance(proxies, dict):
        raise ValueError("`proxies` is not an object")
    return {str(k): str(v) for k, v in proxies.items()}


def same_proxy(a: str, b: str) -> bool:
    try:
        pa, pb = parse_proxy(a), parse_proxy(b)
    except ValueError:
        return a.strip() == b.strip()
    return (pa.host.lower(), pa.port) == (pb.host.lower(), pb.port)


def judge_docker(env: dict[str, str] | None, source: str, proxies: dict[str, str] | None,
                 checked_proxy: str, need_reload: bool = False) -> Check:
    """Does dockerd send Docker Hub through a proxy? `env`: dockerd's environment (None: unknown),
    `source`: where it came from; `proxies`: daemon.json's `proxies` (None: no file)."""
    name = "dockerd proxy"
    restart = "systemctl daemon-reload && systemctl restart docker"
    if need_reload:
        return Check(name, False, "the docker unit changed on disk since systemd last read it",
                     f"run `{restart}`")
    json_https = (proxies or {}).get("https-proxy", "")
    if json_https:  # the configuration file wins over the environment (Docker >= 23)
        https, no, where = json_https, (proxies or {}).get("no-proxy", ""), "daemon.json proxies.https-proxy (Docker >= 23)"
    elif env is not None and proxy_from_env(env):
        https, no, where = proxy_from_env(env), no_proxy_from_env(env), f"HTTPS_PROXY in {source}"
    elif env is None:
        return Check(name, None, f"could not read dockerd's environment ({source}) and daemon.json has no proxies")
    else:
        return Check(name, False, f"no HTTPS_PROXY in {source} and no proxies in daemon.json",
                     f"add the systemd drop-in /etc/systemd/system/docker.service.d/http-proxy.conf "
                     f"({GUIDE}), then `{restart}`")
    for host in (REGISTRY, "docker.io", DIRECT_HOST):  # DIRECT_HOST: where large blob downloads are redirected
        if entry := no_proxy_match(no, host):
            return Check(name, False, f"{where} is {https}, but NO_PROXY entry {entry!r} sends {host} around it",
                         f"remove {entry!r} from NO_PROXY, then `{restart}`")
    note = "" if same_proxy(https, checked_proxy) else f" (not {checked_proxy}, the proxy checked here)"
    return Check(name, True, f"{where} is {https}{note}")


def judge_ca(bundle: str, bundle_ders: list[bytes], ca_der: bytes | None, ca_name: str,
             issuer: str, fix: str) -> Check:
    """Is hubcache's CA in the system bundle? Compared byte for byte with `--ca` when given,
    else by subject with the issuer the proxy's certificate named (or any CA named mitmproxy)."""
    name = "CA in system store"
    if ca_der is not None:
        fp = fingerprint(ca_der)
        if ca_der in bundle_ders:
            return Check(name, True, f"{ca_name} (sha256 {fp}) is in {bundle}")
        return Check(name, False, f"{ca_name} (sha256 {fp}) is not in {bundle}", fix)
    wanted = issuer or "with mitmproxy in its name"
    for der in bundle_ders:
        subject = cert_subject(der)
        if (issuer and subject == issuer) or (not issuer and "mitmproxy" in subject):
            return Check(name, True, f"{subject} (sha256 {fingerprint(der)}) is in {bundle}")
    return Check(name, False, f"no CA named {wanted} in {bundle}", fix)


def trust_fix(ca: str) -> str:
    ca = ca or "mitmproxy-ca-cert.pem"
    if os.path.exists("/usr/sbin/update-ca-certificates") or os.path.isdir("/usr/local/share/ca-certificates"):
        return (f"`cp {ca} /usr/local/share/ca-certificates/hubcache.crt && update-ca-certificates`, then restart "
                f"dockerd/containerd (certs/README.md)")
    if os.path.exists("/usr/bin/update-ca-trust"):
        return (f"`cp {ca} /etc/pki/ca-trust/source/anchors/hubcache.crt && update-ca-trust`, then restart "
                f"dockerd/containerd (certs/README.md)")
    return "add hubcache's CA to the system trust store and restart dockerd/containerd (certs/README.md)"


def parse_challenge(value: str) -> dict[str, str]:
    """`Bearer realm="...",service="..."` -> {"scheme": "bearer", "realm": ..., "service": ...}."""
    scheme, _, rest = value.strip().partition(" ")
    out = {"scheme": scheme.lower()}
    for m in re.finditer(r'(\w+)="([^"]*)"', rest):
        out[m.group(1).lower()] = m.group(2)
    return out


def parse_image(image: str) -> tuple[str, str]:
    """`library/hello-world:latest`, `hello-world`, `docker.io/x/y:t` -> (repository, tag)."""
    ref = image.strip()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    name, tag = ref, "latest"
    if "@" in ref:
        name, tag = ref.split("@", 1)
    elif ":" in ref.rsplit("/", 1)[-1]:
        name, tag = ref.rsplit(":", 1)
    if "/" not in name:
        name = "library/" + name
    if not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)+", name):
        raise ValueError(f"not a Docker Hub repository name: {name!r}")
    return name, tag


def answered_by(headers: dict[str, str]) -> str:
    """Who answered a registry response that came through hubcache, from its headers (lower-case
    names). hubcache's own answers (store hits, revalidated tags, /v2/, anonymous tokens) carry no
    `Date`; everything Docker Hub (or any HTTP server library) sends does."""
    if "date" in headers or any(k.startswith("ratelimit-") or k == "docker-ratelimit-source" for k in headers):
        return "upstream"
    return "hubcache"


def hub_outcome(status: int, headers: dict[str, str], body: bytes = b"") -> tuple[bool, str]:
    """(passed, what it means) for the manifest HEAD of the test pull."""
    if status == 200:
        digest = headers.get("docker-content-digest", "?")
        if answered_by(headers) == "hubcache":
            return True, f"200 {digest}, answered by hubcache from its store (no upstream response headers): a hit"
        warning = headers.get("warning", "")
        return True, (f"200 {digest}, answered by upstream through hubcache (a miss or a tag changed upstream; "
                      f"run again for a hit){' ' + warning if warning else ''}")
    message = ""
    try:
        message = json.loads(body)["errors"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        message = body[:200].decode(errors="replace").strip()
    return False, f"{status}{': ' + message if message else ''}"


def _load(der: bytes):
    from cryptography import x509

    with warnings.catch_warnings():  # old CAs in system bundles have non-positive serials
        warnings.simplefilter("ignore")
        return x509.load_der_x509_certificate(der)


def cert_subject(der: bytes) -> str:
    try:
        return _load(der).subject.rfc4514_string()
    except ValueError:
        return "?"


def cert_issuer(der: bytes) -> str:
    return _load(der).issuer.rfc4514_string()


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()[:16]


def pem_certs(text: str) -> list[bytes]:
    """Every certificate in a PEM bundle, as DER."""
    out = []
    for m in re.finditer(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", text, re.S):
        try:
            out.append(ssl.PEM_cert_to_DER_cert(m.group(0)))
        except ValueError:
            continue
    return out


# ------------------------------------------------------------------------------- I/O


class TunnelError(OSError):
    def __init__(self, status: int, reason: str):
        super().__init__(f"the proxy answered CONNECT with {status} {reason}")
        self.status = status


def tunnel(proxy: ProxyURL, host: str, port: int = 443, timeout: float = TIMEOUT) -> socket.socket:
    """A TCP connection to host:port through the proxy (HTTP CONNECT)."""
    sock = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    try:
        req = f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        if proxy.auth_header:
            req += f"Proxy-Authorization: {proxy.auth_header}\r\n"
        sock.sendall((req + "\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("the proxy closed the connection without answering CONNECT")
            head += chunk
            if len(head) > 65536:
                raise OSError("the proxy's answer to CONNECT is not HTTP")
        status_line = head.split(b"\r\n", 1)[0].decode(errors="replace")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise OSError(f"the proxy's answer to CONNECT is not HTTP: {status_line[:80]!r}")
        if parts[1] != "200":
            raise TunnelError(int(parts[1]), parts[2] if len(parts) > 2 else "")
        return sock
    except BaseException:
        sock.close()
        raise


def tls(proxy: ProxyURL, host: str, context: ssl.SSLContext) -> ssl.SSLSocket:
    sock = tunnel(proxy, host)
    try:
        return context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def https_request(proxy: ProxyURL, context: ssl.SSLContext, method: str, url: str,
                  headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    """One HTTPS request through the proxy; headers of the answer with lower-case names."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    conn = http.client.HTTPConnection(host, parts.port or 443, timeout=TIMEOUT)
    conn.sock = tls(proxy, host, context)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.putrequest(method, path or "/", skip_host=True, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read(1 << 20)
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def check_proxy(proxy: ProxyURL, source: str) -> Check:
    name = "proxy reachable"
    where = f"{proxy.show()} ({source})"
    try:
        tunnel(proxy, REGISTRY).close()
    except TunnelError as e:
        if e.status == 407:
            return Check(name, False, f"{where}: {e}",
                         "put the user and password of hubcache's proxyauth in the URL: http://USER:PASS@HOST:PORT")
        return Check(name, False, f"{where}: {e}", "check that this is hubcache and not another proxy")
    except OSError as e:
        why = e.strerror or str(e) or type(e).__name__
        return Check(name, False, f"{where}: {why}",
                     "start hubcache (`systemctl start hubcache`, log: `journalctl -u hubcache`) or point "
                     "--proxy / HTTPS_PROXY at it; from another machine it must listen on 0.0.0.0 or its address")
    return Check(name, True, f"CONNECT {REGISTRY}:443 through {where}")


def check_interception(proxy: ProxyURL, ca_der: bytes | None) -> tuple[Check, str]:
    """A TLS handshake with registry-1.docker.io through the proxy, verified with the system
    trust store. Returns the check and the issuer of the certificate the proxy showed."""
    name = "intercepts Docker Hub"
    try:
        with tls(proxy, REGISTRY, ssl.create_default_context()) as s:
            issuer = cert_issuer(s.getpeercert(binary_form=True))
    except ssl.SSLCertVerificationError as e:
        issuer = ""
        try:  # again without verification, only to name who signed it
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            with tls(proxy, REGISTRY, ctx) as s:
                issuer = cert_issuer(s.getpeercert(binary_form=True))
        except (OSError, ValueError):
            pass
        return Check(name, False, f"certificate for {REGISTRY} issued by {issuer or '?'} is not trusted here "
                     f"({e.verify_message})", trust_fix("")), issuer
    except (OSError, ValueError) as e:
        return Check(name, False, f"TLS through the proxy failed: {e}",
                     "look at hubcache's log (`journalctl -u hubcache`) for the reason"), ""
    ours = cert_subject(ca_der) if ca_der else ""
    if (ours and issuer == ours) or (not ours and "mitmproxy" in issuer):
        return Check(name, True, f"certificate for {REGISTRY} issued by {issuer}, trusted by the system store"), issuer
    return Check(name, False, f"certificate for {REGISTRY} issued by {issuer}: the proxy does not intercept "
                 f"Docker Hub{' with the CA given by --ca' if ours else ''}",
                 "point HTTPS_PROXY at hubcache itself (not another proxy), with no allow_hosts/ignore_hosts "
                 "that leave Docker Hub out"), issuer


def check_ca_store(ca_path: str, issuer: str) -> Check:
    name = "CA in system store"
    bundle = ""
    for candidate in (os.environ.get("SSL_CERT_FILE", ""), ssl.get_default_verify_paths().cafile or "", *SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            bundle = candidate
            break
    if not bundle:
        return Check(name, None, "found no system CA bundle (" + ", ".join(SYSTEM_BUNDLES) + ")")
    ders = pem_certs(Path(bundle).read_text(errors="replace"))
    ca_der = None
    if ca_path:
        try:
            found = pem_certs(Path(ca_path).read_text(errors="replace"))
        except OSError as e:
            return Check(name, False, f"cannot read --ca {ca_path}: {e.strerror}",
                         "copy mitmproxy-ca-cert.pem from hubcache's confdir (/var/lib/hubcache/confdir)")
        if not found:
            return Check(name, False, f"--ca {ca_path} holds no PEM certificate",
                         "use mitmproxy-ca-cert.pem from hubcache's confdir")
        ca_der = found[0]
    return judge_ca(bundle, ders, ca_der, ca_path, issuer, trust_fix(ca_path))


def find_dockerd(proc: str = "/proc") -> tuple[list[int], str]:
    """PIDs of the dockerd to check, and how they were found."""
    try:
        pid = int(Path(DOCKER_PIDFILE).read_text().strip())
        if Path(f"{proc}/{pid}/comm").read_text().strip() == "dockerd":
            return [pid], DOCKER_PIDFILE
    except (OSError, ValueError):
        pass
    pids = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                if Path(f"{proc}/{entry}/comm").read_text().strip() == "dockerd":
                    pids.append(int(entry))
            except OSError:
                continue
    return sorted(pids), "/proc"


def systemctl_show(unit: str, prop: str) -> str | None:
    try:
        res = subprocess.run(["systemctl", "show", unit, f"--property={prop}"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def check_docker(checked_proxy: str, pid: int | None, daemon_json: str) -> Check:
    proxies: dict[str, str] | None = None
    try:
        proxies = daemon_json_proxies(Path(daemon_json).read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        return Check("dockerd proxy", False, f"cannot use {daemon_json}: {e}", "fix the file: dockerd will not start with it")
    env, source = None, ""
    if pid is None:
        pids, how = find_dockerd()
        if len(pids) > 1:
            return Check("dockerd proxy", None, f"several dockerd processes ({', '.join(map(str, pids))}): "
                         "pass --dockerd-pid")
        pid = pids[0] if pids else None
    if pid is not None:
        try:
            env, source = parse_environ(Path(f"/proc/{pid}/environ").read_bytes()), f"the environment of dockerd (pid {pid})"
        except PermissionError:
            source = f"/proc/{pid}/environ needs root"
        except OSError as e:
            source = f"/proc/{pid}/environ: {e.strerror}"
    need_reload = False
    if env is None:
        shown = systemctl_show("docker", "Environment")
        if shown is not None:
            env, source = parse_systemctl_environment(shown), "the docker unit (systemctl show docker)"
            need_reload = "NeedDaemonReload=yes" in (systemctl_show("docker", "NeedDaemonReload") or "")
        elif pid is None and proxies is None:
            return Check("dockerd proxy", None, "no dockerd running and no systemd to ask (a containerd-only node? "
                         f"see {GUIDE})")
        elif not source:
            source = "no dockerd running, no systemd to ask"
    return judge_docker(env, source, proxies, checked_proxy, need_reload)


def check_pull(proxy: ProxyURL, image: str) -> Check:
    name = "test pull"
    try:
        repository, tag = parse_image(image)
    except ValueError as e:
        return Check(name, False, str(e), "pass --image NAME:TAG of a Docker Hub image")
    ctx = ssl.create_default_context()
    ref = f"docker.io/{repository}:{tag}" if not tag.startswith("sha256:") else f"docker.io/{repository}@{tag}"
    steps = []
    try:
        status, headers, _ = https_request(proxy, ctx, "GET", f"https://{REGISTRY}/v2/", [("Host", REGISTRY)])
        challenge = parse_challenge(headers.get("www-authenticate", ""))
        steps.append(f"GET /v2/ {status} ({answered_by(headers)})")
        auth: list[tuple[str, str]] = []
        if status == 401 and challenge.get("scheme") == "bearer" and challenge.get("realm"):
            realm = urlsplit(challenge["realm"])
            query = urlencode({"service": challenge.get("service", ""), "scope": f"repository:{repository}:pull"})
            tstatus, theaders, tbody = https_request(
                proxy, ctx, "GET", f"{challenge['realm']}?{query}", [("Host", realm.netloc)])
            steps.append(f"token {tstatus} ({answered_by(theaders)})")
            if tstatus != 200:
                return Check(name, False, f"{ref}: " + ", ".join(steps),
                             "look at hubcache's log (`journalctl -u hubcache`) for the token request")
            body = json.loads(tbody)
            auth = [("Authorization", "Bearer " + (body.get("token") or body.get("access_token") or ""))]
        elif status != 200:
            return Check(name, False, f"{ref}: " + ", ".join(steps), "look at hubcache's log for GET /v2/")
        status, headers, body = https_request(
            proxy, ctx, "HEAD", f"https://{REGISTRY}/v2/{repository}/manifests/{tag}",
            [("Host", REGISTRY), *(("Accept", a) for a in MANIFEST_ACCEPT), *auth])
        if status != 200:
            # A HEAD carries no error message: a GET fetches it. It follows a failed HEAD, so it is
            # answered with an error as well (Docker Hub counts manifest GETs, this is the only one).
            steps.append(f"manifest HEAD {status}")
            status, headers, body = https_request(
                proxy, ctx, "GET", f"https://{REGISTRY}/v2/{repository}/manifests/{tag}",
                [("Host", REGISTRY), *(("Accept", a) for a in MANIFEST_ACCEPT), *auth])
    except ssl.SSLError as e:
        return Check(name, False, f"{ref}: TLS failed ({e})", trust_fix(""))
    except (OSError, ValueError) as e:
        return Check(name, False, f"{ref}: {', '.join(steps + [str(e)])}", "look at hubcache's log (`journalctl -u hubcache`)")
    passed, meaning = hub_outcome(status, headers, body)
    detail = f"{ref}: {', '.join(steps)}, manifest {'GET' if steps[-1].startswith('manifest') else 'HEAD'} {meaning}"
    if passed:
        return Check(name, True, detail)
    fix = ("the image does not exist on Docker Hub: pass --image of one that does" if status == 404
           and answered_by(headers) == "upstream" else "look at hubcache's log (`journalctl -u hubcache`)")
    return Check(name, False, detail, fix)


def run(args) -> int:
    checks: list[Check] = []
    if args.proxy:
        url, source = args.proxy, "--proxy"
    elif proxy_from_env(dict(os.environ)):
        url, source = proxy_from_env(dict(os.environ)), "HTTPS_PROXY of this shell"
    else:
        url, source = DEFAULT_PROXY, "default"

    def emit(c: Check) -> None:
        checks.append(c)
        print(c.line(), flush=True)

    ca_der = None
    if args.ca:
        try:
            ca_der = (pem_certs(Path(args.ca).read_text(errors="replace")) or [None])[0]
        except OSError:
            pass
    try:
        proxy = parse_proxy(url)
    except ValueError as e:
        emit(Check("proxy reachable", False, f"{url} ({source}): {e}", "use the form http://HOST:3128"))
        proxy = None
    issuer = ""
    if proxy is not None:
        emit(check_proxy(proxy, source))
        if checks[-1].ok:
            c, issuer = check_interception(proxy, ca_der)
            emit(c)
        else:
            emit(Check("intercepts Docker Hub", None, "not checked: the proxy is not reachable"))
    emit(check_ca_store(args.ca or "", issuer))
    emit(check_docker(url, args.dockerd_pid, args.daemon_json))
    if proxy is not None and checks[0].ok and checks[1].ok:
        emit(check_pull(proxy, args.image))
    else:
        emit(Check("test pull", None, "not tried: the checks of the proxy above failed"))
    return exit_code(checks)


def add_arguments(p) -> None:
    p.add_argument("--proxy", default="", help="hubcache's URL, http://[USER:PASS@]HOST:PORT "
                   f"(default: HTTPS_PROXY of the environment, else {DEFAULT_PROXY})")
    p.add_argument("--ca", default="", help="hubcache's CA certificate (mitmproxy-ca-cert.pem) to look for in the system store")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"image for the test pull (default {DEFAULT_IMAGE}); only a manifest HEAD, "
                   "which Docker Hub does not count")
    p.add_argument("--dockerd-pid", type=int, default=None, help=f"the dockerd to check (default: {DOCKER_PIDFILE}, else the only dockerd)")
    p.add_argument("--daemon-json", default=DAEMON_JSON, help=f"dockerd's configuration file (default {DAEMON_JSON})")


if __name__ == "__main__":  # pragma: no cover
    import argparse

    ap = argparse.ArgumentParser(prog="hubcache doctor")
    add_arguments(ap)
    sys.exit(run(ap.parse_args()))
