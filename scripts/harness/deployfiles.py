"""The deployment files in deploy/ as tests read them: the parent's distribution configs, the
compose file and the central systemd unit (tests/unit/test_deploy.py, tests/e2e/test_deploy.py).

    load_yaml(PARENT_FS)             # the config as distribution parses it (YAML, safe loader)
    for_distribution_28(cfg, ...)    # what Debian's docker-registry 2.8 can run of it (disk or S3Bucket)
    unit_exec_start()                # the central unit's ExecStart= as systemd runs it
    compose_hubcache_command()       # what compose's hubcache container runs (ENTRYPOINT + command)
    compose_healthcheck("parent")    # a compose service's health check command
    substitute(args, {old: new})     # the test's paths and addresses in such a command line
    set_options(args)                # the NAME of every `--set NAME=VALUE` in a command line
    option_names()                   # every option `hubcache run --set` accepts
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any, NamedTuple

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

class S3Bucket(NamedTuple):
    """Where a test's config-s3.yml stores: a bucket at an S3 endpoint (harness.motos3)."""

    bucket: str
    endpoint: str


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
                        storage: Path | S3Bucket, drain: Path) -> dict:
    """The config as Debian's docker-registry 2.8 runs it in a test: the v3-only keys removed,
    and only the host-specific values replaced (addresses, file paths, the bucket and its
    endpoint); everything else as shipped. `storage` is the filesystem root for
    config-filesystem.yml, or an S3Bucket for config-s3.yml: its endpoint goes to `regionendpoint`,
    the key the file says to uncomment for an S3-compatible store (2.8 then addresses the bucket
    path-style by itself; its companion `forcepathstyle` is v3 only, see deploy/README.md)."""
    out = drop(cfg, V3_ONLY)
    out["http"]["addr"] = addr
    out["http"]["debug"]["addr"] = debug_addr
    out["http"]["tls"]["certificate"] = str(cert)
    out["http"]["tls"]["key"] = str(key)
    out["auth"]["htpasswd"]["path"] = str(htpasswd)
    if isinstance(storage, S3Bucket):
        s3 = out["storage"]["s3"]
        assert s3["bucket"].startswith("REPLACE-"), s3["bucket"]  # the placeholder, nothing else
        s3["bucket"] = storage.bucket
        s3["regionendpoint"] = storage.endpoint
    else:
        out["storage"]["filesystem"]["rootdirectory"] = str(storage)
    (check,) = out["health"]["file"]
    check["file"] = str(drain)
    return out


def unit_exec_start(text: str) -> list[str]:
    """The ExecStart= command of a systemd unit as systemd runs it with the unit's own
    Environment= values (no EnvironmentFile): lines continued with a backslash joined, `${VAR}`
    replaced within its word, `$VAR` alone split into words (none when empty). KeyError for a
    variable the unit does not set."""
    env: dict[str, str] = {}
    command = None
    for line in text.replace("\\\n", " ").splitlines():
        if line.startswith("Environment="):
            env.update(a.split("=", 1) for a in shlex.split(line[len("Environment="):]))
        elif line.startswith("ExecStart="):
            command = line[len("ExecStart="):]
    assert command is not None, "no ExecStart= in the unit"
    out: list[str] = []
    for word in shlex.split(command):
        alone = re.fullmatch(r"\$(\w+)", word)
        if alone:
            out += env[alone[1]].split()
        else:
            out.append(re.sub(r"\$\{(\w+)\}", lambda m: env[m[1]], word))
    return out


def compose_hubcache_command() -> list[str]:
    """What compose.yml's hubcache container runs: the ENTRYPOINT of hubcache.Dockerfile (exec
    form) followed by the service's `command` (which replaces a CMD; the Dockerfile has none)."""
    dockerfile = DOCKERFILE.read_text().replace("\\\n", " ")
    assert not re.search(r"^CMD\b", dockerfile, re.M)
    (entrypoint,) = re.findall(r"^ENTRYPOINT\s+(\[.*\])\s*$", dockerfile, re.M)
    return [*json.loads(entrypoint), *load_yaml(COMPOSE)["services"]["hubcache"]["command"]]


def compose_healthcheck(service: str) -> list[str]:
    """The command of a compose.yml service's health check (exec form: `test: ["CMD", ...]`)."""
    kind, *command = load_yaml(COMPOSE)["services"][service]["healthcheck"]["test"]
    assert kind == "CMD", kind
    return command


def substitute(args: list[str], replace: dict[str, str]) -> list[str]:
    """`args` with the test's values: an argument equal to a key of `replace`, or the VALUE of a
    NAME=VALUE argument equal to one, becomes its value. ValueError if a key matches nothing (the
    file changed, and the test would no longer run what it says)."""
    used: set[str] = set()

    def one(arg: str) -> str:
        if arg in replace:
            used.add(arg)
            return replace[arg]
        name, eq, value = arg.partition("=")
        if eq and value in replace:
            used.add(value)
            return f"{name}={replace[value]}"
        return arg

    out = [one(a) for a in args]
    if set(replace) - used:
        raise ValueError(f"not in the command line: {sorted(set(replace) - used)}: {args}")
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
