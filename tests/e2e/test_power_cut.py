"""A power cut while cold pulls are being stored: hubcache's store lives on an ext4 file system of
the test's own (a loop device, harness.crashdisk); at a cut point hubcache (every process of it) is
SIGKILLed and the disk is copied without syncing the file system, so the copy holds only what
reached the disk. What a user sees afterwards on the copy: hubcache starts, the store lists only
blobs and manifests that hash to their digests, `hubcache verify` finds nothing wrong, offline it
serves only exact bytes, and online every image pulls byte for byte as from the registry.

Cut points: early (the first blob bytes committed), middle (half the bytes committed), just after
a large blob was published. Each runs with one hubcache process and with `--workers 2`."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import lmdb
import pytest

from harness import crashdisk
from harness.clients import client_env, dir_files, make_cert_dir, proxied_request, pull_ok, skopeo_copy
from harness.proxy import Proxy
from hubcache.store import Store
from hubcache.store.txn import GROUP_BYTES

pytestmark = pytest.mark.e2e
MiB = 1 << 20
HUBCACHE = Path(sys.executable).parent / "hubcache"
REG, DIRECT = "registry-1.docker.io", "blobs.hubcache.invalid"
IMAGES = [f"library/powercut{i}" for i in range(2)]
LAYERS = [16 * MiB, 8 * MiB, 100_000]  # per image; the large ones span several write batches
CDN_RATE = 16e6  # bytes/s per connection: a 16 MiB layer takes about a second to arrive
_seeds = itertools.count(77000)


@functools.cache
def has_workers() -> bool:
    out = subprocess.run([HUBCACHE, "run", "--help"], capture_output=True, text=True, timeout=60)
    return "--workers" in out.stdout


MODES = {
    "one-process": [],
    "workers-2": pytest.param(["--workers", "2"], marks=pytest.mark.skipif(
        "not has_workers()", reason="needs --workers")),
}


@pytest.fixture(scope="module")
def images(upstream, tmp_path_factory):
    """The images (pushed once for the module) and their files as a direct pull gives them."""
    if why := crashdisk.missing():
        pytest.skip(f"power-cut test: {why}")
    tmp = tmp_path_factory.mktemp("powercut")
    certs = make_cert_dir(tmp / "certs", upstream.ca_cert)
    out = {}
    for name in IMAGES:
        img = upstream.push_image(name, "1", [(size, next(_seeds)) for size in LAYERS])
        out[f"docker.io/{name}:1"] = (img, dir_files(pull_ok(f"docker.io/{name}:1", tmp / name, None, certs)))
    return out


# -- processes ---------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descended from it (the workers of `hubcache run --workers`)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True


def power_cut(hub: Proxy) -> None:
    """Stop every process of hubcache at once (SIGSTOP: no further write), then SIGKILL them,
    and wait until each is gone: whatever they had handed to the kernel is now either on the
    disk or only in the page cache, which the crash image leaves out."""
    assert hub.proc is not None
    pids = process_tree(hub.proc.pid)
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
    hub.proc.wait()
    hub.proc = None
    deadline = time.monotonic() + 10
    while not all(gone(p) for p in pids):
        assert time.monotonic() < deadline, f"hubcache processes {pids} did not die"
        time.sleep(0.01)


def started(stack: contextlib.ExitStack, hub: Proxy) -> Proxy:
    """Start `hub`; whatever happens, every process of it is killed before the disks go."""
    def kill() -> None:
        if hub.proc is not None:
            power_cut(hub)
    stack.callback(kill)
    return hub.start()


# -- cut points --------------------------------------------------------------------------------


def store_bytes(store: Path) -> int:
    """Bytes of data.mdb that hold something (allocated, delayed allocation included)."""
    try:
        return (store / "data.mdb").stat().st_blocks * 512
    except FileNotFoundError:
        return 0


def wait_for_cut(cut: str, hub: Proxy, store: Path, base: int, images: dict) -> tuple[str, str]:
    """Wait until the cut point is reached: (what was reached, for the report; the digest of the
    blob published at a "published" cut point, else "")."""
    total = sum(LAYERS) * len(images)
    several_batches = [d for img, _ in images.values() for d in img.layer_digests[:2]]
    published, published_at = "", 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        grown = store_bytes(store) - base
        if cut == "early" and grown >= MiB:
            return f"{grown} bytes committed", ""
        if cut == "middle" and grown >= total // 2:
            return f"{grown} of {total} bytes committed", ""
        if cut.startswith("published") and not published:
            log = hub.log()
            if done := [d for d in several_batches if f"stored {d}" in log]:
                published, published_at = done[0], grown
                if cut == "published":
                    return f"{published} published, {grown} bytes committed", published
        # more than one group commit's worth after it (a quarter more for LMDB's page overhead): a
        # second commit has begun, so the first one's sync, which took the publishing commit's meta
        # page to the disk (LMDB writes it unsynced), is done
        if cut == "published-synced" and published and grown > published_at + GROUP_BYTES * 5 // 4:
            return f"{published} published, then {grown - published_at} bytes more committed", published
        time.sleep(0.005)
    raise AssertionError(f"cut point {cut} not reached in 30 s: {store_bytes(store) - base} bytes; {hub.log()[-2000:]}")


def cold_pulls(stack: contextlib.ExitStack, hub: Proxy, certs: Path, tmp: Path, refs: list[str]) -> list[subprocess.Popen]:
    policy = tmp / "policy.json"
    policy.write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
    clients = []
    for i, ref in enumerate(refs):
        c = subprocess.Popen(["skopeo", "--policy", str(policy), "copy", "--quiet", "--src-cert-dir", str(certs),
                              "--src-no-creds", f"docker://{ref}", f"dir:{tmp / f'cold{i}'}"],
                             env=client_env(hub.url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(lambda c=c: (c.kill(), c.wait()))
        clients.append(c)
    return clients


# -- what the crash image holds ----------------------------------------------------------------


def listed_content(store: Path) -> tuple[int, list[str], int]:
    """Hash every manifest and blob the store lists, as the crash left it (read-only: nothing
    recovered or verified yet); (manifests, blobs, interrupted blob writes). Any listed object
    that does not match fails."""
    env = lmdb.open(str(store), readonly=True, max_dbs=16)
    try:
        with env.begin() as txn:
            manifests = list(txn.cursor(db=env.open_db(b"manifests", txn=txn, create=False)))
            blobs = [key.decode() for key in txn.cursor(db=env.open_db(b"blobs", txn=txn, create=False)).iternext(values=False)]
            pending = txn.stat(env.open_db(b"pending", txn=txn, create=False))["entries"]
    finally:
        env.close()
    for key, raw in manifests:
        assert "sha256:" + hashlib.sha256(raw.partition(b"\n")[2]).hexdigest() == key.decode(), f"manifest {key} listed, bytes differ"
    s = Store(store, readonly=True)
    try:
        for digest in blobs:
            info = s.blob_info(digest)
            assert info is not None
            h, n = hashlib.sha256(), 0
            for piece in s.read_blob(info):
                h.update(piece)
                n += len(piece)
            assert (n, "sha256:" + h.hexdigest()) == (info.size, digest), f"blob {digest} listed, bytes differ"
    finally:
        s.close()
    return len(manifests), blobs, pending


def fetch_blob(hub: Proxy, repository: str, digest: str) -> tuple[int, bytes]:
    """GET a blob through hubcache as a client does, following its redirect to the blob listener."""
    status, headers, body = proxied_request(hub.port, hub.ca_cert, "GET", REG, f"/v2/{repository}/blobs/{digest}")
    if status == 307 and urlsplit(headers["location"]).hostname == DIRECT:
        target = urlsplit(headers["location"])
        status, _, body = proxied_request(hub.port, hub.ca_cert, "GET", DIRECT, f"{target.path}?{target.query}")
    return status, body


def offline_serves_only_exact_bytes(hub: Proxy, images: dict, certs: Path, tmp: Path) -> tuple[int, list[str]]:
    """Every image and every blob asked of an --offline hubcache: either refused, or exactly the
    registry's bytes. (images pulled, blobs served)."""
    pulled, served = 0, []
    for i, (ref, (img, direct)) in enumerate(images.items()):
        res = skopeo_copy(ref, tmp / f"offline{i}", proxy=hub.url, cert_dir=certs)
        if res.returncode == 0:
            assert dir_files(tmp / f"offline{i}") == direct, f"{ref} pulled offline, bytes differ"
            pulled += 1
        for digest in [img.config_digest, *img.layer_digests]:
            status, body = fetch_blob(hub, img.name, digest)
            if status == 200:
                assert body == direct[digest.split(":")[1]], f"{digest} served offline, bytes differ"
                served.append(digest)
            else:
                assert status >= 400, (digest, status)
    return pulled, served


def verify(store: Path) -> str:
    out = subprocess.run([HUBCACHE, "verify", "--store", store], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


# -- the test ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES.values(), ids=MODES.keys())
@pytest.mark.parametrize("cut", ["early", "middle", "published", "published-synced"])
def test_power_cut_during_cold_pulls_leaves_a_store_that_serves_only_exact_bytes(
        upstream, confdir, certs, tmp_path, images, cut, mode):
    refs = list(images)
    with contextlib.ExitStack() as stack:  # undone in reverse: processes first, then mounts and loop devices
        disk = stack.enter_context(crashdisk.CrashDisk(tmp_path / "disk"))
        live = disk.mnt / "store"
        hub = started(stack, Proxy(tmp_path / "live", upstream.ca_cert, confdir=confdir, store=live, args=mode))
        base = store_bytes(live)
        with upstream.cdn_rate(CDN_RATE):
            clients = cold_pulls(stack, hub, certs, tmp_path, refs)
            reached, published = wait_for_cut(cut, hub, live, base, images)
            unsynced = crashdisk.unsynced_file(disk.mnt / "unsynced")  # written just before the cut, never synced
            power_cut(hub)
            image = disk.crash_image(tmp_path / "cut.img")
        for c in clients:
            c.kill()
            c.wait()

        after = tmp_path / "after"
        stack.enter_context(crashdisk.mounted(image, after))  # the journal is replayed, as at boot
        pages, image_pages, differ = crashdisk.differing_pages(live / "data.mdb", after / "store" / "data.mdb")
        kept = (after / "unsynced").read_bytes() if (after / "unsynced").exists() else b""
        print(f"\npower cut {cut}: {reached}; data.mdb {pages} pages live, {image_pages} in the crash image, "
              f"{len(differ)} differ {differ[:8]}; the unsynced file kept {len(kept)} of {len(unsynced)} bytes")
        lost = kept != unsynced
        assert lost, "the crash image holds a file never synced: it is not what a power cut leaves"
        store = after / "store"

        manifests, blobs, pending = listed_content(store)  # before anything recovered: nothing listed is wrong
        offline = started(stack, Proxy(tmp_path / "offline", upstream.ca_cert, confdir=confdir, store=store,
                                       args=["--offline", *mode]))
        pulled, served = offline_serves_only_exact_bytes(offline, images, certs, tmp_path)
        offline.stop()
        assert "Traceback" not in offline.log(), offline.log()
        # the cut landed while blobs were being stored, and hubcache dropped the interrupted writes
        assert pending + len(blobs) >= 1, "the crash image holds no blob write: the cut point tests nothing"
        assert pending == 0 or f"removed {pending} interrupted blob writes" in offline.log(), offline.log()
        if cut == "published-synced":  # a blob stored before later commits synced survives, served as it is
            assert published in blobs and published in served, (published, blobs, served)
        report = verify(store)
        assert " 0 did not match" in report, report
        print(f"listed {manifests} manifests and {len(blobs)} blobs, all intact, {pending} interrupted writes; "
              f"published one listed: {published in blobs}; offline: {pulled} images pulled, {len(served)} blobs "
              f"served; {report.strip()}")

        hub = started(stack, Proxy(tmp_path / "online", upstream.ca_cert, confdir=confdir, store=store, args=mode))
        for i, ref in enumerate(refs):
            assert dir_files(pull_ok(ref, tmp_path / f"online{i}", hub, certs)) == images[ref][1]
        hub.stop()
        assert " 0 did not match" in verify(store)
