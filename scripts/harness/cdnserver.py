"""The blob CDN (production.cloudflare.docker.com) for the fake upstream.

distribution's `redirect` storage middleware answers blob GETs with
307 Location: BASEURL + storage path, e.g.
  https://production.cloudflare.docker.com/docker/registry/v2/blobs/sha256/ab/abcd.../data
This server maps such a path onto the registry's filesystem storage root and
streams the file (GET and HEAD, one optional byte range). Like the real CDN it
needs no Authorization.

Run: python cdnserver.py --root STORAGE_ROOT --listen 127.0.0.3:443 ... (see httpsd.common_args)
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpsd

CHUNK = 4 << 20  # large reads: TLS rules out sendfile, and big writes keep throughput up
PREFIX = "/docker/registry/v2/"
RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class CDNHandler(httpsd.LoggedHandler):
    root: Path
    faults: Path | None = None  # JSON {hex digest: {"truncate_at": N}}, read at each request

    def _fault(self, path: str) -> dict:
        if self.faults is None or not self.faults.exists():
            return {}
        parts = path.rstrip("/").split("/")
        hexd = parts[-2] if len(parts) >= 2 else ""
        faults = json.loads(self.faults.read_text() or "{}")
        return faults.get(hexd, faults.get("*", {}))  # "*": every blob (e.g. a rate)

    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        path = unquote(urlsplit(self.path).path)
        if not path.startswith(PREFIX) or "/../" in path or path.endswith("/.."):
            return self.send_bytes(404, b"not found\n", "text/plain")
        try:
            f = open(self.root / path.lstrip("/"), "rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return self.send_bytes(404, b"not found\n", "text/plain")
        with f:
            size = os.fstat(f.fileno()).st_size
            start, end = 0, size  # end is exclusive
            status = 200
            rng = self.headers.get("Range")
            if rng:
                m = RANGE.match(rng.strip())
                if not m or (not m[1] and not m[2]):
                    start = size + 1  # unparsable: answered 416 below
                elif not m[1]:  # suffix: last N bytes
                    start = max(0, size - int(m[2]))
                else:
                    start = int(m[1])
                    end = min(size, int(m[2]) + 1) if m[2] else size
                if start >= end:
                    return self.send_bytes(
                        416, b"", "text/plain", {"Content-Range": f"bytes */{size}"}
                    )
                status = 206
            fault = self._fault(path) if self.command == "GET" else {}
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            # a fault: declare a length off by length_delta (the body is what the file holds)
            self.send_header("Content-Length", str(end - start + fault.get("length_delta", 0)))
            self.send_header("Accept-Ranges", "bytes")
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
            self.end_headers()
            sent = 0
            if self.command == "GET":
                # faults: hang up after truncate_at bytes; or stop sending for stall_seconds after
                # stall_at bytes, then hang up (or, with resume, send the rest: a slow but whole
                # transfer); or, with a negative length_delta, send only what was declared
                cut = fault.get("truncate_at", fault.get("stall_at"))
                if fault.get("length_delta", 0) < 0:
                    cut = end - start + fault["length_delta"]
                first = end if cut is None else min(end, start + cut)
                sent = self._stream(f, start, first, fault.get("rate"))
                if "stall_at" in fault:
                    time.sleep(fault.get("stall_seconds", 30))
                    if fault.get("resume") and sent == first - start:
                        sent += self._stream(f, first, end)
                    else:
                        self.close_connection = True
            self.record(status, sent, complete=sent == end - start or self.command == "HEAD")

    def _stream(self, f, start: int, end: int, rate: float | None = None) -> int:
        """Copy [start, end) to the client, at most `rate` bytes/s when given (an internet
        link rather than loopback); returns bytes sent (less if it hung up)."""
        f.seek(start)
        sent = 0
        t0 = time.monotonic()
        # A paced link sends steadily (20 pieces a second), and the last byte leaves when its time
        # comes, not at once with a pause after it: the request log's t is when the body was sent.
        piece = CHUNK if not rate else max(16 << 10, int(rate / 20))
        try:
            while sent < end - start:
                chunk = f.read(min(piece, end - start - sent))
                if not chunk:
                    break  # file shrank under us (a test tampering with it)
                if rate and (ahead := sent / rate - (time.monotonic() - t0)) > 0:
                    time.sleep(ahead)  # the bytes sent so far have had their time on the link
                self.wfile.write(chunk)
                sent += len(chunk)
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True
        if sent < end - start:
            self.close_connection = True  # the client cannot trust this connection any more
        return sent


def main(argv=None) -> None:
    p = httpsd.common_args(__doc__.splitlines()[0])
    p.add_argument("--root", required=True, help="the registry's filesystem rootdirectory")
    p.add_argument("--faults", help="JSON file of injected faults by blob hex digest")
    args = p.parse_args(argv)
    CDNHandler.root = Path(args.root)
    CDNHandler.faults = Path(args.faults) if args.faults else None
    httpsd.serve(args, CDNHandler)


if __name__ == "__main__":
    sys.exit(main())
