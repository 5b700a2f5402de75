"""A registry whose token realm is on its own host (ghcr.io/token), for the fake upstream.

hubfront.py's front (forwarding to distribution on plain HTTP, the request log with every
request header, limits and faults from its LIMITS.json) with one path answered here instead:
GET --path (default /token) is tokenserver.py's token endpoint, signed with the same key, so
distribution accepts the JWT. Lines of that path are logged with answered_by "token".

Run: python regfront.py --backend 127.0.0.5:5000 --limits LIMITS.json --config TOKEN.json
         --path /token --listen 127.0.0.5:443 ...   (see httpsd.common_args)
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpsd
import hubfront
import tokenserver


class TokenFront(hubfront.FrontHandler, tokenserver.TokenHandler):
    def _is_token(self) -> bool:
        return urlsplit(self.path).path == self.token_path

    def do_GET(self):
        if self._is_token():
            return tokenserver.TokenHandler.do_GET(self)
        return self.forward()

    def record(self, status, sent, **extra):
        if self._is_token() and self.command == "GET":
            return httpsd.LoggedHandler.record(self, status, sent, answered_by="token", **extra)
        return hubfront.FrontHandler.record(self, status, sent, **extra)


def main(argv=None) -> None:
    p = httpsd.common_args(__doc__.splitlines()[0])
    p.add_argument("--backend", required=True, help="IP:PORT of distribution (plain HTTP)")
    p.add_argument("--limits", required=True, help="LIMITS.json (see hubfront.py)")
    tokenserver.add_token_args(p)
    args = p.parse_args(argv)
    ip, port = args.backend.rsplit(":", 1)
    TokenFront.backend = (ip, int(port))
    TokenFront.rules_path = Path(args.limits)
    TokenFront.book = hubfront.PullBook()
    TokenFront.book.load(args.log)
    tokenserver.setup_token_handler(TokenFront, args)
    httpsd.serve(args, TokenFront)


if __name__ == "__main__":
    sys.exit(main())
