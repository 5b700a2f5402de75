"""The store's errors, shared by all its modules."""


class StoreError(Exception):
    """The store could not do what was asked (a missing chunk, a full disk, a closed store)."""


class DigestMismatch(StoreError):
    """Bytes that do not hash to (or are not the size of) the digest they were stored under."""


class StoreInUse(StoreError):
    """Another process holds the store's lock."""
