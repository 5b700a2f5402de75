"""A runner host that reaches the internet only through a corporate HTTP proxy, for e2e tests.

    with EgressNet("hce") as net, Tinyproxy(workdir, net.proxy_ip, login=None) as proxy:
        hub = start_hubcache(f"mode=upstream:{proxy.url}", wrap=net.enter, host=net.inside_ip)

`EgressNet` is a network namespace of its own for the process under test (hubcache), joined to
the current one (the fake Hub's) by a veth pair: from inside, the only address it can reach is
`proxy_ip`. The Hub's names still resolve there to 127.0.0.x (same /etc/hosts: the mount namespace
is shared), which inside is its own empty loopback: a connection that skips the proxy is refused.
`Tinyproxy` is Debian's tinyproxy on `proxy_ip` in the current namespace, where the Hub's names
reach the fake Hub; its log shows every CONNECT it was asked for.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import time
from pathlib import Path

from harness.proxy import terminate

SUBNET = "10.203.{n}.{host}"


def _ip(*cmd: str) -> None:
    subprocess.run(["ip", *cmd], check=True, capture_output=True, text=True)


class EgressNet:
    def __init__(self, prefix: str = "hce") -> None:
        n = os.getpid() % 250
        self.name = f"{prefix}-{os.getpid()}"
        self.outside, self.inside = f"{prefix}{n}o", f"{prefix}{n}i"
        self.proxy_ip = SUBNET.format(n=n, host=1)  # in the current namespace: where the proxy listens
        self.inside_ip = SUBNET.format(n=n, host=2)  # the namespace's only address besides loopback
        self._up = False

    @property
    def enter(self) -> list[str]:
        """A command prefix that runs a command inside the namespace."""
        return ["nsenter", f"--net=/run/netns/{self.name}"]

    def start(self) -> EgressNet:
        _ip("netns", "add", self.name)
        self._up = True
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("link", "add", self.outside, "type", "veth", "peer", "name", self.inside)
        _ip("link", "set", self.inside, "netns", self.name)
        _ip("addr", "add", f"{self.proxy_ip}/30", "dev", self.outside)
        _ip("link", "set", self.outside, "up")
        _ip("-n", self.name, "addr", "add", f"{self.inside_ip}/30", "dev", self.inside)
        _ip("-n", self.name, "link", "set", self.inside, "up")
        return self

    def stop(self) -> None:
        if self._up:
            subprocess.run(["ip", "link", "del", self.outside], capture_output=True)
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
            self._up = False

    def __enter__(self) -> EgressNet:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Tinyproxy:
    """tinyproxy in the foreground on ip:port; `login` ("user:password") makes it answer 407 to
    a CONNECT without that Proxy-Authorization."""

    def __init__(self, workdir: Path, ip: str, allow: str, login: str | None = None, port: int = 3128) -> None:
        self.workdir = Path(workdir)
        self.ip, self.port, self.allow, self.login = ip, port, allow, login
        self.logfile = self.workdir / "tinyproxy.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    def start(self) -> Tinyproxy:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "tinyproxy.conf"
        lines = [f"Port {self.port}", f"Listen {self.ip}", "Timeout 60", f'LogFile "{self.logfile}"',
                 "LogLevel Info", "MaxClients 200", f"Allow {self.allow}", "ConnectPort 443"]
        if self.login:
            user, _, password = self.login.partition(":")
            lines.append(f"BasicAuth {user} {password}")
        conf.write_text("\n".join(lines) + "\n")
        out = open(self.workdir / "tinyproxy.out", "ab")
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
        out.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tinyproxy exited with {self.proc.returncode}: {self.log()[-1000:]}")
            try:
                socket.create_connection((self.ip, self.port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"tinyproxy not listening on {self.ip}:{self.port}") from None
                time.sleep(0.05)
        self.mark()  # the readiness check above is no client's connection
        return self

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""

    def mark(self) -> int:
        self._mark = len(self.log())
        return self._mark

    def connects(self, since: int | None = None) -> list[str]:
        """host:port of each CONNECT the proxy was asked for (since `since`, a mark())."""
        text = self.log()[since if since is not None else 0:]
        return re.findall(r"Request \(file descriptor \d+\): CONNECT (\S+) HTTP", text)

    def refused_connects(self, since: int | None = None) -> int:
        """How many CONNECTs the proxy did not open (since `since`, a mark()). tinyproxy logs
        nothing for the 407 it answers to a CONNECT without its login, only the request line,
        so a refused CONNECT is one that no 'Established connection' line follows."""
        text = self.log()[since if since is not None else 0:]
        return len(self.connects(since)) - len(re.findall(r"Established connection to host ", text))

    def connections(self, since: int | None = None) -> int:
        """How many TCP connections the proxy accepted (since `since`, a mark())."""
        text = self.log()[since if since is not None else 0:]
        return len(re.findall(r"Connect \(file descriptor \d+\): ", text))

    def __enter__(self) -> Tinyproxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def basic(login: str) -> str:
    return "Basic " + base64.b64encode(login.encode()).decode()
