"""Where file bytes live: an atomic, sharded filesystem store and a memory store."""

from .base import Store, StorageError, StorageFullError, key_for_uid
from .filestore import FileStore
from .memory import MemoryStore

__all__ = ["Store", "StorageError", "StorageFullError", "FileStore", "MemoryStore", "key_for_uid"]
