"""The checks that read this host: is hubcache's CA in the system store, does dockerd use the proxy.

Nothing is changed on the host. Only reading another user's /proc/<pid>/environ needs root; without
it the docker unit's environment from systemd stands in.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from pathlib import Path

from hubcache.tools.doctor.certs import judge_ca, pem_certs
from hubcache.tools.doctor.check import GUIDE, Check
from hubcache.tools.doctor.dockerd import daemon_json_proxies, judge_docker, parse_environ, parse_systemctl_environment

DOCKER_PIDFILE = "/var/run/docker.pid"
# Where distributions keep the bundle that update-ca-certificates / update-ca-trust write.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora, Rocky
    "/etc/ssl/ca-bundle.pem",  # SUSE
    "/etc/ssl/cert.pem",
)


def trust_fix(ca: str) -> str:
    ca = ca or "mitmproxy-ca-cert.pem"
    if os.path.exists("/usr/sbin/update-ca-certificates") or os.path.isdir("/usr/local/share/ca-certificates"):
        return (f"`cp {ca} /usr/local/share/ca-certificates/hubcache.crt && update-ca-certificates`, then restart "
                f"dockerd/containerd (certs/README.md)")
    if os.path.exists("/usr/bin/update-ca-trust"):
        return (f"`cp {ca} /etc/pki/ca-trust/source/anchors/hubcache.crt && update-ca-trust`, then restart "
                f"dockerd/containerd (certs/README.md)")
    return "add hubcache's CA to the system trust store and restart dockerd/containerd (certs/README.md)"


def check_ca_store(ca_path: str, issuer: str) -> Check:
    name = "CA in system store"
    bundle = ""
    for candidate in (os.environ.get("SSL_CERT_FILE", ""), ssl.get_default_verify_paths().cafile or "", *SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            bundle = candidate
            break
    if not bundle:
        return Check(name, None, "found no system CA bundle (" + ", ".join(SYSTEM_BUNDLES) + ")")
    ders = pem_certs(Path(bundle).read_text(errors="replace"))
    ca_der = None
    if ca_path:
        try:
            found = pem_certs(Path(ca_path).read_text(errors="replace"))
        except OSError as e:
            return Check(name, False, f"cannot read --ca {ca_path}: {e.strerror}",
                         "copy mitmproxy-ca-cert.pem from hubcache's confdir (/var/lib/hubcache/confdir)")
        if not found:
            return Check(name, False, f"--ca {ca_path} holds no PEM certificate",
                         "use mitmproxy-ca-cert.pem from hubcache's confdir")
        ca_der = found[0]
    return judge_ca(bundle, ders, ca_der, ca_path, issuer, trust_fix(ca_path))


def find_dockerd(proc: str = "/proc") -> list[int]:
    """PIDs of the dockerd to check: the one of docker's pidfile, else every dockerd running."""
    try:
        pid = int(Path(DOCKER_PIDFILE).read_text().strip())
        if Path(f"{proc}/{pid}/comm").read_text().strip() == "dockerd":
            return [pid]
    except (OSError, ValueError):
        pass
    pids = []
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                if Path(f"{proc}/{entry}/comm").read_text().strip() == "dockerd":
                    pids.append(int(entry))
            except OSError:
                continue
    return sorted(pids)


def systemctl_show(unit: str, prop: str) -> str | None:
    try:
        res = subprocess.run(["systemctl", "show", unit, f"--property={prop}"], capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout if res.returncode == 0 else None


def check_docker(checked_proxy: str, pid: int | None, daemon_json: str) -> Check:
    proxies: dict[str, str] | None = None
    try:
        proxies = daemon_json_proxies(Path(daemon_json).read_text())
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        return Check("dockerd proxy", False, f"cannot use {daemon_json}: {e}", "fix the file: dockerd will not start with it")
    env, source = None, ""
    if pid is None:
        pids = find_dockerd()
        if len(pids) > 1:
            return Check("dockerd proxy", None, f"several dockerd processes ({', '.join(map(str, pids))}): "
                         "pass --dockerd-pid")
        pid = pids[0] if pids else None
    if pid is not None:
        try:
            env, source = parse_environ(Path(f"/proc/{pid}/environ").read_bytes()), f"the environment of dockerd (pid {pid})"
        except PermissionError:
            source = f"/proc/{pid}/environ needs root"
        except OSError as e:
            source = f"/proc/{pid}/environ: {e.strerror}"
    need_reload = False
    if env is None:
        shown = systemctl_show("docker", "Environment")
        if shown is not None:
            env, source = parse_systemctl_environment(shown), "the docker unit (systemctl show docker)"
            need_reload = "NeedDaemonReload=yes" in (systemctl_show("docker", "NeedDaemonReload") or "")
        elif pid is None and proxies is None:
            return Check("dockerd proxy", None, "no dockerd running and no systemd to ask (a containerd-only node? "
                         f"see {GUIDE})")
        elif not source:
            source = "no dockerd running, no systemd to ask"
    return judge_docker(env, source, proxies, checked_proxy, need_reload)
