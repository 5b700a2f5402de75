"""Named log events: what an operator's log pipeline matches on. An upstream that fails is one
warning when its back-off starts (not one per refused request), and one info line when it
answers again; JSON lines carry the event's name and fields."""

from __future__ import annotations

import json
import logging

from hubcache import logs
from hubcache.metrics import Metrics
from hubcache.settings import Settings
from hubcache.upstream.dockerhub import DockerHub


def _events(caplog, name):
    return [r for r in caplog.records if getattr(r, "event", None) == name]


def test_a_failing_upstream_is_one_warning_per_back_off_and_one_line_when_it_recovers(caplog):
    dh = DockerHub(Metrics())
    dh.configure(Settings(), ["hubcache_credentials"])
    caplog.set_level(logging.INFO, logger="hubcache")
    for _ in range(5):  # every request during the back-off fails the same way
        dh.result("registry-1.docker.io", None, "connection refused")
    dh.result("production.cloudflare.docker.com", 503)
    backoffs = _events(caplog, "upstream_backoff")
    assert [(r.levelno, r.fields["host"]) for r in backoffs] == [
        (logging.WARNING, "registry-1.docker.io"), (logging.WARNING, "production.cloudflare.docker.com")]
    assert backoffs[0].fields["reason"] == "connection refused"
    assert "HTTPS_PROXY" in backoffs[0].getMessage()  # the fix is in the line
    dh.result("registry-1.docker.io", 200)
    dh.result("registry-1.docker.io", 200)  # already well: nothing more
    assert [r.fields["host"] for r in _events(caplog, "upstream_recovered")] == ["registry-1.docker.io"]


def test_a_pull_limit_and_a_low_budget_are_named_warnings_without_the_secret(caplog, monkeypatch, tmp_path):
    creds = tmp_path / "creds"
    creds.write_text('[[accounts]]\nusername = "ci-bot"\ntoken = "s3cr3t-token"\n')
    creds.chmod(0o600)
    dh = DockerHub(Metrics())
    caplog.set_level(logging.INFO, logger="hubcache")
    dh.configure(Settings(credentials=str(creds), budget_reserve=5), ["hubcache_credentials"])
    assert _events(caplog, "accounts_loaded")[0].fields["accounts"] == ["ci-bot"]
    dh.observe_budget("ci-bot", "GET", 200, {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "3;w=21600"})
    assert dh.budget_low() and dh.budget_low()
    assert len(_events(caplog, "budget_low")) == 1  # once per window, not per request
    dh.observe_budget("ci-bot", "GET", 429, {}, b"")  # bare: the address's abuse limit, not ci-bot's
    assert _events(caplog, "pull_limit") == []
    dh.observe_budget("ci-bot", "GET", 429, {}, b'{"errors":[{"code":"TOOMANYREQUESTS","message":"m"}]}')
    assert _events(caplog, "pull_limit")[0].fields == {"account": "ci-bot"}
    assert "s3cr3t" not in caplog.text


def test_the_abuse_limit_is_one_warning_per_back_off_with_the_fix(caplog):
    dh = DockerHub(Metrics())
    dh.configure(Settings(), ["hubcache_credentials"])
    caplog.set_level(logging.INFO, logger="hubcache")
    for _ in range(3):
        dh.result("registry-1.docker.io", 429, body=b"")
    (abuse,) = _events(caplog, "abuse_limit")
    assert abuse.levelno == logging.WARNING and abuse.fields == {"host": "registry-1.docker.io", "seconds": 30}
    assert "lower hubcache_upstream_rate" in abuse.getMessage() and _events(caplog, "upstream_backoff") == []


def test_json_lines_carry_the_event_name_and_its_fields():
    record = logging.LogRecord("hubcache.x", logging.WARNING, __file__, 1, "%s", ("upstream h failed",), None)
    record.event, record.fields = "upstream_backoff", {"host": "h", "seconds": 30.0}
    line = json.loads(logs.JsonFormatter().format(record))
    assert line["event"] == "upstream_backoff" and line["host"] == "h" and line["seconds"] == 30.0
    assert line["level"] == "warning" and line["message"] == "upstream h failed"


def test_every_event_the_code_logs_is_in_the_readme():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = "\n".join(p.read_text() for p in (root / "addon" / "hubcache").rglob("*.py"))
    named = set(re.findall(r'logs\.event\([^"]*"(\w+)"', code))  # the first string: the name
    named |= {n for pair in re.findall(r'"(\w+)" if [^"]+ else "(\w+)"', code) for n in pair if n.startswith("blob_")}
    assert {"start", "request", "upstream_backoff", "stop"} <= named  # the scan finds them
    readme = (root / "README.md").read_text()
    assert [n for n in sorted(named) if f"`{n}`" not in readme] == []


def test_a_429_from_another_registry_backs_that_registry_off_and_no_other(caplog):
    dh = DockerHub(Metrics())
    dh.configure(Settings(), ["hubcache_credentials"])
    caplog.set_level(logging.INFO, logger="hubcache")
    dh.result("ghcr.io", 429, body=b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}')
    (backoff,) = _events(caplog, "upstream_backoff")
    assert backoff.fields["host"] == "ghcr.io" and "429" in backoff.fields["reason"]
    assert dh.unavailable("ghcr.io") and not dh.unavailable("registry-1.docker.io") and not dh.unavailable("quay.io")
    assert _events(caplog, "abuse_limit") == [] and _events(caplog, "pull_limit") == []


def test_a_host_that_answers_after_its_back_off_ended_is_told_as_recovered(caplog):
    dh = DockerHub(Metrics())
    dh.configure(Settings(backoff=0), ["hubcache_credentials"])
    caplog.set_level(logging.INFO, logger="hubcache")
    dh.result("registry-1.docker.io", None, "connection refused")
    assert dh.unavailable("registry-1.docker.io") is None  # the back-off (0 s) is over: it is asked again
    dh.result("registry-1.docker.io", 200)
    assert [r.fields["host"] for r in _events(caplog, "upstream_recovered")] == ["registry-1.docker.io"]
