"""The one way the GUI tells the user something: a message box, or a log line in server mode.

Every message that would be a dialog goes through :func:`notify` (and every
yes/no question through :func:`confirm`).  In server mode no window is shown:
the message becomes a log line and a question gets its server-mode answer.
The mode is a property of the running ``QApplication`` (not a module global),
so that one process -- or one test -- can switch it back and forth.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QCoreApplication
from PySide6.QtWidgets import QApplication, QMessageBox, QWidget

log = logging.getLogger("osirix_py.gui")

_PROPERTY = "osirixServerMode"

INFO, WARNING, ERROR = "info", "warning", "error"
_LOG_LEVEL = {INFO: logging.INFO, WARNING: logging.WARNING, ERROR: logging.ERROR}
_ICON = {INFO: QMessageBox.Icon.Information, WARNING: QMessageBox.Icon.Warning,
         ERROR: QMessageBox.Icon.Critical}


def is_server_mode() -> bool:
    app = QCoreApplication.instance()
    return bool(app is not None and app.property(_PROPERTY))


def set_server_mode(on: bool) -> None:
    """Switch the mode of the running application (the main window hides/shows itself)."""
    app = QCoreApplication.instance()
    if app is None:
        raise RuntimeError("no QApplication")
    app.setProperty(_PROPERTY, bool(on))


def _parent(parent: QWidget | None) -> QWidget | None:
    if parent is not None:
        return parent
    app = QApplication.instance()
    return app.activeWindow() if isinstance(app, QApplication) else None


def notify(level: str, title: str, text: str, *, details: str = "",
           parent: QWidget | None = None) -> None:
    """Tell the user: a modal message box in GUI mode, a log line in server mode.

    ``level`` is ``"info"``, ``"warning"`` or ``"error"``; ``details`` (long
    lists of files, tracebacks) go into the box's "Show Details..." part and
    into the log line.
    """
    lv = level if level in _LOG_LEVEL else ERROR
    if is_server_mode() or QApplication.instance() is None:
        line = f"{title}: {text}"
        if details:
            line += "\n" + details
        log.log(_LOG_LEVEL[lv], "%s", line)
        return
    log.log(logging.DEBUG if lv == INFO else _LOG_LEVEL[lv], "%s: %s", title, text)
    box = QMessageBox(_ICON[lv], title, text, QMessageBox.StandardButton.Ok, _parent(parent))
    box.setObjectName("notifyBox")
    if details:
        box.setDetailedText(details)
    box.exec()


def confirm(title: str, text: str, *, server_mode_answer: bool = False,
            parent: QWidget | None = None, destructive: bool = True) -> bool:
    """Ask a yes/no question; in server mode answer ``server_mode_answer`` and log it."""
    if is_server_mode() or QApplication.instance() is None:
        log.info("%s: %s -> %s (server mode)", title, text, "yes" if server_mode_answer else "no")
        return server_mode_answer
    box = QMessageBox(QMessageBox.Icon.Question, title, text,
                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
                      _parent(parent))
    box.setObjectName("confirmBox")
    box.setDefaultButton(QMessageBox.StandardButton.Cancel if destructive
                         else QMessageBox.StandardButton.Yes)
    return box.exec() == QMessageBox.StandardButton.Yes
