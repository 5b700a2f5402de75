"""The LMDB store: manifests and blobs by digest, tags and their history, LRU eviction."""

from hubcache.store.facade import (
    BATCH_BYTES,
    CHUNK_SIZE,
    WRITE_BUDGET,
    BlobWriter,
    DigestMismatch,
    Store,
    StoreError,
    StoreInUse,
)

__all__ = ["BATCH_BYTES", "CHUNK_SIZE", "WRITE_BUDGET", "BlobWriter", "DigestMismatch", "Store", "StoreError", "StoreInUse"]
