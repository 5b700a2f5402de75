"""deploy/ read as the tools read it, without starting anything: the parent's two distribution
configs, the compose file, the Dockerfile and the central systemd unit say what deploy/README.md
and docs/design.md, "A parent registry" promise, and every hubcache option they pass is one `hubcache run` accepts.
tests/e2e/test_deploy.py runs them."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from harness.deployfiles import (
    CENTRAL_UNIT,
    COMPOSE,
    DEPLOY,
    DOCKERFILE,
    PARENT_FS,
    PARENT_S3,
    ROOT,
    V3_ONLY,
    S3Bucket,
    drop,
    for_distribution_28,
    load_yaml,
    option_names,
    set_options,
    substitute,
    unit_exec_start,
)

README = DEPLOY / "README.md"
# mitmproxy's proxyauth addon imports ldap3, which warns on import about pyasn1 names
pytestmark = pytest.mark.filterwarnings("ignore:(tag|type)Map is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def names() -> set[str]:
    return option_names()


@pytest.mark.parametrize("path", [PARENT_FS, PARENT_S3], ids=["filesystem", "s3"])
def test_parent_config_is_a_tls_proxy_of_docker_hub_with_its_own_logins(path):
    cfg = load_yaml(path)
    assert str(cfg["version"]) == "0.1"
    proxy = cfg["proxy"]
    assert proxy["remoteurl"] == "https://registry-1.docker.io"
    assert proxy["username"] and "password" not in proxy  # the password only from REGISTRY_PROXY_PASSWORD
    assert "ttl" in proxy
    assert set(cfg["auth"]) == {"htpasswd"} and cfg["auth"]["htpasswd"]["path"]
    tls = cfg["http"]["tls"]
    assert tls["certificate"] and tls["key"]
    assert cfg["http"]["debug"]["prometheus"]["enabled"] is True
    assert not cfg["http"]["debug"]["addr"].startswith(":")  # no TLS, no login there: not on every address
    assert cfg["log"]["formatter"] == "json" and cfg["log"]["accesslog"]["disabled"] is True
    assert cfg["storage"]["delete"]["enabled"] is True
    assert cfg["health"]["storagedriver"]["enabled"] is True
    # While a check fails, distribution answers 503 to everything: no check may depend on Docker Hub
    assert set(cfg["health"]) <= {"storagedriver", "file"}
    assert "secret" not in cfg["http"]


def test_filesystem_config_stores_on_disk_and_s3_config_in_a_bucket_without_redirects():
    fs, s3 = load_yaml(PARENT_FS), load_yaml(PARENT_S3)
    assert set(fs["storage"]) - {"delete", "cache", "maintenance", "redirect"} == {"filesystem"}
    assert set(s3["storage"]) - {"delete", "cache", "maintenance", "redirect"} == {"s3"}
    assert s3["storage"]["redirect"]["disable"] is True  # hubcache and runners never see the bucket
    assert s3["storage"]["s3"]["bucket"] and s3["storage"]["s3"]["region"]
    assert "accesskey" not in s3["storage"]["s3"] and "secretkey" not in s3["storage"]["s3"]
    assert s3["proxy"]["ttl"] == 0  # replicas sharing a bucket overwrite each other's expiry state
    # the S3 file says everything but storage and proxy.ttl is as in the filesystem one
    same = (("storage",), ("proxy", "ttl"))
    assert drop(fs, same) == drop(s3, same)


def test_the_v3_only_keys_are_in_the_config_and_listed_in_the_readme():
    drop(load_yaml(PARENT_FS), V3_ONLY)  # KeyError if the list names a key the file lost
    untested = README.read_text().split("untested here: v3 only", 1)[1].split("\n\n", 1)[0]
    for path in V3_ONLY:
        assert f"`{'.'.join(path)}`" in untested


def _compose() -> dict:
    return load_yaml(COMPOSE)


def test_compose_runs_the_parent_on_the_shipped_config_and_hubcache_built_from_this_checkout(names):
    services = _compose()["services"]
    assert set(services) == {"parent", "hubcache"}
    parent, hub = services["parent"], services["hubcache"]
    assert parent["image"] == "distribution/distribution:3"
    mounts = {m.split(":")[1]: m.split(":")[0] for m in parent["volumes"]}
    assert (DEPLOY / mounts["/etc/distribution/config.yml"]).resolve() == PARENT_FS
    assert {"REGISTRY_PROXY_USERNAME", "REGISTRY_PROXY_PASSWORD"} <= set(parent["environment"])
    assert (ROOT / hub["build"]["dockerfile"]).resolve() == DOCKERFILE
    assert (DEPLOY / hub["build"]["context"]).resolve() == ROOT
    opts = set_options(hub["command"])
    assert set(opts) <= names, set(opts) - names
    # the parent URL names the parent's alias and the port its config listens on
    url = re.fullmatch(r"https://([^:/]+):(\d+)", opts["hubcache_parent"])
    assert url and url[1] in parent["networks"]["default"]["aliases"]
    assert load_yaml(PARENT_FS)["http"]["addr"] == f":{url[2]}" and f"{url[2]}:{url[2]}" in parent["ports"]
    # the files hubcache is told to read are mounted where it is told to look
    hub_mounts = {m.split(":")[1] for m in hub["volumes"]}
    assert {opts["hubcache_parent_ca"], opts["hubcache_parent_credentials"]} <= hub_mounts
    # no proxyauth, so open on the container's addresses on purpose: reachable from this host only
    assert "proxyauth" not in opts and opts["hubcache_open_proxy"] == "allow"
    assert all(p.startswith("127.0.0.1:") for p in hub["ports"])
    # the parent's debug listener (no TLS, no login) is published on loopback only
    assert [p for p in parent["ports"] if p.endswith(":5001")] == ["127.0.0.1:5001:5001"]


def test_compose_mounts_only_files_that_ship_or_that_the_readme_says_to_make():
    readme = README.read_text()
    services = _compose()["services"]
    named = set(_compose()["volumes"])
    for svc in services.values():
        for m in svc["volumes"]:
            source = m.split(":")[0]
            if source in named:
                continue
            path = (DEPLOY / source).resolve()
            rel = str(path.relative_to(DEPLOY))
            assert path.exists() or f"deploy/{rel}" in readme, f"{source}: neither shipped nor in deploy/README.md"


def test_the_dockerfile_installs_the_package_and_runs_hubcache_with_the_volumes_compose_mounts():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.13-slim$", text, re.M)
    assert re.search(r"^USER hubcache$", text, re.M)
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*?\])$", text, re.M | re.S)[1].replace("\\\n", ""))
    assert entry[:2] == ["hubcache", "run"]
    volumes = set(json.loads(re.search(r"^VOLUME (\[.*\])$", text, re.M)[1]))
    assert {entry[entry.index("--store") + 1], entry[entry.index("--confdir") + 1]} == volumes
    targets = {m.split(":")[1] for m in _compose()["services"]["hubcache"]["volumes"]}
    assert volumes <= targets


def _unit() -> dict[str, list[str]]:
    """The unit's directives, each name with its values (continuation lines joined)."""
    out: dict[str, list[str]] = {}
    for line in CENTRAL_UNIT.read_text().replace("\\\n", " ").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def test_central_unit_listens_for_the_network_with_a_login_and_the_parent(names):
    unit = _unit()
    (exec_start,) = unit["ExecStart"]
    argv = shlex.split(exec_start)
    assert argv[:2] == ["/opt/hubcache/venv/bin/hubcache", "run"]
    opts = set_options(argv)
    assert set(opts) <= names, set(opts) - names
    assert opts["proxyauth"] == "@/etc/hubcache/htpasswd"  # every client logs in
    assert {"hubcache_parent", "hubcache_parent_ca", "hubcache_parent_credentials"} <= set(opts)
    env = dict(kv.split("=", 1) for e in unit["Environment"] for kv in e.split())
    assert env["HUBCACHE_LISTEN_HOST"] == "0.0.0.0" and argv[argv.index("--listen-host") + 1] == "${HUBCACHE_LISTEN_HOST}"
    assert re.fullmatch(r"https://[^/]+", env["HUBCACHE_PARENT"])


def test_central_unit_keeps_the_single_host_units_hardening_with_more_descriptors():
    central = _unit()
    single: dict[str, list[str]] = {}
    for line in (ROOT / "scripts/hubcache.service").read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, _, v = line.partition("=")
            single.setdefault(k, []).append(v)
    for key in ("User", "Group", "NoNewPrivileges", "ProtectSystem", "ReadWritePaths", "ProtectHome", "PrivateTmp",
                "PrivateDevices", "ProtectKernelTunables", "ProtectKernelModules", "ProtectControlGroups",
                "RestrictAddressFamilies", "RestrictSUIDSGID", "LockPersonality", "UMask", "StateDirectory",
                "StateDirectoryMode", "Restart", "TimeoutStopSec", "LogRateLimitIntervalSec"):
        assert central.get(key) == single[key], key
    assert int(central["LimitNOFILE"][0]) > int(single["LimitNOFILE"][0])


def test_readme_names_every_file_in_deploy():
    readme = README.read_text()
    for p in sorted(DEPLOY.rglob("*")):
        if p.is_file() and p != README:
            assert f"`{p.relative_to(DEPLOY)}`" in readme, p


def test_every_file_deploy_says_to_make_is_kept_out_of_git():
    ignored = (DEPLOY / ".gitignore").read_text().split()
    for made in ("parent/tls/", "parent/htpasswd", "hubcache/", ".env"):  # keys and passwords
        assert made in ignored, made


# ---------------------------------------------------------------- the helpers tests/e2e/test_deploy.py runs the files with


def test_unit_exec_start_expands_the_units_environment_as_systemd_does():
    unit = ("[Service]\nEnvironment=HOST=0.0.0.0 URL=https://p:5000 ARGS=\n"
            "ExecStart=/bin/x run --host ${HOST} \\\n    --set parent=${URL} $ARGS\n")
    assert unit_exec_start(unit) == ["/bin/x", "run", "--host", "0.0.0.0", "--set", "parent=https://p:5000"]
    assert unit_exec_start(unit.replace("ARGS=", "ARGS='--set a=1  --set b=2'"))[-4:] == ["--set", "a=1", "--set", "b=2"]
    with pytest.raises(KeyError):
        unit_exec_start(unit.replace("HOST=0.0.0.0 ", ""))


def test_substitute_replaces_whole_values_only_and_refuses_a_stale_mapping():
    args = ["hubcache", "run", "--listen-port", "3128", "--set", "proxyauth=@/etc/h", "--set", "x=/etc/h/more"]
    assert substitute(args, {"hubcache": "/v/hubcache", "3128": "4000", "@/etc/h": "@/tmp/h"}) == [
        "/v/hubcache", "run", "--listen-port", "4000", "--set", "proxyauth=@/tmp/h", "--set", "x=/etc/h/more"]
    with pytest.raises(ValueError, match="9090"):
        substitute(args, {"127.0.0.1:9090": "127.0.0.1:1"})


def test_the_s3_config_for_2_8_changes_only_the_bucket_its_endpoint_and_the_hosts_values(tmp_path):
    shipped = load_yaml(PARENT_S3)
    ran = for_distribution_28(shipped, addr=":1", debug_addr="127.0.0.1:2", cert=tmp_path / "c", key=tmp_path / "k",
                              htpasswd=tmp_path / "h", storage=S3Bucket("b", "https://127.0.0.1:3"), drain=tmp_path / "d")
    s3 = ran["storage"]["s3"]
    assert (s3.pop("bucket"), s3.pop("regionendpoint")) == ("b", "https://127.0.0.1:3")
    assert s3 == {k: v for k, v in shipped["storage"]["s3"].items() if k != "bucket"}  # secure, rootdirectory, ...
    assert ran["storage"]["redirect"] == shipped["storage"]["redirect"] == {"disable": True}
    assert "ttl" not in ran["proxy"]
