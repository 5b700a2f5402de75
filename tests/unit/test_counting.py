"""What counts as a pull and which pull a request's bytes go to (decide/counting.py)."""

from hubcache.decide.counting import Pulls, Served

IDX = "sha256:" + "1" * 64
MAN = "sha256:" + "2" * 64
LAYER = "sha256:" + "3" * 64


def req(method="GET", reference="12.2", manifest=True, digest=IDX, size=100, status=200, client="10.0.0.7",
        from_store=True, repository="library/postgres"):
    return Served(client=client, repository=repository, image=f"docker.io/{repository}", manifest=manifest,
                  method=method, reference=reference, digest=digest, status=status, size=size, from_store=from_store)


def test_skopeo_pull_is_one_pull_with_every_byte_of_it():
    p = Pulls()
    first = p.count(req(), 0)
    assert first and first.pull and first.hit and first.reference == "docker.io/library/postgres:12.2"
    assert first.digest == IDX and first.bytes == 100 == first.store_bytes
    child = p.count(req(reference=MAN, digest=MAN, size=50), 1)
    layer = p.count(req(reference=LAYER, manifest=False, digest="", size=5000, from_store=False), 2)
    for c in (child, layer):
        assert c and not c.pull and c.reference == "docker.io/library/postgres:12.2" and c.digest == IDX
    assert layer.bytes == 5000 and layer.store_bytes == 0


def test_docker_head_then_get_by_digest_counts_once_and_a_following_get_of_the_tag_too():
    p = Pulls()
    head = p.count(req(method="HEAD"), 0)
    assert head and head.pull and head.bytes == 0
    assert p.count(req(method="GET"), 1).pull is False  # HEAD then GET of the same tag: one pull
    assert p.count(req(method="GET"), 100).pull is True  # much later: a pull of its own


def test_a_second_pull_of_the_tag_counts_again_and_a_miss_is_not_saved():
    p = Pulls()
    assert p.count(req(from_store=False), 0).hit is False
    again = p.count(req(), 5)
    assert again.pull and again.hit


def test_pull_by_digest_without_a_tag_pull_under_way_names_the_digest():
    p = Pulls()
    c = p.count(req(reference=MAN, digest=MAN), 0)
    assert c.pull and c.reference == f"docker.io/library/postgres@{MAN}" and c.digest == MAN


def test_layers_after_a_quiet_spell_or_of_another_client_belong_to_no_image():
    p = Pulls(idle=10)
    p.count(req(), 0)
    other = p.count(req(reference=LAYER, manifest=False, client="10.0.0.8"), 1)
    late = p.count(req(reference=LAYER, manifest=False), 50)
    for c in (other, late):
        assert c and c.reference == "" and not c.pull and c.bytes == 100


def test_failed_answers_and_head_of_blobs_count_nothing():
    p = Pulls()
    assert p.count(req(status=404), 0) is None
    assert p.count(req(status=429), 0) is None
    assert p.count(req(method="HEAD", reference=LAYER, manifest=False), 0) is None


def test_open_pulls_are_bounded():
    p = Pulls(limit=2)
    for i in range(5):
        p.count(req(client=f"c{i}"), i)
    assert len(p._open) == 2
