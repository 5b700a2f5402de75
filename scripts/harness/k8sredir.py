"""registry.k8s.io for the tests: a redirector that serves no content itself.

Like the real one, it answers every request under /v2/ with 307 to a regional Artifact Registry
host, which wants a Bearer token from its own realm; here that host is the ghcr-like registry:
  GET /v2/                         -> 307 https://ghcr.io/v2/
  GET /v2/pause/manifests/3.9      -> 307 https://ghcr.io/v2/k8s-artifacts-prod/images/pause/manifests/3.9
Anything else is 404. Every request is logged (httpsd.RequestLog) like the other fronts'.

Run: python k8sredir.py --target https://ghcr.io/v2/k8s-artifacts-prod/images/ --listen ... (httpsd.common_args)
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

import httpsd


class RedirectHandler(httpsd.LoggedHandler):
    target: str  # ends in "/": the rest of the path after /v2/ is appended

    def _redirect(self):
        path = urlsplit(self.path).path
        query = urlsplit(self.path).query
        if path in ("/v2", "/v2/"):  # the real one sends /v2/ to the regional host's /v2/
            parts = urlsplit(self.target)
            location = f"{parts.scheme}://{parts.netloc}/v2/"
        elif path.startswith("/v2/"):
            location = self.target + path[len("/v2/"):] + (f"?{query}" if query else "")
        else:
            return self.send_bytes(404, b"not found\n", "text/plain")
        self.send_bytes(307, b"", "text/html", {"Location": location})

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _redirect


def main(argv=None) -> None:
    p = httpsd.common_args(__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="URL prefix the rest of /v2/<rest> is appended to")
    args = p.parse_args(argv)
    RedirectHandler.target = args.target if args.target.endswith("/") else args.target + "/"
    httpsd.serve(args, RedirectHandler)


if __name__ == "__main__":
    sys.exit(main())
