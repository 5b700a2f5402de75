"""`hubcache htpasswd FILE USER`: add or replace a proxy login in the htpasswd file that
`--set proxyauth=@FILE` reads (bcrypt, as mitmproxy checks it), without apache2-utils and without
the password on a command line: it is read from the terminal (asked twice), from stdin, or made
up (`--generate`, printed once on stdout). The file is written mode 0600, other logins kept."""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import sys
import tempfile
from pathlib import Path

from hubcache.tools import preflight

USER = re.compile(r"[A-Za-z0-9._@-]{1,64}")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="the htpasswd file, e.g. /etc/hubcache/htpasswd (created mode 0600)")
    p.add_argument("user", help="the login's user name (letters, digits, . _ @ -)")
    p.add_argument("--generate", action="store_true", help="make up a long random password and print it (only it) on stdout")
    p.add_argument("--cost", type=int, default=5, help="bcrypt cost (default 5, about 2 ms a check: mitmproxy "
                   "checks each new client connection on its event loop; make the password long instead)")


def _password(args: argparse.Namespace) -> str:
    if args.generate:
        return secrets.token_urlsafe(24)
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {args.user}: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 12 or ":" in password:
        raise ValueError("give a password of 12 characters or more, without ':' (or use --generate)")
    return password


def entries(text: str, user: str, hashed: str) -> str:
    """The file's text with `user`'s entry replaced (or added at the end), the others as they were."""
    lines = [line for line in text.splitlines() if line.strip() and line.split(":", 1)[0] != user]
    return "".join(f"{line}\n" for line in [*lines, f"{user}:{hashed}"])


def _write(path: Path, text: str) -> None:
    """Replace the file at once, mode 0600, keeping its owner (the service's user reads it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # made mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists() and os.geteuid() == 0:
            st = path.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def run(args: argparse.Namespace) -> int:
    import bcrypt

    if not USER.fullmatch(args.user):
        print(f"hubcache: {args.user!r} is not a user name hubcache takes (letters, digits, . _ @ -)", file=sys.stderr)
        return preflight.EXIT_USAGE
    if not 4 <= args.cost <= 14:
        print("hubcache: --cost must be between 4 and 14", file=sys.stderr)
        return preflight.EXIT_USAGE
    try:
        password = _password(args)
    except ValueError as e:
        print(f"hubcache: {e}", file=sys.stderr)
        return preflight.EXIT_USAGE
    path = Path(args.file)
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(args.cost)).decode()
    try:
        _write(path, entries(path.read_text() if path.exists() else "", args.user, hashed))
    except OSError as e:
        print(f"hubcache: {path}: {e.strerror or e}: give a file in a directory you may write", file=sys.stderr)
        return preflight.EXIT_USAGE
    if args.generate:
        print(password)
    print(f"hubcache: {args.user} in {path} (mode 0600); hubcache reads it with --set proxyauth=@{path.resolve()} "
          "(a running one after a restart)", file=sys.stderr)
    return 0
