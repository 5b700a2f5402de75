from hypothesis import given
from hypothesis import strategies as st

from hubcache.decide.mediatypes import Accept, choose
from hubcache.model import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

SKOPEO = [OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json", DOCKER_LIST, OCI_INDEX,
          "application/vnd.docker.distribution.manifest.v1+prettyjws", "application/vnd.docker.distribution.manifest.v1+json"]
CONTAINERD = [f"{DOCKER_MANIFEST}, {DOCKER_LIST}, {OCI_MANIFEST}, {OCI_INDEX}, */*"]


def test_separate_lines_and_comma_lists_parse_the_same():
    assert Accept.parse(SKOPEO[:4]).ranges == Accept.parse([", ".join(SKOPEO[:4])]).ranges


def test_client_that_accepts_both_gets_the_index():
    assert choose([OCI_MANIFEST, OCI_INDEX], Accept.parse(SKOPEO)) == OCI_INDEX


def test_type_not_accepted_is_not_served():
    assert choose([OCI_INDEX], Accept.parse([DOCKER_MANIFEST])) is None
    assert choose([OCI_INDEX, DOCKER_MANIFEST], Accept.parse([DOCKER_MANIFEST])) == DOCKER_MANIFEST


def test_wildcards_and_q_values():
    assert Accept.parse(CONTAINERD).accepts("application/x-anything")
    assert Accept.parse(["application/*"]).accepts(OCI_INDEX)
    a = Accept.parse([f"{OCI_INDEX};q=0.5, {OCI_MANIFEST}"])
    assert choose([OCI_INDEX, OCI_MANIFEST], a) == OCI_MANIFEST
    assert not Accept.parse([f"{OCI_INDEX};q=0"]).accepts(OCI_INDEX)
    assert not Accept.parse([f"*/*, {OCI_INDEX};q=0"]).accepts(OCI_INDEX)


def test_no_accept_header_accepts_anything():
    assert choose([OCI_MANIFEST], Accept.parse([])) == OCI_MANIFEST


@given(st.lists(st.text(max_size=200), max_size=8))
def test_parse_never_crashes(lines):
    a = Accept.parse(lines)
    for _, q in a.ranges:
        assert 0.0 <= q <= 1.0
