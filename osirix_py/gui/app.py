"""The desktop application: ``run_gui(settings, server_mode=False) -> int``.

It builds the embedded :class:`~osirix_py.server.runtime.Runtime` (archive,
DICOM listener, web server), starts it in the background (the startup check
may take a while on a large archive), opens the database browser and runs
the Qt event loop.  When the listener's port is taken the user gets a plain
message and the browser stays usable.  Quitting stops the runtime cleanly.

Server mode (``--server-mode`` or File > Server Mode) hides every window and
turns every dialog into a log line (:mod:`osirix_py.gui.notify`); the
runtime keeps serving.  SIGINT/SIGTERM quit the application in both modes.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import replace

from PySide6.QtCore import QObject, QSocketNotifier, Qt, Signal
from PySide6.QtGui import QAction, QColor, QIcon, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QApplication, QMenu, QSystemTrayIcon

from ..config import Settings
from .browser import BrowserWindow
from .context import AppContext
from .notify import ERROR, WARNING, is_server_mode, notify, set_server_mode
from .preferences import listener_problem_text

log = logging.getLogger(__name__)


class Tray(QObject):
    """A tray icon (where the desktop has a tray) to leave server mode or quit."""

    def __init__(self, window: BrowserWindow, app: QApplication):
        super().__init__(window)
        self.icon = QSystemTrayIcon(app.windowIcon(), window)
        self.icon.setToolTip("osirix-py")
        menu = QMenu()
        self.show_action = QAction("Show Database", menu)
        self.show_action.triggered.connect(lambda: window.set_server_mode(False))
        self.server_action = QAction("Server Mode", menu, checkable=True)
        self.server_action.toggled.connect(window.set_server_mode)
        quit_action = QAction("Quit osirix-py", menu)
        quit_action.triggered.connect(app.quit)
        for a in (self.show_action, self.server_action, quit_action):
            menu.addAction(a)
        self._menu = menu
        self.icon.setContextMenu(menu)
        self.icon.show()

    def update_mode(self, on: bool) -> None:
        self.server_action.blockSignals(True)
        self.server_action.setChecked(on)
        self.server_action.blockSignals(False)


class GuiApplication(QObject):
    """The runtime + context + browser of one session (``run_gui`` drives it; tests too)."""

    #: Emitted on the GUI thread once the runtime has started (False: some part did not).
    runtimeStarted = Signal(bool)

    def __init__(self, settings: Settings, *, server_mode: bool = False, runtime=None,
                 start_runtime: bool = True):
        super().__init__()
        self.settings = settings
        self.server_mode = server_mode
        self._start_runtime = start_runtime
        self.runtime = runtime
        self.ctx: AppContext | None = None
        self.window: BrowserWindow | None = None
        self._starter: threading.Thread | None = None
        self.start_problems: list[tuple[str, str]] = []

    def start(self) -> bool:
        """Open the archive, show the browser (unless in server mode), start the runtime."""
        set_server_mode(self.server_mode)
        if self.runtime is None:
            from ..db.engine import DatabaseError
            from ..server.runtime import Runtime

            try:
                self.runtime = Runtime(self.settings)
            except (DatabaseError, OSError) as exc:
                notify(ERROR, "Cannot open the database",
                       f"osirix-py cannot open its database in {self.settings.data_dir}.\n\n{exc}")
                return False
        self.ctx = AppContext(self.settings, self.runtime.archive, runtime=self.runtime)
        self.window = BrowserWindow(self.ctx)
        app = QApplication.instance()
        self.window.quitRequested.connect(app.quit)
        if QSystemTrayIcon.isSystemTrayAvailable():
            self.window.tray = Tray(self.window, app)
        self.window.set_server_mode(self.server_mode)
        if not self.server_mode:
            self.window.show()
        if self._start_runtime:
            self._starter = threading.Thread(target=self._start_in_background, name="runtime-start",
                                             daemon=True)
            self._starter.start()
        return True

    def _start_in_background(self) -> None:
        from ..net.scp import ListenerError
        from ..server.runtime import RuntimeStartError

        rt = self.runtime
        problems: list[tuple[str, str]] = []
        check = True
        for _ in range(3):
            try:
                rt.start(check=check)
                break
            except RuntimeStartError as exc:
                check = False  # done once already
                # Start without the part that failed; the browser and the rest keep working.
                if isinstance(exc.__cause__, ListenerError) and rt.settings.listener.enabled:
                    problems.append(("listener", str(exc)))
                    rt.settings = replace(rt.settings, listener=replace(rt.settings.listener, enabled=False))
                elif rt.settings.http.enabled:
                    problems.append(("http", str(exc)))
                    rt.settings = replace(rt.settings, http=replace(rt.settings.http, enabled=False))
                else:
                    problems.append(("runtime", str(exc)))
                    break
                log.warning("runtime start: %s; going on without it", exc)
            except Exception as exc:  # noqa: BLE001 - the browser still works on the archive
                problems.append(("runtime", str(exc)))
                log.exception("runtime did not start")
                break
        if self.ctx is not None:
            self.ctx.dispatcher.post(lambda: self._runtime_started(problems))

    def _runtime_started(self, problems: list[tuple[str, str]]) -> None:
        self.start_problems = problems
        if self.window is not None:
            self.window._update_listener_status()
        for what, text in problems:
            if what == "listener":
                notify(WARNING, "Receiving images is off",
                       listener_problem_text(text, self.settings.listener.port), parent=self.window)
            elif what == "http":
                notify(WARNING, "Web access is off",
                       f"The web server could not start, so other computers cannot view images "
                       f"through a web browser right now. Everything else works.\n\nReason: {text}",
                       parent=self.window)
            else:
                notify(ERROR, "The DICOM node did not start",
                       f"osirix-py cannot receive or serve images right now; you can still browse, "
                       f"import and view images.\n\nReason: {text}", parent=self.window)
        if self.runtime is not None and self.runtime.listener.is_running():
            log.info("DICOM listener %s on port %s; web on port %s", self.runtime.ae_title,
                     self.runtime.listener_port, self.runtime.http_port)
        self.runtimeStarted.emit(not problems)

    def wait_started(self, timeout: float = 30.0) -> bool:
        if self._starter is None:
            return True
        self._starter.join(timeout)
        return not self._starter.is_alive()

    def shutdown(self) -> None:
        """Close the windows, stop background work, stop the runtime."""
        if self.window is not None:
            for v in list(self.ctx.viewers):
                v.close()
            if self.window.qr_window is not None:
                self.window.qr_window.close()  # stops a search in progress
            self.window.hide()
            self.window.deleteLater()
            self.window = None
        if self.ctx is not None:
            self.ctx.close()
        self.wait_started(timeout=60.0)
        if self.runtime is not None:
            self.runtime.stop(timeout=5.0)
        log.info("osirix-py stopped")


def _install_signal_handlers(app: QApplication) -> list:
    """SIGINT/SIGTERM quit the event loop (a wake-up socket lets Python see them)."""
    if threading.current_thread() is not threading.main_thread():
        return []
    try:
        rsock, wsock = socket.socketpair()
    except OSError:
        return []
    rsock.setblocking(False)
    wsock.setblocking(False)
    previous_fd = signal.set_wakeup_fd(wsock.fileno())
    notifier = QSocketNotifier(rsock.fileno(), QSocketNotifier.Type.Read, app)

    def drain():
        try:
            rsock.recv(64)
        except OSError:
            pass

    notifier.activated.connect(drain)
    previous = {}

    def handler(signum, _frame):
        log.info("%s received: quitting", signal.Signals(signum).name)
        app.quit()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    return [rsock, wsock, notifier, previous, previous_fd]


def _restore_signal_handlers(state: list) -> None:
    if not state:
        return
    rsock, wsock, notifier, previous, previous_fd = state
    for sig, h in previous.items():
        signal.signal(sig, h)
    signal.set_wakeup_fd(previous_fd)
    notifier.setEnabled(False)
    rsock.close()
    wsock.close()


def app_icon() -> QIcon:
    """The application's icon, drawn (no image files needed)."""
    pm = QPixmap(64, 64)
    pm.fill(Qt.GlobalColor.transparent)
    p = QPainter(pm)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    p.setBrush(QColor(24, 60, 110))
    p.setPen(Qt.PenStyle.NoPen)
    p.drawRoundedRect(2, 2, 60, 60, 12, 12)
    p.setBrush(Qt.BrushStyle.NoBrush)
    p.setPen(QPen(QColor(235, 240, 250), 6))
    p.drawEllipse(14, 14, 36, 36)
    p.setPen(QPen(QColor(255, 190, 60), 5))
    p.drawLine(32, 20, 32, 44)
    p.end()
    return QIcon(pm)


def _no_display() -> bool:
    return (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
            and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"))


def run_gui(settings: Settings, server_mode: bool = False) -> int:
    """Run the desktop application until it quits; returns the exit status."""
    from ..server.logs import setup_server_logging

    if _no_display() and QApplication.instance() is None:
        if not server_mode:
            print("osirix-py: no display to show the desktop application on (DISPLAY is not set); "
                  "use 'osirix-py --server-mode' or 'osirix-py server' on a machine without a screen",
                  file=sys.stderr)
            return 2
        os.environ["QT_QPA_PLATFORM"] = "offscreen"  # server mode needs no screen
    log_path = setup_server_logging(settings.log_dir, 0)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("osirix-py")
    app.setApplicationDisplayName("osirix-py")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    log.info("osirix-py %s (data dir %s, log %s)", "server mode" if server_mode else "desktop",
             settings.data_dir, log_path)
    gui = GuiApplication(settings, server_mode=server_mode)
    if not gui.start():
        return 1
    from ..server.runtime import settle_heap

    settle_heap()  # the window, Qt's and our modules: alive until the end
    state = _install_signal_handlers(app)
    try:
        code = app.exec()
    finally:
        _restore_signal_handlers(state)
        gui.shutdown()
        set_server_mode(False)
    return int(code or 0)


__all__ = ["GuiApplication", "run_gui", "is_server_mode"]
