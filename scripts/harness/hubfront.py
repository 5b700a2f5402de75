"""Docker Hub's pull limit, in front of the fake registry (registry-1.docker.io).

distribution can neither count pulls nor answer 429, so this server takes the
registry's place on 127.0.0.1:443 and forwards every request, bodies streamed
both ways, to distribution on a plain-HTTP loopback port (X-Forwarded-Proto
keeps the URLs distribution builds on https). On the way it does what Docker
Hub does (see /work/shared/notes/registry-facts.md):

- who pulls: the `sub` of the Bearer JWT (an account name, or "anonymous");
  anonymous pulls are counted per client IP. The JWT is our own token
  server's, so its payload is read without checking the signature: the
  registry checks it anyway.
- a pull is a GET on /v2/<name>/manifests/<ref> that the registry answers 200.
  HEADs and blob GETs never count.
- GET and HEAD on manifests carry ratelimit-limit / ratelimit-remaining
  ("N;w=WINDOW"; the x-ratelimit-* family of 2026 captures instead when
  LIMITS.json says "headers": "x-ratelimit") and docker-ratelimit-source (the
  account, or the IP). An unlimited account (a paid plan) gets the source only.
- a manifest GET over the limit gets 429 with Hub's OCI error body
  (TOOMANYREQUESTS), and never reaches the registry.
- the abuse limit: while LIMITS.json's abuse_until is in the future, every
  request (any method, any path, any account) gets a bare 429: no body, no
  limit headers. Nothing is forwarded and no pull is counted.

Pulls are counted in a sliding window. The log (one JSON line per request,
like the other services) is also the front's memory: a restarted front (e.g.
after `Upstream.down()`) reads its counted pulls back from it.

Run: python hubfront.py --backend 127.0.0.1:5000 --limits LIMITS.json --listen 127.0.0.1:443 ...
LIMITS.json, re-read at every manifest request so a test can change it while the front runs:
  {"limits": {"anonymous": 100, "alice": 200, "pro": null, "*": 200},
   "window": 21600, "reset_at": 0, "retry_after": null, "headers": "ratelimit", "abuse_until": 0}
  limits: per account; null = unlimited; "anonymous" applies to each client IP on its own;
          a name not listed uses "*", and is unlimited if there is no "*". Empty: nobody is
          limited and no limit headers (nor docker-ratelimit-source) are sent.
  window: seconds, also sent as w= in the headers.
  reset_at: pulls counted at or before this time (time.time()) are forgotten.
  retry_after: if set, pull-limit 429s carry Retry-After: N (Docker Hub sends none).
  headers: the limit header family, "ratelimit" (documented) or "x-ratelimit" (2026 captures).
  abuse_until: until this time (time.time()), every request gets a bare 429 (the abuse limit).
LIMITS.json is read at every request (the abuse limit applies to all of them).
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import re
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from urllib.parse import urlsplit

import httpsd

CHUNK = 1 << 20
MANIFEST = re.compile(r"^/v2/(.+)/manifests/([^/]+)$")
# Headers that describe one connection, not the message: never passed on.
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
              "upgrade", "proxy-authenticate", "proxy-authorization", "expect"}
DEFAULT_WINDOW = 21600
MESSAGES = {  # Docker Hub's wording
    True: "You have reached your unauthenticated pull rate limit. https://www.docker.com/increase-rate-limit",
    False: "You have reached your pull rate limit. You may increase the limit by authenticating "
           "and upgrading: https://www.docker.com/increase-rate-limit",
}


def token_account(authorization: str | None) -> str:
    """The `sub` of a Bearer JWT; "anonymous" without one or if it cannot be read."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return "anonymous"
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims.get("sub") or "anonymous")
    except (IndexError, ValueError, binascii.Error, AttributeError):
        return "anonymous"


FAMILIES = ("ratelimit", "x-ratelimit")


def limit_headers(limit: int | None, remaining: int, window: float, source: str,
                  family: str = "ratelimit") -> dict[str, str]:
    """Hub's headers on a manifest answer; an unlimited account (limit None) gets the source only."""
    if limit is None:
        return {"docker-ratelimit-source": source}
    w = f";w={int(window)}"
    return {f"{family}-limit": f"{limit}{w}", f"{family}-remaining": f"{remaining}{w}",
            "docker-ratelimit-source": source}


class Rules:
    """One reading of LIMITS.json."""

    def __init__(self, path: Path):
        try:
            cfg = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            cfg = {}
        self.limits: dict = cfg.get("limits") or {}
        self.window = float(cfg.get("window") or DEFAULT_WINDOW)
        self.reset_at = float(cfg.get("reset_at") or 0)
        self.retry_after = cfg.get("retry_after")
        self.family = cfg.get("headers") or "ratelimit"
        if self.family not in FAMILIES:
            raise ValueError(f"LIMITS.json: headers must be one of {FAMILIES}, not {self.family!r}")
        self.abuse_until = float(cfg.get("abuse_until") or 0)
        # {reference (tag or digest): {truncate_at | stall_at [+ stall_seconds] | length_delta}}
        self.manifest_faults: dict = cfg.get("manifest_faults") or {}
        # blob redirects point at this host instead of distribution's (Hub moves between CDNs)
        self.redirect_host: str = cfg.get("redirect_host") or ""

    def limit(self, account: str) -> int | None:
        return self.limits[account] if account in self.limits else self.limits.get("*")

    def since(self, now: float) -> float:
        """Pulls counted after this time count against the limit."""
        return max(now - self.window, self.reset_at)


class PullBook:
    """When each source (account, or IP for anonymous) pulled. Small: a test makes a few
    hundred pulls, so every time is kept and counted with a scan."""

    def __init__(self):
        self._lock = threading.Lock()
        self._times: dict[str, list[float]] = defaultdict(list)

    def used(self, source: str, since: float) -> int:
        with self._lock:
            return sum(t > since for t in self._times[source])

    def take(self, source: str, limit: int | None, since: float, now: float) -> bool:
        """Count a pull now, unless `limit` pulls are already counted. Taken before the request
        is forwarded, so concurrent GETs cannot overshoot; `give_back` if it was no pull."""
        with self._lock:
            times = self._times[source]
            if limit is not None and sum(t > since for t in times) >= limit:
                return False
            times.append(now)
            return True

    def give_back(self, source: str, t: float) -> None:
        with self._lock:
            self._times[source].remove(t)

    def load(self, log_path: str) -> None:
        """Counted pulls from an earlier run's log."""
        try:
            lines = Path(log_path).read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if r.get("pull"):
                self._times[r["source"]].append(r["pull_t"])


class FrontHandler(httpsd.LoggedHandler):
    backend: tuple[str, int]
    rules_path: Path
    book: PullBook
    redirect_host = ""  # this request's blob redirect goes to this host instead (Rules.redirect_host)

    def host(self) -> str:
        return self.server.default_host  # as the registry's lines: one name for 127.0.0.1

    def forward(self):
        account = token_account(self.headers.get("Authorization"))
        anonymous = account == "anonymous"
        source = self.client_address[0] if anonymous else account
        log = {"account": account, "source": source}
        rules = Rules(self.rules_path)
        if time.time() < rules.abuse_until:
            return self.abused(log)
        limit = None
        pull_t = None  # set while a pull is counted for this request
        manifest = self.command in ("GET", "HEAD") and MANIFEST.match(urlsplit(self.path).path)
        if manifest:
            limit = rules.limit(account)
            if self.command == "GET":
                now = time.time()
                if not self.book.take(source, limit, rules.since(now), now):
                    return self.too_many(source, limit, rules, anonymous, log)
                pull_t = now

        try:
            conn, resp = self.ask_backend()
        except (OSError, http.client.HTTPException) as e:
            if pull_t is not None:
                self.book.give_back(source, pull_t)
            self.close_connection = True
            body = json.dumps({"errors": [{"code": "UNAVAILABLE", "message": f"registry: {e}"}]})
            return self.send_bytes(502, body.encode(), "application/json")  # logged as the front's
        if pull_t is not None and resp.status != 200:
            self.book.give_back(source, pull_t)  # a 401 or 404 is no pull
            pull_t = None
        headers = {}
        if manifest and rules.limits:  # no limits at all: a registry that sends no such headers
            # counted after this request's own pull, as Hub counts it
            used = self.book.used(source, rules.since(time.time()))
            headers = limit_headers(limit, max(0, limit - used) if limit is not None else 0, rules.window,
                                    source, rules.family)
        self.relayed = 0
        fault = {}
        if manifest and self.command == "GET":
            fault = rules.manifest_faults.get(urlsplit(self.path).path.rsplit("/", 1)[-1], {})
        redirected = "/blobs/" in self.path and resp.status in (301, 302, 303, 307, 308)
        self.redirect_host = Rules(self.rules_path).redirect_host if redirected else ""
        try:
            self.relay(resp, headers, fault)
        finally:  # logged even if the client hung up: the pull was counted all the same
            conn.close()
            if pull_t is not None:
                log["pull_t"] = pull_t  # when it was counted: what the window and resets compare
            self.record(resp.status, self.relayed, **log, pull=pull_t is not None,
                        answered_by="registry")

    do_GET = do_HEAD = do_PUT = do_POST = do_PATCH = do_DELETE = forward

    def record(self, status, sent, **extra):
        # Lines written by send_bytes (the front's own answers) come here without fields.
        if "answered_by" not in extra:
            account = token_account(self.headers.get("Authorization"))
            extra = {"account": account, "pull": False, "answered_by": "hubfront",
                     "source": self.client_address[0] if account == "anonymous" else account,
                     **extra}
        super().record(status, sent, **extra)

    def abused(self, log):
        """Docker Hub's abuse limit: a bare 429, whatever was asked."""
        self.close_connection = True  # a request body, if any, is left unread
        self.send_response(429)
        self.send_header("Content-Length", "0")
        self.end_headers()
        self.record(429, 0, **log, pull=False, answered_by="hubfront", abuse=True)

    def too_many(self, source, limit, rules, anonymous, log):
        body = {"errors": [{"code": "TOOMANYREQUESTS", "message": MESSAGES[anonymous]}]}
        headers = limit_headers(limit, 0, rules.window, source, rules.family)
        headers["Docker-Distribution-Api-Version"] = "registry/2.0"
        if rules.retry_after is not None:
            headers["Retry-After"] = str(int(rules.retry_after))
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        self.record(429, len(data), **log, pull=False, answered_by="hubfront")

    def ask_backend(self) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send the request on to distribution, the body streamed; return its response."""
        conn = http.client.HTTPConnection(*self.backend, timeout=120)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for k, v in self.headers.items():  # Host included, so distribution builds Hub URLs
                if k.lower() not in HOP_BY_HOP:
                    conn.putheader(k, v)
            conn.putheader("X-Forwarded-Proto", "https")
            chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            if chunked:
                for piece in self.chunked_body():
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            else:
                left = int(self.headers.get("Content-Length") or 0)
                while left:
                    piece = self.rfile.read(min(left, CHUNK))
                    if not piece:
                        raise ConnectionError("client hung up in the request body")
                    conn.send(piece)
                    left -= len(piece)
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def chunked_body(self):
        """The pieces of a chunked request body, as they arrive."""
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0], 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return
            while size:
                piece = self.rfile.read(min(size, CHUNK))
                if not piece:
                    raise ConnectionError("client hung up in the request body")
                yield piece
                size -= len(piece)
            self.rfile.readline(1024)  # the CRLF after each chunk

    def relay(self, resp: http.client.HTTPResponse, extra_headers: dict[str, str], fault: dict | None = None) -> None:
        """Pass distribution's response on as it arrives, counting body bytes in self.relayed.
        A fault (tests of the proxy): declare a Content-Length off by length_delta (negative: send
        only that much), or hang up after truncate_at bytes, or stop for stall_seconds after stall_at."""
        fault = fault or {}
        self.send_response_only(resp.status, resp.reason)  # distribution's own Date, no Server
        length = resp.getheader("Content-Length")
        has_body = self.command != "HEAD" and resp.status not in (204, 304)
        cut = fault.get("truncate_at", fault.get("stall_at"))
        if length is not None and fault.get("length_delta", 0) < 0:
            cut = int(length) + fault["length_delta"]
        for k, v in resp.getheaders():
            if k.lower() == "content-length" and "length_delta" in fault:
                v = str(int(v) + fault["length_delta"])
            if k.lower() == "location" and self.redirect_host:
                v = urlsplit(v)._replace(netloc=self.redirect_host).geturl()
            if k.lower() not in HOP_BY_HOP:
                self.send_header(k, v)
        for k, v in extra_headers.items():
            self.send_header(k, v)
        chunked = has_body and length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while has_body and (cut is None or self.relayed < cut):
            piece = resp.read1(CHUNK)
            if not piece:
                break
            if cut is not None:
                piece = piece[: cut - self.relayed]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            self.relayed += len(piece)
        if fault:
            self.wfile.flush()
            if "stall_at" in fault:
                time.sleep(fault.get("stall_seconds", 30))
            self.close_connection = True
            return
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
        if length is not None and has_body and self.relayed != int(length):
            self.close_connection = True  # distribution hung up early: so do we


def main(argv=None) -> None:
    p = httpsd.common_args(__doc__.splitlines()[0])
    p.add_argument("--backend", required=True, help="IP:PORT of distribution (plain HTTP)")
    p.add_argument("--limits", required=True, help="LIMITS.json, re-read at each manifest request")
    args = p.parse_args(argv)
    ip, port = args.backend.rsplit(":", 1)
    FrontHandler.backend = (ip, int(port))
    FrontHandler.rules_path = Path(args.limits)
    FrontHandler.book = PullBook()
    FrontHandler.book.load(args.log)
    httpsd.serve(args, FrontHandler)


if __name__ == "__main__":
    sys.exit(main())
