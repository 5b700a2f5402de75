"""A redirected client's tunnel to DIRECT_HOST, served on the client's own socket.

Left to mitmproxy, such a tunnel is relayed to the blob server's TLS listener by its event loop:
every 64 KiB of already-encrypted blob bytes is read from one socket and written to the other
through mitmproxy's layers, which costs the proxy about as much CPU as the TLS itself. Instead the
CONNECT hook hands a duplicate of the client's socket to the blob server (BlobServer.serve_tunnel),
which answers the CONNECT and speaks TLS on it from a thread of its own, while mitmproxy stops
reading the socket. The hook returns once the blob server is done with the connection; the CONNECT
flow is then killed, and mitmproxy closes the connection as it closes any other: until then it
stays in mitmproxy's connections and counts under hubcache's client limits (client_disconnected
comes after the last byte). mitmproxy disarms its inactivity timeout while a hook runs: the blob
server's own TLS_TIMEOUT bounds an idle client meanwhile.

Only a plain TCP client connection is taken (not a proxy mode whose client speaks TLS to mitmproxy
itself, nor WireGuard or local capture); anything else is relayed as before. A client must wait
for the CONNECT's answer before its TLS hello, as every registry client does (Go's, curl,
Python's): bytes mitmproxy read past the CONNECT head would not reach the blob server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Any

from mitmproxy import connection, ctx, http

from hubcache.serve.blobserver import BlobServer

log = logging.getLogger(__name__)


def _transport(client: connection.Client) -> Any | None:
    """The asyncio transport of a client's plain TCP connection with nothing waiting to be sent;
    None when there is none such."""
    if client.tls or client.transport_protocol != "tcp":
        return None
    try:
        handler = ctx.master.addons.get("proxyserver").connections.get(client.id)
    except AttributeError:  # no proxy server (tests)
        return None
    io = handler.transports.get(handler.client) if handler is not None else None
    writer = io.writer if io is not None else None
    if not isinstance(writer, asyncio.StreamWriter):  # WireGuard, local capture: not a socket of ours
        return None
    transport = writer.transport
    if transport.is_closing() or transport.get_write_buffer_size() or transport.get_extra_info("socket") is None:
        return None
    return transport


async def serve(flow: http.HTTPFlow, server: BlobServer) -> bool:
    """Serve a CONNECT to DIRECT_HOST on the client's socket; returns once that is done, True
    (the flow killed, so that mitmproxy closes the connection), or at once False when the tunnel
    is left to mitmproxy."""
    client = flow.client_conn
    transport = _transport(client)
    if transport is None or not client.peername:
        return False
    try:
        sock = socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno()))
    except OSError as e:
        log.debug("cannot take the tunnel of %s from mitmproxy (%s): relayed", client.peername, e)
        return False
    loop = asyncio.get_running_loop()
    finished = loop.create_future()

    def finish() -> None:
        if not finished.done():
            finished.set_result(None)

    def done() -> None:  # on the blob server's thread
        loop.call_soon_threadsafe(finish)

    transport.pause_reading()  # mitmproxy's reader waits on, for bytes that now go to the blob server
    try:
        taken = server.serve_tunnel(sock, (client.peername[0], client.peername[1]), done)
    except RuntimeError as e:  # no thread to be had
        log.debug("cannot serve the tunnel of %s on its socket (%s): relayed", client.peername, e)
        taken = False
    if not taken:
        sock.close()
        transport.resume_reading()
        return False
    try:
        await finished
    except asyncio.CancelledError:  # the proxy shuts down: wake the blob server's thread up
        _shutdown(transport)
        raise
    if flow.killable:
        flow.kill()  # mitmproxy closes the client connection, sending nothing more on it
    return True


def _shutdown(transport: Any) -> None:
    """Shut the client's connection down under the blob server's thread (its descriptor is a
    duplicate of mitmproxy's: both end)."""
    try:
        transport.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
    except OSError:  # gone meanwhile
        pass
