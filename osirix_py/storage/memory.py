"""In-memory store for tests and throw-away runtimes."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

from .base import StorageFullError


class MemoryStore:
    """Same protocol as :class:`FileStore`, bytes kept in a dict.

    ``capacity`` (bytes) simulates a disk that fills up.
    """

    def __init__(self, capacity: int | None = None):
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.capacity = capacity

    def __repr__(self) -> str:
        return f"MemoryStore({len(self._data)} files)"

    def _used(self) -> int:
        return sum(len(v) for v in self._data.values())

    def put(self, key: str, data: bytes, *, durable: bool = True) -> None:
        with self._lock:
            if self.capacity is not None:
                used = self._used() - len(self._data.get(key, b""))
                if used + len(data) > self.capacity:
                    raise StorageFullError(28, f"disk full while writing {key}")
            self._data[key] = bytes(data)

    def get(self, key: str) -> bytes:
        with self._lock:
            try:
                return self._data[key]
            except KeyError:
                raise FileNotFoundError(key) from None

    def exists(self, key: str) -> bool:
        return key in self._data

    def size(self, key: str) -> int:
        return len(self.get(key))

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def keys(self) -> Iterator[str]:
        with self._lock:
            return iter(sorted(self._data))

    def path(self, key: str) -> Path | None:
        return None

    def clean_temporary(self) -> list:
        return []

    def sync(self) -> None:
        pass

    def free_bytes(self) -> int | None:
        if self.capacity is None:
            return None
        return self.capacity - self._used()
