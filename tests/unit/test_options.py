import re

import pytest

from hubcache.settings import allow_hosts_pattern, parse_size


@pytest.mark.parametrize("text,n", [("0", 0), ("512", 512), ("1k", 1024), ("50g", 50 << 30), ("1.5GiB", 3 << 29), ("10MB", 10 << 20)])
def test_parse_size(text, n):
    assert parse_size(text) == n


@pytest.mark.parametrize("text", ["", "x", "-1", "5 bananas"])
def test_parse_size_refuses(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_allow_hosts_pattern_matches_only_listed_hosts():
    rex = re.compile(allow_hosts_pattern(["registry-1.docker.io", "auth.docker.io"], [".r2.cloudflarestorage.com"]), re.I)
    assert rex.search("registry-1.docker.io:443")
    assert rex.search("docker-images-prod.abc.r2.cloudflarestorage.com:443")
    assert not rex.search("registry-1.docker.io.evil.com:443")
    assert not rex.search("gitlab.example.com:443")
    assert not rex.search("xregistry-1.docker.io:443")


def test_parse_time():
    from hubcache.settings import parse_time

    assert parse_time("") is None
    assert parse_time("1700000000") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20Z") == 1700000000.0
    assert parse_time("2023-11-14T22:13:20") == 1700000000.0
    with pytest.raises(ValueError):
        parse_time("yesterday")
