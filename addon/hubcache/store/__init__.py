"""The LMDB store: manifests and blobs by digest, tags and their history, LRU eviction."""

from hubcache.store.blobs import CHUNK_SIZE
from hubcache.store.errors import DigestMismatch, StoreError, StoreInUse
from hubcache.store.facade import Store, probe
from hubcache.store.writer import BATCH_BYTES, WRITE_BUDGET, BlobWriter

__all__ = ["BATCH_BYTES", "CHUNK_SIZE", "WRITE_BUDGET", "BlobWriter", "DigestMismatch", "Store", "StoreError", "StoreInUse", "probe"]
