"""The database browser: the main window of the desktop application."""

from __future__ import annotations

import logging
from pathlib import Path

from PySide6.QtCore import QSize, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QDockWidget,
    QFileDialog,
    QLabel,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMenu,
    QProgressBar,
    QSplitter,
    QTreeView,
    QVBoxLayout,
    QWidget,
)

from .. import __version__
from ..dicom.tags import Level
from .activity import ActivityPanel
from .browser_model import TREE_LEVELS, DatabaseModel, Node, format_person_name
from .importing import start_import
from .notify import ERROR, INFO, confirm, is_server_mode, notify, set_server_mode
from .search import SearchBar
from .sendto import SendToMenu

log = logging.getLogger(__name__)


class SeriesThumbnails(QListWidget):
    """The series of the selected study as thumbnails (double-click opens the viewer)."""

    openSeries = Signal(str)

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setObjectName("seriesThumbnails")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setIconSize(QSize(128, 128))
        self.setGridSize(QSize(196, 184))
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setMovement(QListView.Movement.Static)
        self.setWordWrap(True)
        self.setUniformItemSizes(True)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self._items: dict[str, QListWidgetItem] = {}
        self._placeholder = self._make_placeholder()
        ctx.thumbnails.ready.connect(self._ready)
        self.itemDoubleClicked.connect(lambda it: self.openSeries.emit(it.data(Qt.ItemDataRole.UserRole)))
        self.itemActivated.connect(lambda it: self.openSeries.emit(it.data(Qt.ItemDataRole.UserRole)))

    @staticmethod
    def _make_placeholder() -> QIcon:
        pm = QPixmap(128, 128)
        pm.fill(Qt.GlobalColor.black)
        return QIcon(pm)

    def show_series(self, nodes: list[Node]) -> None:
        keys = [n.key for n in nodes]
        if keys == list(self._items) and all(
                self._items[n.key].data(Qt.ItemDataRole.UserRole + 1) == self._count(n) for n in nodes):
            return
        self.clear()
        self._items = {}
        fm = self.fontMetrics()
        width = self.gridSize().width() - 12
        for n in nodes:
            r = n.row
            desc = fm.elidedText(str(r.get("SeriesDescription") or "(no description)"),
                                 Qt.TextElideMode.ElideRight, width)
            text = f"{desc}\n#{r.get('SeriesNumber') or '?'} {r.get('Modality') or ''} \u2022 {self._count(n)} img"
            it = QListWidgetItem(self._placeholder, text)
            it.setData(Qt.ItemDataRole.UserRole, n.key)
            it.setData(Qt.ItemDataRole.UserRole + 1, self._count(n))
            it.setToolTip(f"Series Instance UID {n.key}")
            self.addItem(it)
            self._items[n.key] = it
            img = self.ctx.thumbnails.get(n.key, self._count(n))
            if img is not None:
                it.setIcon(QIcon(QPixmap.fromImage(img)))

    @staticmethod
    def _count(n: Node) -> int:
        return int(n.row.get("NumberOfSeriesRelatedInstances") or 0)

    def _ready(self, uid: str) -> None:
        it = self._items.get(uid)
        if it is None:
            return
        img = self.ctx.thumbnails.get(uid, it.data(Qt.ItemDataRole.UserRole + 1))
        if img is not None:
            it.setIcon(QIcon(QPixmap.fromImage(img)))


class BrowserWindow(QMainWindow):
    """Patients/studies/series, search, import, delete, thumbnails, activity."""

    #: The user closed the browser (File > Quit): the application should quit.
    quitRequested = Signal()

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setObjectName("browserWindow")
        self.setWindowTitle("osirix-py \u2014 Database")
        self.setAcceptDrops(True)
        self.model = DatabaseModel(ctx, self)
        self._first_load = True
        self.qr_window = None

        self.search = SearchBar()
        self.tree = QTreeView()
        self.tree.setObjectName("databaseTree")
        self.tree.setModel(self.model)
        self.tree.setSortingEnabled(True)
        self.tree.sortByColumn(0, Qt.SortOrder.AscendingOrder)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        self.tree.setExpandsOnDoubleClick(False)
        self.tree.header().setStretchLastSection(False)
        self.tree.header().setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.header().customContextMenuRequested.connect(self._header_menu)
        self.tree.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree.customContextMenuRequested.connect(self._tree_menu)
        self.tree.doubleClicked.connect(self._double_clicked)
        self.tree.selectionModel().selectionChanged.connect(self._selection_changed)
        self.thumbs = SeriesThumbnails(ctx)
        self.thumbs.openSeries.connect(self.open_series)

        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.setSpacing(0)
        tl.addWidget(self.search)
        tl.addWidget(self.tree)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.thumbs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        self.setCentralWidget(split)

        self.activity = ActivityPanel(ctx.jobs)
        self.activity_dock = QDockWidget("Activity", self)
        self.activity_dock.setObjectName("activityDock")
        self.activity_dock.setWidget(self.activity)
        self.addDockWidget(Qt.DockWidgetArea.BottomDockWidgetArea, self.activity_dock)
        self.resizeDocks([self.activity_dock], [170], Qt.Orientation.Vertical)
        self.activity_dock.hide()

        self._build_status_bar()
        self._build_actions()
        self.resize(1200, 800)

        self.search.queryChanged.connect(self.model.set_query)
        self.model.refreshed.connect(self._refreshed)
        self.model.failed.connect(lambda msg: self.statusBar().showMessage(f"Search failed: {msg}", 8000))
        ctx.bridge.changed.connect(self._feed_changed)
        ctx.jobs.rowsInserted.connect(lambda *_: self.activity_dock.show())
        ctx.jobs.dataChanged.connect(self._jobs_changed)
        ctx.jobs.finished.connect(self._jobs_changed)
        self._status_timer = QTimer(self, interval=2000)
        self._status_timer.timeout.connect(self._update_listener_status)
        self._status_timer.start()
        self._update_listener_status()
        self.model.refresh()

    # ------------------------------------------------------------------ UI
    def _build_status_bar(self) -> None:
        sb = self.statusBar()
        self.counts_label = QLabel()
        self.listener_label = QLabel()
        self.listener_label.setObjectName("listenerStatus")
        self.job_progress = QProgressBar()
        self.job_progress.setMaximumWidth(220)
        self.job_progress.setTextVisible(True)
        self.job_progress.hide()
        sb.addWidget(self.counts_label, 1)
        sb.addPermanentWidget(self.job_progress)
        sb.addPermanentWidget(self.listener_label)

    def _action(self, text: str, slot, shortcut=None, tip: str = "", checkable: bool = False) -> QAction:
        a = QAction(text, self)
        if shortcut is not None:
            a.setShortcut(QKeySequence(shortcut))
        if tip:
            a.setStatusTip(tip)
            a.setToolTip(tip)
        a.setCheckable(checkable)
        a.triggered.connect(slot)
        return a

    def _build_actions(self) -> None:
        mb = self.menuBar()
        self.act_import_files = self._action("Import &Files...", self.import_files_dialog,
                                             QKeySequence.StandardKey.Open, "Import DICOM files or ZIP archives")
        self.act_import_folder = self._action("Import F&older...", self.import_folder_dialog,
                                              "Ctrl+Shift+O", "Import every DICOM file under a folder")
        self.act_open = self._action("Open &Viewer", self.open_selected, "Return",
                                     "Open the selected series in the 2D viewer")
        self.act_delete = self._action("&Delete...", self.delete_selected, QKeySequence.StandardKey.Delete,
                                       "Delete the selected patients, studies or series")
        self.act_query = self._action("&Query && Retrieve...", self.show_query, "Ctrl+Shift+Q",
                                      "Search a DICOM location and retrieve its studies")
        self.act_query.setIconText("Query")
        self.send_menu = SendToMenu(self.ctx, self.selected_nodes, self)
        self.send_menu.locationsRequested.connect(self.show_preferences)
        self.act_server = self._action("&Server Mode", self._toggle_server_mode, None,
                                       "Hide every window and keep the DICOM node running", checkable=True)
        # Return and Delete act on the tree only (never while typing in the search bar).
        for a in (self.act_open, self.act_delete):
            a.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.tree.addAction(a)
        self.act_quit = self._action("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_prefs = self._action("&Preferences...", self.show_preferences,
                                      QKeySequence.StandardKey.Preferences)
        self.act_prefs.setMenuRole(QAction.MenuRole.PreferencesRole)
        self.act_refresh = self._action("&Refresh", self.model.refresh, QKeySequence.StandardKey.Refresh)
        self.act_expand = self._action("&Expand All", self.tree.expandAll, "Ctrl+E")
        self.act_collapse = self._action("&Collapse All", self.tree.collapseAll, "Ctrl+Shift+E")
        self.act_find = self._action("&Find", lambda: self.search.name.setFocus(), QKeySequence.StandardKey.Find)
        self.act_activity = self.activity_dock.toggleViewAction()
        self.act_activity.setText("&Activity")
        self.act_activity.setShortcut(QKeySequence("Ctrl+J"))
        self.act_shortcuts = self._action("&Keyboard Shortcuts...", self.show_shortcuts, "F1")
        self.act_about = self._action("&About osirix-py", self.show_about)

        m = mb.addMenu("&File")
        for a in (self.act_import_files, self.act_import_folder, None, self.act_open, self.act_delete,
                  None, self.act_query, self.send_menu.menuAction(), None, self.act_server, None,
                  self.act_quit):
            m.addSeparator() if a is None else m.addAction(a)
        m = mb.addMenu("&Edit")
        m.addAction(self.act_find)
        m.addSeparator()
        m.addAction(self.act_prefs)
        m = mb.addMenu("&View")
        for a in (self.act_refresh, self.act_expand, self.act_collapse, None, self.act_activity):
            m.addSeparator() if a is None else m.addAction(a)
        self.columns_menu = m.addMenu("&Columns")
        self._fill_columns_menu(self.columns_menu)
        m = mb.addMenu("&Help")
        m.addAction(self.act_shortcuts)
        m.addAction(self.act_about)

        tb = self.addToolBar("Main")
        tb.setObjectName("mainToolBar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
        for a in (self.act_import_files, self.act_import_folder, self.act_open, self.act_delete,
                  self.act_query, self.act_activity, self.act_prefs):
            tb.addAction(a)
        self._update_actions()

    def _fill_columns_menu(self, menu: QMenu) -> None:
        menu.clear()
        for i, col in enumerate(self.model.columns):
            if i == 0:
                continue
            a = menu.addAction(col.title)
            a.setCheckable(True)
            a.setChecked(not self.tree.isColumnHidden(i))
            a.toggled.connect(lambda on, i=i: self.tree.setColumnHidden(i, not on))

    def _header_menu(self, pos) -> None:
        menu = QMenu(self)
        self._fill_columns_menu(menu)
        menu.exec(self.tree.header().mapToGlobal(pos))

    def _tree_menu(self, pos) -> None:
        menu = QMenu(self)
        for a in (self.act_open, self.send_menu.menuAction(), self.act_delete, None, self.act_expand,
                  self.act_collapse, self.act_refresh):
            menu.addSeparator() if a is None else menu.addAction(a)
        menu.exec(self.tree.viewport().mapToGlobal(pos))

    # ----------------------------------------------------------- selection
    def selected_nodes(self) -> list[Node]:
        rows = self.tree.selectionModel().selectedRows(0)
        return [self.model.node(i) for i in rows if self.model.node(i) is not None]

    def _current_study_series(self) -> list[Node]:
        nodes = self.selected_nodes()
        if not nodes:
            return []
        n = nodes[0]
        if n.level is Level.SERIES:
            n = n.parent
        if n.level is Level.STUDY:
            return list(n.children)
        return [se for st in n.children for se in st.children]

    def _selection_changed(self, *_):
        self._update_actions()
        self.thumbs.show_series(self._current_study_series())
        nodes = self.selected_nodes()
        if len(nodes) == 1 and nodes[0].level is not Level.SERIES:
            self.tree.expand(self.model.createIndex(nodes[0].pos, 0, nodes[0]))

    def _update_actions(self) -> None:
        nodes = self.selected_nodes()
        self.act_delete.setEnabled(bool(nodes))
        self.act_open.setEnabled(any(n.level in (Level.SERIES, Level.STUDY) for n in nodes))
        self.send_menu.setEnabled(bool(nodes))

    # ------------------------------------------------------------- refresh
    def _feed_changed(self, events) -> None:
        for ev in events:
            if ev.kind == "deleted":
                # A viewer of something deleted (here, or by another program) closes.
                for v in list(self.ctx.viewers):
                    if v.shows(ev.level, ev.uid):
                        v.close()
        self.model.refresh()

    def _refreshed(self) -> None:
        if self._first_load and self.model.root.children:
            self._first_load = False
            for n in self.model.root.children:
                self.tree.expand(self.model.createIndex(n.pos, 0, n))
            self._autosize_columns()
        c = self.model.counts()
        q = " (filtered)" if self.model.query else ""
        self.counts_label.setText(f"{c[Level.PATIENT]} patient(s), {c[Level.STUDY]} study(ies), "
                                  f"{c[Level.SERIES]} series{q}")
        self.thumbs.show_series(self._current_study_series())
        self._update_actions()

    def _autosize_columns(self, sample: int = 3000) -> None:
        """Fit each column to its header and the values of (up to ``sample``) rows."""
        fm = self.tree.fontMetrics()
        hfm = self.tree.header().fontMetrics()
        widths = [hfm.horizontalAdvance(c.title) + 28 for c in self.model.columns]
        for k, n in enumerate(self.model.iter_nodes()):
            if k >= sample:
                break
            for i in range(len(widths)):
                text = self.model.data(self.model.createIndex(n.pos, i, n))
                if text:
                    indent = self.tree.indentation() * (TREE_LEVELS.index(n.level) + 1) if i == 0 else 0
                    widths[i] = max(widths[i], fm.horizontalAdvance(text) + 16 + indent)
        widths[0] = max(widths[0], 220)
        for i, wdt in enumerate(widths):
            self.tree.setColumnWidth(i, min(wdt, 360))

    def _jobs_changed(self, *_):
        active = self.ctx.jobs.active()
        if not active:
            self.job_progress.hide()
            return
        total = sum(j.total for j in active)
        done = sum(j.done for j in active)
        self.job_progress.setMaximum(max(total, 1))
        self.job_progress.setValue(min(done, max(total, 1)))
        self.job_progress.setFormat(f"{len(active)} job(s): {done}/{total}")
        self.job_progress.show()

    def _update_listener_status(self) -> None:
        rt = self.ctx.runtime
        if rt is None:
            text = "DICOM listener: not started"
        elif rt.listener.is_running():
            text = f"DICOM {rt.ae_title} on port {rt.listener_port}"
            if rt.http_port:
                text += f" \u2022 web on port {rt.http_port}"
        else:
            text = "DICOM listener: off"
        if self.listener_label.text() != text:
            self.listener_label.setText(text)

    # -------------------------------------------------------------- import
    def import_files_dialog(self) -> None:
        if is_server_mode():
            return
        files, _ = QFileDialog.getOpenFileNames(self, "Import DICOM Files", str(Path.home()),
                                                "All files (*);;DICOM (*.dcm *.DCM);;ZIP archives (*.zip)")
        if files:
            self.import_paths(files)

    def import_folder_dialog(self) -> None:
        if is_server_mode():
            return
        folder = QFileDialog.getExistingDirectory(self, "Import a Folder", str(Path.home()))
        if folder:
            self.import_paths([folder])

    def import_paths(self, paths):
        self.activity_dock.show()
        return start_import(self.ctx, paths)

    def dragEnterEvent(self, event):  # noqa: N802 - Qt API
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event):  # noqa: N802
        self.dragEnterEvent(event)

    def dropEvent(self, event):  # noqa: N802
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if paths:
            event.acceptProposedAction()
            self.import_paths(paths)

    # -------------------------------------------------------------- delete
    def delete_selected(self) -> None:
        nodes = self.selected_nodes()
        # A node whose ancestor is selected goes with it.
        chosen = set(id(n) for n in nodes)
        top = [n for n in nodes if not _has_selected_ancestor(n, chosen)]
        if not top:
            return
        images = sum(_images(n) for n in top)
        what = ", ".join(_describe(n) for n in top[:5]) + (f" and {len(top) - 5} more" if len(top) > 5 else "")
        if not confirm("Delete", f"Delete {what}?\n\n{images} image(s) will be removed from the "
                       "database (files imported in place stay where they are).", parent=self):
            return
        targets = [(n.level, n.key.split("\x00")[0] if n.level is Level.PATIENT else n.key) for n in top]
        archive = self.ctx.archive

        def work():
            errors = []
            for level, uid in targets:
                try:
                    rep = archive.delete(level, uid)
                    errors.extend(rep.errors)
                except Exception as exc:  # noqa: BLE001 - reported to the user
                    errors.append(str(exc))
            return errors

        def done(errors):
            for level, uid in targets:
                if level is Level.SERIES:
                    self.ctx.thumbnails.forget(uid)
            if errors:
                notify(ERROR, "Delete", "Some files could not be deleted.", details="\n".join(errors))
            self.model.refresh()

        self.statusBar().showMessage("Deleting...", 3000)
        self.ctx.submit(work, done, lambda exc: notify(ERROR, "Delete failed", str(exc)))

    # ---------------------------------------------------------------- open
    def _double_clicked(self, index) -> None:
        n = self.model.node(index)
        if n is None:
            return
        if n.level is Level.PATIENT:
            self.tree.setExpanded(index.siblingAtColumn(0), not self.tree.isExpanded(index.siblingAtColumn(0)))
        else:
            self._open_node(n)

    def open_selected(self) -> None:
        for n in self.selected_nodes()[:4]:
            self._open_node(n)

    def _open_node(self, n: Node) -> None:
        if n.level is Level.STUDY:
            if not n.children:
                return
            n = sorted(n.children, key=lambda c: int(c.row.get("SeriesNumber") or 0))[0]
        if n.level is Level.SERIES:
            self.open_series(n.key)

    def open_series(self, series_uid: str):
        from .viewer import ViewerWindow

        for v in self.ctx.viewers:
            if v.series_uid == series_uid:
                if not is_server_mode():
                    v.show()
                    v.raise_()
                    v.activateWindow()
                return v
        try:
            v = ViewerWindow(self.ctx, series_uid)
        except Exception as exc:  # noqa: BLE001 - deleted meanwhile, unreadable ...
            log.exception("cannot open series %s", series_uid)
            notify(ERROR, "Cannot open the series", str(exc), parent=self)
            return None
        if not is_server_mode():
            v.show()
        return v

    # ------------------------------------------------------------- dialogs
    def show_preferences(self) -> None:
        if is_server_mode():
            return
        from .preferences import PreferencesDialog

        dlg = PreferencesDialog(self.ctx, self)
        dlg.serverModeRequested.connect(self.set_server_mode)
        dlg.exec()
        self._update_listener_status()

    def show_query(self):
        """Open (or bring forward) the Query & Retrieve window."""
        from .qr import show_query_window

        first = self.qr_window is None
        self.qr_window = show_query_window(self.ctx, self, self.qr_window)
        if first and self.qr_window is not None:
            self.qr_window.locationsRequested.connect(self._locations_from_qr)
        return self.qr_window

    def _locations_from_qr(self) -> None:
        self.show_preferences()
        if self.qr_window is not None:
            self.qr_window.reload_locations()

    def show_shortcuts(self) -> None:
        if is_server_mode():
            return
        from .shortcuts import ShortcutsDialog

        ShortcutsDialog(self).exec()

    def show_about(self) -> None:
        notify(INFO, "About osirix-py",
               f"osirix-py {__version__}\nAn OsiriX-style DICOM workstation and mini-PACS in Python.\n\n"
               f"Database: {self.ctx.settings.data_dir}", parent=self)

    # --------------------------------------------------------- server mode
    def _toggle_server_mode(self, on: bool) -> None:
        self.set_server_mode(on)

    def set_server_mode(self, on: bool) -> None:
        """Hide (or show again) every window; dialogs become log lines."""
        set_server_mode(on)
        self.act_server.blockSignals(True)
        self.act_server.setChecked(on)
        self.act_server.blockSignals(False)
        if on:
            log.info("server mode on: windows hidden, messages go to the log")
            for w in QApplication.topLevelWidgets():
                if w.isVisible():
                    w.hide()
        else:
            log.info("server mode off")
            self.show()
            for v in self.ctx.viewers:
                v.show()
        tray = getattr(self, "tray", None)
        if tray is not None:
            tray.update_mode(on)

    def closeEvent(self, event):  # noqa: N802
        active = self.ctx.jobs.active()
        if active and not is_server_mode():
            if not confirm("Quit", f"{len(active)} job(s) are still running. Stop them and quit?",
                           parent=self):
                event.ignore()
                return
        for v in list(self.ctx.viewers):
            v.close()
        event.accept()
        self.quitRequested.emit()


def _has_selected_ancestor(n: Node, chosen: set[int]) -> bool:
    p = n.parent
    while p is not None:
        if id(p) in chosen:
            return True
        p = p.parent
    return False


def _images(n: Node) -> int:
    key = {Level.PATIENT: "NumberOfPatientRelatedInstances", Level.STUDY: "NumberOfStudyRelatedInstances",
           Level.SERIES: "NumberOfSeriesRelatedInstances"}[n.level]
    v = n.row.get(key)
    if v is None:
        return sum(_images(c) for c in n.children)
    return int(v)


def _describe(n: Node) -> str:
    r = n.row
    if n.level is Level.PATIENT:
        return f"patient {format_person_name(str(r.get('PatientName') or '?'))} ({r.get('PatientID') or ''})"
    if n.level is Level.STUDY:
        return f"study \u201c{r.get('StudyDescription') or r.get('StudyDate') or '?'}\u201d"
    return f"series {r.get('SeriesNumber') or ''} \u201c{r.get('SeriesDescription') or ''}\u201d"

