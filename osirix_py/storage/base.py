"""The storage protocol shared by the filesystem and memory stores."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Protocol


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


def checksum(data: bytes) -> str:
    """SHA-256 of the file bytes.

    Chosen over MD5 (what Orthanc keeps) for speed as much as strength: with
    the CPU's SHA extensions it runs at ~1.5 GB/s, twice MD5's rate.
    """
    return hashlib.sha256(data).hexdigest()


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
