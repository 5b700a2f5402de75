"""Mistakes made at the command line: one line in hubcache's terms, with the fix, and the exit
code the README documents; read-only commands never create a store."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hubcache.store import Store
from hubcache.tools import preflight

HUBCACHE = Path(sys.executable).parent / "hubcache"


def hubcache(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HUBCACHE), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def run_args(tmp_path: Path, store: str, port: int) -> list[str]:
    return ["run", "--store", store, "--confdir", str(tmp_path / "confdir"), "--listen-port", str(port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def one_line(res: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in res.stderr + res.stdout
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_a_second_hubcache_on_a_store_in_use_says_by_whom_in_one_line(tmp_path):
    held = Store(tmp_path / "store")  # this process holds the store, as a running hubcache would
    try:
        res = hubcache(*run_args(tmp_path, str(tmp_path / "store"), free_port()), cwd=tmp_path)
    finally:
        held.close()
    assert res.returncode == preflight.EXIT_STORE_IN_USE == 3
    line = one_line(res)
    assert line.startswith("hubcache: store ") and "in use by pid" in line and "--store" in line


def test_a_store_path_that_is_a_file_is_refused_in_one_line(tmp_path):
    (tmp_path / "afile").write_text("")
    res = hubcache(*run_args(tmp_path, str(tmp_path / "afile"), free_port()), cwd=tmp_path)
    assert res.returncode == preflight.EXIT_STORE_UNUSABLE == 4
    assert "is a file, not a directory" in one_line(res)


def test_a_busy_port_names_the_option_to_change(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = hubcache(*run_args(tmp_path, str(tmp_path / "store"), taken.getsockname()[1]), cwd=tmp_path)
    assert res.returncode == preflight.EXIT_PORT_BUSY == 5
    assert "--listen-port" in one_line(res)
    assert not (tmp_path / "store" / "data.mdb").exists()  # refused before the store was opened


def test_a_busy_metrics_port_names_its_option_instead_of_a_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        res = hubcache(*run_args(tmp_path, str(tmp_path / "store"), free_port()), "--set",
                       f"hubcache_metrics_listen=127.0.0.1:{taken.getsockname()[1]}", cwd=tmp_path)
    assert res.returncode == preflight.EXIT_PORT_BUSY == 5
    assert "choose another with hubcache_metrics_listen" in one_line(res)


def test_a_bad_option_value_is_one_line_naming_the_option(tmp_path):
    res = hubcache(*run_args(tmp_path, str(tmp_path / "store"), free_port()), "--set", "hubcache_max_size=lots", cwd=tmp_path)
    assert res.returncode == preflight.EXIT_USAGE == 2
    assert "hubcache_max_size: not a size: 'lots'" in one_line(res)


@pytest.mark.parametrize("command", [["verify"], ["history", "alpine"]])
def test_read_only_commands_on_a_missing_store_fail_and_create_nothing(tmp_path, command):
    res = hubcache(*command, "--store", str(tmp_path / "typo"), cwd=tmp_path)
    assert res.returncode == preflight.EXIT_STORE_UNUSABLE
    assert "no hubcache store at" in one_line(res)
    assert not (tmp_path / "typo").exists()


def test_verify_beside_a_running_hubcache_says_to_stop_it(tmp_path):
    held = Store(tmp_path / "store")
    try:
        res = hubcache("verify", "--store", str(tmp_path / "store"), cwd=tmp_path)
    finally:
        held.close()
    assert res.returncode == preflight.EXIT_STORE_IN_USE
    assert "stop it first" in one_line(res)


@pytest.mark.parametrize("setting", ["confdir", "credentials"])
def test_a_missing_or_unusable_file_is_one_line_naming_it(tmp_path, setting):
    (tmp_path / "afile").write_text("")
    args = run_args(tmp_path, str(tmp_path / "store"), free_port())
    if setting == "confdir":  # a directory that cannot be made: under a file
        args[args.index("--confdir") + 1] = str(tmp_path / "afile" / "confdir")
    else:
        args += ["--set", f"hubcache_credentials={tmp_path / 'missing.toml'}"]
    res = hubcache(*args, cwd=tmp_path)
    assert res.returncode == preflight.EXIT_USAGE == 2
    line = one_line(res)
    assert ("--confdir" in line and "afile/confdir" in line) if setting == "confdir" else "missing.toml" in line
    assert not (tmp_path / "store" / "data.mdb").exists()
