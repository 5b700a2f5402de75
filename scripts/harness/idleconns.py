"""Client connections that hold a proxy's sockets and do nothing: the load a stuck or hostile
client puts on it. Each is a plain TCP connection from a loopback source address of the test's
choosing (the test's network namespace owns 127.0.0.0/8), silent or after one CONNECT."""

from __future__ import annotations

import resource
import select
import socket
import time


def raise_fd_limit(n: int) -> None:
    """Let this process hold `n` more descriptors (as far as the hard limit lets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = soft + n + 256
    if hard != resource.RLIM_INFINITY:
        want = min(want, hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


class IdleClients:
    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.port, self.host = port, host
        self.socks: list[socket.socket] = []

    def open(self, n: int, source: str, connect_to: str | None = None) -> list[socket.socket]:
        """`n` connections from `source`; with `connect_to` ("host:port") each sends a CONNECT for it
        and reads the proxy's answer (which must be 200), then sends nothing more."""
        raise_fd_limit(len(self.socks) + n)
        opened = []
        for _ in range(n):
            s = socket.socket()
            self.socks.append(s)
            s.bind((source, 0))
            s.connect((self.host, self.port))
            opened.append(s)
        if connect_to:
            for s in opened:
                s.sendall(f"CONNECT {connect_to} HTTP/1.1\r\nHost: {connect_to}\r\n\r\n".encode())
            for s in opened:
                s.settimeout(10)
                answer = s.recv(4096)
                assert answer.startswith(b"HTTP/1.1 200"), answer
        return opened

    @staticmethod
    def closed_by_peer(socks: list[socket.socket], within: float) -> list[bool]:
        """Whether the proxy closed each (end of stream or a reset), waiting up to `within` seconds."""
        by_fd = {s.fileno(): i for i, s in enumerate(socks)}
        gone = [False] * len(socks)
        poll = select.poll()  # not select(): descriptors past 1024
        for fd in by_fd:
            poll.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        deadline = time.monotonic() + within
        while not all(gone) and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poll.poll(min(left, 0.5) * 1000):
                i = by_fd[fd]
                try:
                    data = socks[i].recv(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    continue
                except OSError:  # reset
                    data = b""
                if not data:
                    gone[i] = True
                    poll.unregister(fd)
        return gone

    def close(self, socks: list[socket.socket] | None = None) -> None:
        for s in list(socks if socks is not None else self.socks):
            s.close()
            self.socks.remove(s)
