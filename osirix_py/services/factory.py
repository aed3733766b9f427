"""Building the archive core from settings (shared by the CLI, the server and the GUI)."""

from __future__ import annotations

from ..config import Settings
from ..db.engine import open_database
from ..storage import FileStore
from .archive import Archive
from .feed import ChangeFeed
from .nodes import NodeRepository


def open_archive(settings: Settings, *, feed: ChangeFeed | None = None) -> Archive:
    """Open the database and the file store of *settings* and return the archive.

    Nodes from the configuration file are merged into the nodes table.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = open_database(settings.effective_database_url)
    store = FileStore(settings.store_dir)
    archive = Archive(db, store, duplicate_policy=settings.duplicate_policy,
                      feed=feed or ChangeFeed(stable_after=settings.stable_study_seconds))
    if settings.nodes:
        NodeRepository(db).sync_from_config(settings.nodes)
    return archive
