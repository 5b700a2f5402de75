"""Registry responses hubcache answers itself: OCI errors, /v2/, tokens, manifests, blob HEADs."""

from __future__ import annotations

import json

from mitmproxy import http

from hubcache.model import BlobInfo, Manifest, Refusal, oci_error_body

API_VERSION = ("Docker-Distribution-Api-Version", "registry/2.0")


def oci_error(status: int, code: str, message: str) -> http.Response:
    return http.Response.make(status, oci_error_body(code, message),
                              {"Content-Type": "application/json", API_VERSION[0]: API_VERSION[1]})


def refusal(r: Refusal, head: bool = False) -> http.Response:
    """The client's answer to a refused request: the OCI error, with any header it needs
    (a 401's challenge). To a HEAD, no body (mitmproxy would send it): only its length."""
    resp = oci_error(r.status, r.code, r.message)
    for name, value in r.headers.items():
        resp.headers[name] = value
    if head:
        drop_body(resp)
    return resp


def drop_body(resp: http.Response) -> None:
    """An answer to a HEAD: its headers, the length its body would have, no body (mitmproxy would
    send one, which a client reusing the connection reads as an unsolicited response)."""
    length = len(resp.raw_content or b"")
    resp.content = b""
    resp.headers["Content-Length"] = str(length)


# The registry's own answer to /v2/ without a token, byte for byte: clients only read its challenge,
# but a client comparing answers (or its Content-Length) sees the registry.
V2_UNAUTHORIZED = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}\n'


def v2_root(authorized: bool, challenge: str) -> http.Response:
    """200 to a client with a token (or of a registry that asks for none), else 401 with `challenge`."""
    headers = {"Content-Type": "application/json", API_VERSION[0]: API_VERSION[1]}
    if authorized:
        return http.Response.make(200, b"{}", headers)
    resp = http.Response.make(401, V2_UNAUTHORIZED, headers)
    resp.headers["Www-Authenticate"] = challenge
    return resp


def token(body: dict) -> http.Response:
    return http.Response.make(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


def manifest(m: Manifest, head: bool, warning: str = "") -> http.Response:
    headers = {
        "Content-Type": m.media_type,
        "Docker-Content-Digest": m.digest,
        "Etag": f'"{m.digest}"',
        API_VERSION[0]: API_VERSION[1],
    }
    if warning:
        headers["Warning"] = f'110 hubcache "{warning}"'
    resp = http.Response.make(200, b"" if head else m.body, headers)
    resp.headers["Content-Length"] = str(len(m.body))
    return resp


def manifest_head(media_type: str, digest: str, size: int) -> http.Response:
    resp = http.Response.make(
        200,
        b"",
        {"Content-Type": media_type, "Docker-Content-Digest": digest, "Etag": f'"{digest}"', API_VERSION[0]: API_VERSION[1]},
    )
    resp.headers["Content-Length"] = str(size)
    return resp


def blob_head(info: BlobInfo) -> http.Response:
    resp = http.Response.make(
        200,
        b"",
        {"Content-Type": "application/octet-stream", "Docker-Content-Digest": info.digest, "Etag": f'"{info.digest}"',
         API_VERSION[0]: API_VERSION[1]},
    )
    resp.headers["Content-Length"] = str(info.size)
    return resp
