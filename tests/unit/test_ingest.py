import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from hubcache.ingest import Tee
from hubcache.store import Store


@pytest.fixture
def env(tmp_path):
    s = Store(tmp_path / "s")
    ex = ThreadPoolExecutor(1)
    yield s, ex
    ex.shutdown()
    s.close()


def stream(tee, data, piece=65536):
    out = [tee(data[i : i + piece]) for i in range(0, len(data), piece)]
    out.append(tee(b""))
    return b"".join(out)


def test_good_body_reaches_client_whole_and_is_stored(env):
    s, ex = env
    data = os.urandom(5 << 20)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    tee = Tee(s.begin_blob(d, len(data), "r"), ex)
    assert stream(tee, data) == data
    assert tee.verified and tee.stored
    assert b"".join(s.read_blob(s.blob_info(d))) == data


def test_tampered_body_withholds_the_end_and_stores_nothing(env):
    s, ex = env
    data = os.urandom(1 << 20)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    tee = Tee(s.begin_blob(d, len(data), "r"), ex)
    sent = stream(tee, tampered)
    assert len(sent) < len(data)  # the client can never see a complete body
    assert not tee.verified and "expected" in tee.failure
    assert s.blob_info(d) is None


def test_aborted_transfer_leaves_nothing(env):
    s, ex = env
    data = os.urandom(20 << 20)
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    tee = Tee(s.begin_blob(d, len(data), "r"), ex)
    tee(data[: 12 << 20])
    tee.abort()
    ex.submit(lambda: None).result()
    assert s.blob_info(d) is None
    assert s._read(lambda txn: txn.stat(s._chunks)["entries"]) == 0
