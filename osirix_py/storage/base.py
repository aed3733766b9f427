"""The storage protocol shared by the filesystem and memory stores."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Protocol

import xxhash


class StorageError(OSError):
    """A store operation failed; the message names the file and the reason."""


class StorageFullError(StorageError):
    """No space left (ENOSPC / EDQUOT): C-STORE answers 0xA700."""


def key_for_uid(sop_instance_uid: str) -> str:
    """Sharded relative path for an instance: ``ab/cd/abcdef....dcm``.

    Derived from the SOP Instance UID (SHA-1, 256 x 256 folders), so that a
    file found without a database row can be re-indexed, a re-store replaces
    the same file, and no DICOM value ever becomes part of a path.
    """
    h = hashlib.sha1(sop_instance_uid.encode("ascii", "replace")).hexdigest()
    return f"{h[:2]}/{h[2:4]}/{h}.dcm"


#: An incremental :func:`checksum` (``update(piece)``, ``hexdigest()``).
checksum_hasher = xxhash.xxh3_128


def checksum(data) -> str:
    """The file's integrity checksum: its XXH3-128, 32 hex digits (of *data*,
    or of the list or tuple of pieces *data* joined).

    It tells a damaged or replaced file from the one indexed (and keys the
    web server's render caches); it is no security measure, so it needs no
    cryptographic strength, only a negligible chance of two files colliding
    (2**-128).  Measured here, one 512 KB CT image: SHA-256 (with the CPU's
    SHA extensions, the fastest hash hashlib has) 0.26 ms, BLAKE3 0.05 ms,
    XXH3-128 0.004 ms -- on two busy cores, the SHA-256s of a 100-instance
    retrieve cost ~30 ms of CPU and ~20 ms of its time.  (Orthanc keeps MD5,
    0.6 ms.)  Rows indexed by earlier builds hold a SHA-256, 64 hex digits:
    the length says which.
    """
    if isinstance(data, (list, tuple)):
        h = checksum_hasher()
        for piece in data:
            h.update(piece)
        return h.hexdigest()
    return xxhash.xxh3_128_hexdigest(data)


class Store(Protocol):
    """Bytes by relative key.  ``put`` is atomic and durable when it returns."""

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None: ...

    def keys(self) -> Iterator[str]: ...

    def path(self, key: str) -> Path | None: ...

    def sync(self) -> None: ...

    def free_bytes(self) -> int | None: ...
