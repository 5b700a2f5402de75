"""The deployment files in deploy/ as tests read them: the parent's distribution configs, the
compose file and the central systemd unit (tests/unit/test_deploy.py, tests/e2e/test_deploy.py).

    load_yaml(PARENT_FS)             # the config as distribution parses it (YAML, safe loader)
    for_distribution_28(cfg, ...)    # what Debian's docker-registry 2.8 can run of it
    set_options(args)                # the NAME of every `--set NAME=VALUE` in a command line
    option_names()                   # every option `hubcache run --set` accepts
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PARENT_FS = DEPLOY / "parent" / "config-filesystem.yml"
PARENT_S3 = DEPLOY / "parent" / "config-s3.yml"
COMPOSE = DEPLOY / "compose.yml"
CENTRAL_UNIT = DEPLOY / "hubcache-central.service"
DOCKERFILE = DEPLOY / "hubcache.Dockerfile"

# Keys of the configs that distribution 2.8 does not have (v3 only). 2.8 silently ignores unknown
# keys, so they are removed before a 2.8 run only to say plainly what such a run did not test;
# deploy/README.md lists the same ("untested here: v3 only").
V3_ONLY: tuple[tuple[str, ...], ...] = (
    ("proxy", "ttl"),
)

def load_yaml(path: Path) -> Any:
    from ruamel.yaml import YAML  # mitmproxy's dependency, so in the venv

    return YAML(typ="safe", pure=True).load(Path(path).read_text())


def drop(cfg: dict, keys: tuple[tuple[str, ...], ...]) -> dict:
    """A copy of `cfg` without each key path in `keys`; KeyError if one is not there (a list
    that names keys the file no longer has is stale)."""
    out = copy.deepcopy(cfg)
    for path in keys:
        node = out
        for k in path[:-1]:
            node = node[k]
        del node[path[-1]]
    return out


def for_distribution_28(cfg: dict, *, addr: str, debug_addr: str, cert: Path, key: Path, htpasswd: Path,
                        storage: Path, drain: Path) -> dict:
    """The config as Debian's docker-registry 2.8 runs it in a test: the v3-only keys removed,
    and only the host-specific values replaced (addresses, file paths); everything else as shipped."""
    out = drop(cfg, V3_ONLY)
    out["http"]["addr"] = addr
    out["http"]["debug"]["addr"] = debug_addr
    out["http"]["tls"]["certificate"] = str(cert)
    out["http"]["tls"]["key"] = str(key)
    out["auth"]["htpasswd"]["path"] = str(htpasswd)
    out["storage"]["filesystem"]["rootdirectory"] = str(storage)
    (check,) = out["health"]["file"]
    check["file"] = str(drain)
    return out


def set_options(args: list[str]) -> dict[str, str]:
    """{NAME: VALUE} of every `--set NAME=VALUE` (or `--set=NAME=VALUE`) in a command line."""
    out: dict[str, str] = {}
    it = iter(args)
    for a in it:
        if a == "--set":
            a = "--set=" + next(it)
        if a.startswith("--set="):
            name, _, value = a[len("--set="):].partition("=")
            out[name] = value
    return out


def option_names() -> set[str]:
    """Every option `hubcache run --set` accepts: mitmproxy's (its default addons, as `hubcache run`
    loads them) and hubcache's (settings.load, which the addon calls)."""
    import asyncio

    from mitmproxy import options
    from mitmproxy.tools.dump import DumpMaster

    from hubcache import settings

    async def mitmproxy_names() -> set[str]:
        opts = options.Options()
        DumpMaster(opts, with_termlog=False, with_dumper=False)
        return set(opts.keys())

    class Names:
        def __init__(self) -> None:
            self.names: set[str] = set()

        def add_option(self, name: str, *_: object) -> None:
            self.names.add(name)

    ours = Names()
    settings.load(ours)
    return asyncio.run(mitmproxy_names()) | ours.names
