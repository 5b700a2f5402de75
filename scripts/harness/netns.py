"""Move the current process into a network namespace and a private mount namespace.

Docker Hub's real names must resolve to loopback addresses of our own, with
nothing changed on the machine: a new network namespace gives a private
127.0.0.0/8 (so servers can bind :443 there), and a private mount namespace
lets a hosts file of our own be bind-mounted over /etc/hosts. Every subprocess
started afterwards inherits both, so the proxy and the clients see the same
world. `leave()` puts the process back and deletes the namespace.

Linux only lets a single-threaded process change its mount namespace, so
`enter()` must run before any thread is started (the test process normally
has none).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def _run(*cmd: str, **kw) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Namespaces:
    def __init__(self, name: str, hosts_file: Path):
        self.name = name
        self.hosts_file = hosts_file
        self._orig_net: int | None = None
        self._orig_mnt: int | None = None
        self._cwd: str | None = None
        self._created = False
        self._in_mnt = False

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def enter(self) -> None:
        self._orig_net = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._orig_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        self._cwd = os.getcwd()
        # Created from the original mount namespace, so that `ip netns` sees
        # and deletes it there too.
        _run("ip", "netns", "add", self.name)
        self._created = True
        _run("ip", "-n", self.name, "link", "set", "lo", "up")
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.setns(fd, os.CLONE_NEWNET)
        finally:
            os.close(fd)
        try:
            os.unshare(os.CLONE_NEWNS)
        except OSError as e:
            raise RuntimeError(
                f"cannot unshare the mount namespace ({e}); the process must be "
                f"single-threaded, and has {len(os.listdir('/proc/self/task'))} threads"
            ) from e
        self._in_mnt = True
        # Without rprivate our bind mount would propagate back to the host.
        _run("mount", "--make-rprivate", "/")
        _run("mount", "--bind", str(self.hosts_file), "/etc/hosts")

    def leave(self) -> None:
        """Undo enter(), whatever part of it ran. Safe to call twice."""
        if self._in_mnt and self._orig_mnt is not None:
            try:
                os.setns(self._orig_mnt, os.CLONE_NEWNS)  # also drops our mounts
                self._in_mnt = False
                os.chdir(self._cwd)  # setns reset the cwd to /
            except OSError:
                # Threads exist now, so this process must stay in its mount
                # namespace: at least give it the real /etc/hosts back.
                subprocess.run(["umount", "/etc/hosts"], capture_output=True)
        if self._orig_net is not None:
            os.setns(self._orig_net, os.CLONE_NEWNET)
        if self._created:
            cmd = ["ip", "netns", "delete", self.name]
            if self._in_mnt:
                # /run/netns/NAME must be unmounted in the original mount
                # namespace, which this process can no longer enter.
                cmd = ["nsenter", f"--mount=/proc/self/fd/{self._orig_mnt}"] + cmd
                subprocess.run(cmd, check=True, capture_output=True, pass_fds=[self._orig_mnt])
            else:
                _run(*cmd)
            self._created = False
        for fd in (self._orig_net, self._orig_mnt):
            if fd is not None:
                os.close(fd)
        self._orig_net = self._orig_mnt = None
