"""`hubcache htpasswd FILE USER`: logins mitmproxy's proxyauth=@FILE accepts, the file mode 0600,
other logins kept, the password never an argument."""

import stat
import subprocess
import sys
from pathlib import Path

from mitmproxy.utils.htpasswd import HtpasswdFile

from hubcache.tools.htpasswd import entries

HUBCACHE = Path(sys.executable).parent / "hubcache"


def htpasswd(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([str(HUBCACHE), "htpasswd", *args], input=stdin, capture_output=True, text=True, timeout=60)


def test_logins_are_added_and_replaced_as_mitmproxy_checks_them(tmp_path):
    path = tmp_path / "htpasswd"
    made = htpasswd("--generate", str(path), "runner")
    assert made.returncode == 0, made.stderr
    generated = made.stdout.strip()
    assert len(generated) >= 24 and generated not in made.stderr
    assert f"--set proxyauth=@{path}" in made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert htpasswd(str(path), "ci-7", stdin="a-long-password-1\n").returncode == 0
    file = HtpasswdFile.from_file(path)
    assert file.check_password("runner", generated) and file.check_password("ci-7", "a-long-password-1")
    assert not file.check_password("runner", "a-long-password-1")
    assert htpasswd(str(path), "runner", stdin="another-password-2\n").returncode == 0  # replaced, the other kept
    file = HtpasswdFile.from_file(path)
    assert file.check_password("runner", "another-password-2") and not file.check_password("runner", generated)
    assert file.check_password("ci-7", "a-long-password-1")
    assert path.read_text().count("runner:") == 1 and path.read_text().startswith("ci-7:$2b$05$")


def test_a_weak_password_or_a_bad_name_is_refused_and_nothing_is_written(tmp_path):
    path = tmp_path / "htpasswd"
    for args, stdin in (((str(path), "runner"), "short\n"), ((str(path), "run:ner"), "a-long-password-1\n"),
                        ((str(path), "runner"), "with:colon-password\n")):
        res = htpasswd(*args, stdin=stdin)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left either


def test_entries_keep_comments_and_order():
    assert entries("# logins\na:x\nb:y\n", "a", "z") == "# logins\nb:y\na:z\n"
