"""What `hubcache run` checks before it starts mitmproxy, and the exit codes of every command:
a mistake made at the command line is one line in hubcache's terms, with the fix, and a code a
service manager or a script can tell apart (the README lists them)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from hubcache.store import Store, StoreError, StoreInUse, probe

EXIT_PROBLEM = 1  # the command ran and found something wrong (verify: a bad store, history: nothing recorded)
EXIT_USAGE = 2  # a bad option value, or a missing or unreadable file
EXIT_STORE_IN_USE = 3  # another hubcache holds the store
EXIT_STORE_UNUSABLE = 4  # the store path cannot be used, or (read-only commands) holds no store
EXIT_PORT_BUSY = 5  # the listening address is taken


class Problem(Exception):
    """A mistake the person running hubcache can fix: `message` says how; `code` is the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def check_store(path: str) -> None:
    """The store directory can be created or opened, and no other hubcache holds it."""
    try:
        probe(path)
    except StoreInUse as e:
        raise Problem(f"{e}: stop that hubcache first, or give this one its own --store", EXIT_STORE_IN_USE) from e
    except StoreError as e:
        raise Problem(f"{e}: give --store a directory hubcache may create and write", EXIT_STORE_UNUSABLE) from e


def check_port(host: str, port: int, option: str = "--listen-port") -> None:
    """Nothing listens on host:port yet (mitmproxy would otherwise fail later, with its own advice).
    `option`: where the port was given, named in the message."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio's listeners do
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise Problem(f"port {port} on {host} is in use by another program: choose another with {option}",
                              EXIT_PORT_BUSY) from e
            where = "--listen-host" if option == "--listen-port" else option
            raise Problem(f"cannot listen on {host}:{port}: {e.strerror}: check {where}", EXIT_USAGE) from e


def check_confdir(path: str) -> None:
    """The CA's directory exists (made here if not) and hubcache can read its CA, or write one."""
    ca = os.path.join(path, "mitmproxy-ca.pem")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)  # the CA key lives here: no access for others
        if os.path.exists(ca):
            with open(ca, "rb"):
                pass
        elif not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "cannot write the CA there", path)
    except OSError as e:
        raise Problem(f"--confdir {path}: {e.strerror or e}: give a directory hubcache may create and write "
                      "(it keeps its CA there)", EXIT_USAGE) from e


def open_existing(path: str, readonly: bool = False, beside: bool = False) -> Store:
    """For commands that read a store (verify, history): it must be there already, nothing is
    created; `readonly` or `beside` (writing, evict) open it beside a running hubcache, else it
    must not be in use."""
    p = Path(path)
    if not (p / "data.mdb").is_file():
        raise Problem(f"no hubcache store at {p}: check --store (nothing was created)", EXIT_STORE_UNUSABLE)
    try:
        return Store(p, readonly=readonly, beside=beside)
    except StoreInUse as e:
        raise Problem(f"{e}: stop it first (this command needs the store to itself)", EXIT_STORE_IN_USE) from e
    except StoreError as e:
        raise Problem(str(e), EXIT_STORE_UNUSABLE) from e
