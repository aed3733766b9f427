"""Logging for server mode: a rotating file in the data dir, and stderr.

``setup_server_logging(log_dir, verbose)`` makes the root logger write to
``<log_dir>/osirix-py.log`` (rotated at 10 MB, 5 files kept) and to stderr
(which systemd's journal captures).  verbose 0: INFO; 1: INFO plus
pynetdicom's warnings; 2 or more: DEBUG, pynetdicom included.  Calling it
again (a restart in the same process, tests) replaces the handlers it added.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

LOG_FILE_NAME = "osirix-py.log"
MAX_BYTES = 10 * 1024 * 1024
BACKUPS = 5
FORMAT = "%(asctime)s %(levelname)s [%(threadName)s] %(name)s: %(message)s"

_MARK = "_osirix_server_handler"


def setup_server_logging(log_dir: Path, verbose: int = 0) -> Path:
    """Install the file and stderr handlers; returns the log file path."""
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / LOG_FILE_NAME
    root = logging.getLogger()
    for h in list(root.handlers):
        # Ours from an earlier call, and the CLI's basicConfig stderr handler.
        if getattr(h, _MARK, False) or (isinstance(h, logging.StreamHandler)
                                         and getattr(h, "stream", None) in (sys.stderr, sys.stdout)):
            root.removeHandler(h)
            if getattr(h, _MARK, False):
                h.close()
    level = logging.DEBUG if verbose >= 2 else logging.INFO
    fmt = logging.Formatter(FORMAT)
    file_handler = logging.handlers.RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                                        encoding="utf-8")
    stderr_handler = logging.StreamHandler(sys.stderr)
    for h in (file_handler, stderr_handler):
        h.setFormatter(fmt)
        h.setLevel(level)
        setattr(h, _MARK, True)
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("uvicorn.access").setLevel(logging.INFO if verbose >= 1 else logging.WARNING)
    return path
