"""Docker Hub's token service (auth.docker.io/token) for the fake upstream.

GET /token?service=registry.docker.io&scope=repository:NAME:pull[,push]
  [Authorization: Basic base64(user:password)]
-> {"token", "access_token", "expires_in": 300, "issued_at"}

The token is an RS256 JWT whose header carries the signing cert in `x5c`, so
distribution checks it against its `rootcertbundle` (our test CA).

Run: python tokenserver.py --config CONFIG.json --listen 127.0.0.2:443 ... (see httpsd.common_args)
CONFIG.json: {"issuer", "service", "jwt_key", "jwt_cert",
              "accounts": {user: password},
              "private": {repo: [users allowed to pull]},   # optional
              "fields": ["token"]}   # optional: answer only these fields (ghcr.io, gitlab.com send only "token")
accounts and private are re-read at every request, so a test can add them while this runs.
--path: where the token is served (default /token; gitlab.com's realm is /jwt/auth).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import secrets
import sys
import time
from urllib.parse import parse_qs, urlsplit

import httpsd
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

TOKEN_TTL = 300  # what Docker Hub hands out


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Policy:
    """Who may do what. Extend here (private repos, quotas, ...)."""

    def __init__(self, accounts: dict[str, str], private: dict[str, list[str]]):
        self.accounts = accounts
        self.private = {repo: set(users) for repo, users in private.items()}

    def authenticate(self, authorization: str | None) -> str | None:
        """Account name, "anonymous" without credentials, None if they are wrong."""
        if not authorization:
            return "anonymous"
        scheme, _, blob = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(blob, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if user in self.accounts and secrets.compare_digest(self.accounts[user], password):
            return user
        return None

    def grant(self, account: str, rtype: str, name: str, wanted: list[str]) -> list[str]:
        """The subset of `wanted` actions that `account` gets on a resource."""
        if rtype != "repository":
            return []
        if name in self.private and account not in self.private[name]:
            return []  # Hub answers as if the repository did not exist
        allowed = {"pull"}
        if account != "anonymous":
            allowed.add("push")
        return [a for a in wanted if a in allowed]


def parse_scopes(values: list[str]) -> list[tuple[str, str, list[str]]]:
    """`repository:library/alpine:pull,push` -> ("repository", "library/alpine", ["pull", "push"]).

    Clients send several `scope` parameters, or several scopes in one separated by spaces.
    """
    out = []
    for value in values:
        for scope in value.split():
            rtype, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if rtype and name:
                out.append((rtype, name, [a for a in actions.split(",") if a]))
    return out


class Signer:
    def __init__(self, key_pem: bytes, cert_pem: bytes):
        self.key = serialization.load_pem_private_key(key_pem, password=None)
        cert = x509.load_pem_x509_certificate(cert_pem)
        self.x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]

    def jwt(self, claims: dict) -> str:
        header = {"alg": "RS256", "typ": "JWT", "x5c": self.x5c}
        signing_input = ".".join(
            b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)
        )
        sig = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return signing_input + "." + b64url(sig)


class TokenHandler(httpsd.LoggedHandler):
    cfg: dict
    config_path: str
    signer: Signer
    token_path = "/token"

    def load_policy(self) -> Policy:
        # Each request: a test may add accounts or private repositories while we run.
        with open(self.config_path) as f:
            cfg = json.load(f)
        return Policy(cfg["accounts"], cfg.get("private", {}))

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path != self.token_path:
            return self.send_json(404, {"details": "not found"})
        policy = self.load_policy()
        account = policy.authenticate(self.headers.get("Authorization"))
        if account is None:
            return self.send_json(401, {"details": "incorrect username or password"}, account="-")
        query = parse_qs(url.query)
        access = []
        for rtype, name, wanted in parse_scopes(query.get("scope", [])):
            actions = policy.grant(account, rtype, name, wanted)
            access.append({"type": rtype, "name": name, "actions": actions})
        now = int(time.time())
        claims = {
            "iss": self.cfg["issuer"],
            "sub": account,
            "aud": query.get("service", [self.cfg["service"]])[0],
            "exp": now + TOKEN_TTL,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        token = self.signer.jwt(claims)
        issued = datetime.datetime.fromtimestamp(now, datetime.UTC)
        body = {
            "token": token,
            "access_token": token,
            "expires_in": TOKEN_TTL,
            "issued_at": issued.isoformat().replace("+00:00", "Z"),
        }
        fields = self.cfg.get("fields")
        if fields:
            body = {k: v for k, v in body.items() if k in fields}
        self.send_json(200, body, account=account, access=access)

    def send_json(self, status: int, body: dict, **logged):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.record(status, len(data), **logged)


def main(argv=None) -> None:
    p = httpsd.common_args(__doc__.splitlines()[0])
    add_token_args(p)
    args = p.parse_args(argv)
    setup_token_handler(TokenHandler, args)
    httpsd.serve(args, TokenHandler)


def add_token_args(p) -> None:
    p.add_argument("--config", required=True)
    p.add_argument("--path", default="/token", help="the token endpoint's path (the realm's)")


def setup_token_handler(handler: type[TokenHandler], args) -> None:
    """Configure a handler class (TokenHandler, or a registry front that serves tokens too)."""
    with open(args.config) as f:
        cfg = json.load(f)
    handler.cfg = cfg
    handler.config_path = args.config
    handler.token_path = args.path
    with open(cfg["jwt_key"], "rb") as k, open(cfg["jwt_cert"], "rb") as c:
        handler.signer = Signer(k.read(), c.read())


if __name__ == "__main__":
    sys.exit(main())
