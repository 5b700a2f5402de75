"""What dockerd's configuration says about its proxy, and whether it sends Docker Hub through it.

Pure: parses what the host checks read (/proc/<pid>/environ, `systemctl show`, daemon.json) and
judges it, tested without a dockerd.
"""

from __future__ import annotations

import json
import shlex

from hubcache.settings import DIRECT_HOST
from hubcache.tools.doctor.check import GUIDE, REGISTRY, Check
from hubcache.tools.doctor.proxyenv import no_proxy_from_env, no_proxy_match, proxy_from_env, same_proxy


def parse_environ(data: bytes) -> dict[str, str]:
    """/proc/<pid>/environ: NUL-separated NAME=value."""
    env = {}
    for item in data.split(b"\0"):
        if b"=" in item:
            k, v = item.split(b"=", 1)
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def parse_systemctl_environment(text: str) -> dict[str, str]:
    """`systemctl show docker --property=Environment` output: `Environment=A=1 "B=2 3"`."""
    env = {}
    for line in text.splitlines():
        if not line.startswith("Environment="):
            continue
        try:
            items = shlex.split(line[len("Environment="):])
        except ValueError:
            items = line[len("Environment="):].split()
        for item in items:
            if "=" in item:
                k, v = item.split("=", 1)
                env[k] = v
    return env


def daemon_json_proxies(text: str) -> dict[str, str]:
    """The `proxies` object of /etc/docker/daemon.json (Docker >= 23), {} if none; ValueError if
    the file is not a JSON object (dockerd would refuse to start)."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    proxies = data.get("proxies") or {}
    if not isinstance(proxies, dict):
        raise ValueError("`proxies` is not an object")
    return {str(k): str(v) for k, v in proxies.items()}


def judge_docker(env: dict[str, str] | None, source: str, proxies: dict[str, str] | None,
                 checked_proxy: str, need_reload: bool = False) -> Check:
    """Does dockerd send Docker Hub through a proxy? `env`: dockerd's environment (None: unknown),
    `source`: where it came from; `proxies`: daemon.json's `proxies` (None: no file)."""
    name = "dockerd proxy"
    restart = "systemctl daemon-reload && systemctl restart docker"
    if need_reload:
        return Check(name, False, "the docker unit changed on disk since systemd last read it",
                     f"run `{restart}`")
    json_https = (proxies or {}).get("https-proxy", "")
    if json_https:  # the configuration file wins over the environment (Docker >= 23)
        https, no, where = json_https, (proxies or {}).get("no-proxy", ""), "daemon.json proxies.https-proxy (Docker >= 23)"
    elif env is not None and proxy_from_env(env):
        https, no, where = proxy_from_env(env), no_proxy_from_env(env), f"HTTPS_PROXY in {source}"
    elif env is None:
        return Check(name, None, f"could not read dockerd's environment ({source}) and daemon.json has no proxies")
    else:
        return Check(name, False, f"no HTTPS_PROXY in {source} and no proxies in daemon.json",
                     f"add the systemd drop-in /etc/systemd/system/docker.service.d/http-proxy.conf "
                     f"({GUIDE}), then `{restart}`")
    for host in (REGISTRY, "docker.io", DIRECT_HOST):  # DIRECT_HOST: where large blob downloads are redirected
        if entry := no_proxy_match(no, host):
            return Check(name, False, f"{where} is {https}, but NO_PROXY entry {entry!r} sends {host} around it",
                         f"remove {entry!r} from NO_PROXY, then `{restart}`")
    note = "" if same_proxy(https, checked_proxy) else f" (not {checked_proxy}, the proxy checked here)"
    return Check(name, True, f"{where} is {https}{note}")
