"""Preferences: listener, locations (DICOM nodes), database location, server mode."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..config import ConfigError, ListenerConfig, default_config_file, default_data_dir, to_toml, validate_ae_title
from ..services.nodes import Node, NodeError
from .notify import WARNING, notify

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- listener helpers
def listener_problem_text(error: BaseException | str, port: int | None) -> str:
    """A message a user can act on when the DICOM listener cannot start."""
    text = str(error)
    low = text.lower()
    if "address already in use" in low or "in use" in low or "errno 98" in low:
        return (f"Another program is already using network port {port}, so osirix-py cannot receive "
                "images from other DICOM devices right now.\n\nYou can still browse, import and view "
                "images. To receive images, close the other program or choose another port in "
                "Preferences \u203a Listener.")
    if "permission denied" in low or "errno 13" in low:
        return (f"osirix-py is not allowed to use network port {port} (ports below 1024 need special "
                "rights).\n\nYou can still browse, import and view images. Choose a port above 1024 in "
                "Preferences \u203a Listener to receive images.")
    return ("The DICOM listener could not start, so osirix-py cannot receive images from other "
            f"devices right now.\n\nYou can still browse, import and view images.\n\nReason: {text}")


def config_path(settings) -> Path:
    """Where the settings are saved: the file they came from, else where they would be read."""
    if settings.config_file:
        return Path(settings.config_file)
    if Path(settings.data_dir).resolve() != default_data_dir().resolve():
        return Path(settings.data_dir) / "config.toml"
    return default_config_file()


def save_settings(settings) -> Path:
    path = config_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text(to_toml(settings), encoding="utf-8")
    tmp.replace(path)
    return path


def apply_listener_config(runtime, cfg: ListenerConfig) -> None:
    """Restart the runtime's listener with ``cfg`` (raises when it cannot listen)."""
    configure = getattr(runtime, "configure_listener", None)
    if callable(configure):
        configure(cfg)
        return
    from ..net.scp import Listener

    runtime.stop_listener(timeout=5.0)
    runtime.settings = replace(runtime.settings, listener=cfg)
    runtime.listener = Listener(cfg, runtime.archive, runtime.nodes)
    if cfg.enabled:
        runtime.start_listener()


# --------------------------------------------------------------------------- node editor
class NodeDialog(QDialog):
    def __init__(self, repo, node: Node | None = None, parent: QWidget | None = None):
        super().__init__(parent)
        self.repo = repo
        self.original = node
        self.setWindowTitle("Edit Location" if node else "Add Location")
        self.name = QLineEdit(node.name if node else "")
        self.ae = QLineEdit(node.ae_title if node else "")
        self.ae.setMaxLength(16)
        self.host = QLineEdit(node.host if node else "")
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(node.port if node else 104)
        self.method = QComboBox()
        self.method.addItems(["move", "get"])
        self.method.setCurrentText(node.retrieve_method if node else "move")
        self.description = QLineEdit(node.description if node else "")
        self.error = QLabel()
        self.error.setStyleSheet("color: #c00")
        self.error.setWordWrap(True)
        form = QFormLayout()
        form.addRow("Name:", self.name)
        form.addRow("AE title:", self.ae)
        form.addRow("Host:", self.host)
        form.addRow("Port:", self.port)
        form.addRow("Retrieve with:", self.method)
        form.addRow("Description:", self.description)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.error)
        lay.addWidget(buttons)

    def node(self) -> Node:
        return Node(self.name.text().strip(), self.ae.text().strip(), self.host.text().strip(),
                    self.port.value(), self.method.currentText(), False, self.description.text().strip())

    def accept(self) -> None:
        try:
            node = self.node()
            if self.original is not None and self.original.name != node.name:
                self.repo.add(node)
                self.repo.remove(self.original.name)
            else:
                self.repo.add(node, replace=self.original is not None)
        except NodeError as exc:
            self.error.setText(str(exc))
            return
        super().accept()


# --------------------------------------------------------------------------- dialog
class PreferencesDialog(QDialog):
    serverModeRequested = Signal(bool)
    #: Emitted on the GUI thread with (node name, ok, message) when an echo ends.
    echoFinished = Signal(str, bool, str)

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setObjectName("preferencesDialog")
        self.setWindowTitle("Preferences")
        self.tabs = QTabWidget()
        self.tabs.addTab(self._listener_tab(), "Listener")
        self.tabs.addTab(self._locations_tab(), "Locations")
        self.tabs.addTab(self._database_tab(), "Database")
        self.tabs.addTab(self._server_tab(), "Server Mode")
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.tabs)
        lay.addWidget(buttons)
        self.resize(680, 460)
        self._refresh_listener_status()
        self._reload_nodes()

    # ------------------------------------------------------------ listener
    def _listener_tab(self) -> QWidget:
        cfg = self._settings().listener
        w = QWidget()
        self.ae_title = QLineEdit(cfg.ae_title)
        self.ae_title.setMaxLength(16)
        self.port = QSpinBox()
        self.port.setRange(1, 65535)
        self.port.setValue(int(cfg.port))
        self.bind = QLineEdit(cfg.bind_address)
        self.enabled = QCheckBox("Receive images (listener on)")
        self.enabled.setChecked(cfg.enabled)
        self.listener_status = QLabel()
        self.listener_status.setObjectName("listenerStatusLabel")
        self.listener_status.setWordWrap(True)
        self.listener_status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.apply_listener_button = QPushButton("Apply")
        self.apply_listener_button.setToolTip("Restart the listener with these settings and save them")
        self.apply_listener_button.clicked.connect(self.apply_listener)
        self.apply_listener_button.setEnabled(self.ctx.runtime is not None)
        form = QFormLayout()
        form.addRow("AE title:", self.ae_title)
        form.addRow("Port:", self.port)
        form.addRow("Bind address:", self.bind)
        form.addRow("", self.enabled)
        form.addRow("Status:", self.listener_status)
        row = QHBoxLayout()
        row.addStretch(1)
        row.addWidget(self.apply_listener_button)
        lay = QVBoxLayout(w)
        lay.addLayout(form)
        lay.addLayout(row)
        lay.addStretch(1)
        return w

    def _settings(self):
        rt = self.ctx.runtime
        return rt.settings if rt is not None else self.ctx.settings

    def _refresh_listener_status(self) -> None:
        rt = self.ctx.runtime
        if rt is None:
            text = "The DICOM listener is not part of this session."
        elif rt.listener.is_running():
            n = len(getattr(rt.listener, "active_associations", []) or [])
            text = (f"Running: {rt.ae_title} on {rt.settings.listener.bind_address}:{rt.listener_port}"
                    f" \u2022 {n} active association(s)")
            if rt.http_port:
                text += f"\nWeb access on port {rt.http_port}"
        elif rt.settings.listener.enabled:
            failure = getattr(rt.listener, "failure", None)
            text = "Not running" + (f": {failure}" if failure else "")
        else:
            text = "Off"
        self.listener_status.setText(text)

    def listener_config(self) -> ListenerConfig:
        """The listener settings the form holds (raises ConfigError on a bad AE title)."""
        cfg = self._settings().listener
        return replace(cfg, ae_title=validate_ae_title(self.ae_title.text()), port=self.port.value(),
                       bind_address=self.bind.text().strip() or "0.0.0.0", enabled=self.enabled.isChecked())

    def apply_listener(self) -> bool:
        rt = self.ctx.runtime
        try:
            cfg = self.listener_config()
        except ConfigError as exc:
            notify(WARNING, "Listener", str(exc), parent=self)
            return False
        if rt is None:
            return False
        try:
            apply_listener_config(rt, cfg)
        except Exception as exc:  # noqa: BLE001 - told in words
            self._refresh_listener_status()
            notify(WARNING, "The listener could not start", listener_problem_text(exc, cfg.port), parent=self)
            return False
        self.ctx.settings = replace(self.ctx.settings, listener=cfg)
        try:
            path = save_settings(rt.settings)
            log.info("listener settings saved to %s", path)
        except OSError as exc:
            notify(WARNING, "Settings not saved",
                   f"The listener runs with the new settings, but they could not be saved: {exc}", parent=self)
        self._refresh_listener_status()
        return True

    # ----------------------------------------------------------- locations
    def _locations_tab(self) -> QWidget:
        w = QWidget()
        self.nodes_table = QTableWidget(0, 5)
        self.nodes_table.setObjectName("nodesTable")
        self.nodes_table.setHorizontalHeaderLabels(["Name", "AE title", "Host", "Port", "Retrieve"])
        self.nodes_table.verticalHeader().hide()
        self.nodes_table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.nodes_table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.nodes_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.nodes_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.nodes_table.doubleClicked.connect(lambda *_: self.edit_node())
        self.add_node_button = QPushButton("Add...")
        self.edit_node_button = QPushButton("Edit...")
        self.remove_node_button = QPushButton("Remove")
        self.echo_button = QPushButton("Echo")
        self.echo_button.setToolTip("Check the connection with a C-ECHO")
        self.echo_result = QLabel()
        self.echo_result.setObjectName("echoResult")
        self.echo_result.setWordWrap(True)
        self.add_node_button.clicked.connect(self.add_node)
        self.edit_node_button.clicked.connect(self.edit_node)
        self.remove_node_button.clicked.connect(self.remove_node)
        self.echo_button.clicked.connect(self.echo_selected)
        self.nodes_table.itemSelectionChanged.connect(self._node_buttons)
        buttons = QHBoxLayout()
        for b in (self.add_node_button, self.edit_node_button, self.remove_node_button, self.echo_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        lay = QVBoxLayout(w)
        lay.addWidget(self.nodes_table)
        lay.addLayout(buttons)
        lay.addWidget(self.echo_result)
        return w

    def _reload_nodes(self) -> None:
        nodes = self.ctx.nodes.list()
        self.nodes_table.setRowCount(len(nodes))
        for i, n in enumerate(nodes):
            for j, v in enumerate((n.name, n.ae_title, n.host, str(n.port), n.retrieve_method)):
                it = QTableWidgetItem(v)
                if j == 0:
                    it.setData(Qt.ItemDataRole.UserRole, n)
                self.nodes_table.setItem(i, j, it)
        self._node_buttons()

    def _node_buttons(self) -> None:
        has = self.selected_node() is not None
        for b in (self.edit_node_button, self.remove_node_button, self.echo_button):
            b.setEnabled(has)

    def selected_node(self) -> Node | None:
        rows = self.nodes_table.selectionModel().selectedRows()
        if not rows:
            return None
        it = self.nodes_table.item(rows[0].row(), 0)
        return it.data(Qt.ItemDataRole.UserRole) if it is not None else None

    def add_node(self) -> None:
        if NodeDialog(self.ctx.nodes, None, self).exec() == QDialog.DialogCode.Accepted:
            self._reload_nodes()

    def edit_node(self) -> None:
        n = self.selected_node()
        if n is not None and NodeDialog(self.ctx.nodes, n, self).exec() == QDialog.DialogCode.Accepted:
            self._reload_nodes()

    def remove_node(self) -> None:
        from .notify import confirm

        n = self.selected_node()
        if n is None or not confirm("Remove Location", f"Remove {n}?", parent=self):
            return
        try:
            self.ctx.nodes.remove(n.name)
        except NodeError as exc:
            notify(WARNING, "Remove Location", str(exc), parent=self)
        self._reload_nodes()

    def echo_selected(self) -> None:
        n = self.selected_node()
        if n is not None:
            self.echo_node(n)

    def echo_node(self, node: Node):
        """C-ECHO ``node`` in the background; the result goes to the label (and a failure to notify)."""
        try:
            from ..net.scu import echo
        except ImportError:  # the client side is optional
            self.echo_result.setText("Echo is not available in this installation.")
            return None
        calling = self._settings().listener.ae_title
        timeout = float(getattr(self._settings(), "connect_timeout", 10.0))
        self.echo_result.setText(f"Echoing {node} ...")
        self.echo_button.setEnabled(False)

        def done(rtt: float):
            self._echo_done(node, True, f"{node.name}: echo OK in {rtt * 1000:.0f} ms")

        def failed(exc: BaseException):
            self._echo_done(node, False, str(exc))

        return self.ctx.submit(lambda: echo(node, calling, timeout=timeout), done, failed)

    def _echo_done(self, node: Node, ok: bool, message: str) -> None:
        try:
            self.echo_result.setText(("\u2714 " if ok else "\u2716 ") + message)
            self._node_buttons()
        except RuntimeError:  # the dialog is gone
            pass
        if not ok:
            notify(WARNING, "Echo failed", f"{node.name} did not answer the echo.\n\n{message}")
        self.echoFinished.emit(node.name, ok, message)

    # ------------------------------------------------------------ database
    def _database_tab(self) -> QWidget:
        s = self.ctx.settings
        w = QWidget()
        form = QFormLayout()
        for label, value in (("Data folder:", str(s.data_dir)),
                             ("Database:", s.to_dict()["effective_database_url"]),
                             ("Files:", str(s.store_dir)),
                             ("Settings file:", str(config_path(s)))):
            e = QLineEdit(value)
            e.setReadOnly(True)
            e.setCursorPosition(0)
            form.addRow(label, e)
        self.db_stats = QLabel("...")
        form.addRow("Contents:", self.db_stats)
        note = QLabel("The database location is chosen when osirix-py starts: "
                      "<tt>osirix-py --data-dir FOLDER</tt> (or the environment variable "
                      "<tt>OSIRIX_PY_HOME</tt>) uses another folder for the database, the files and "
                      "the settings.")
        note.setWordWrap(True)
        note.setTextFormat(Qt.TextFormat.RichText)
        lay = QVBoxLayout(w)
        lay.addLayout(form)
        lay.addWidget(note)
        lay.addStretch(1)

        def show(st: dict):
            try:
                free = st.get("free_bytes")
                self.db_stats.setText(
                    f"{st['patients']} patient(s), {st['studies']} study(ies), {st['series']} series, "
                    f"{st['instances']} image(s), {st['bytes'] / 1e6:.1f} MB"
                    + (f"; {free / 1e9:.1f} GB free" if free else ""))
            except RuntimeError:
                pass

        self.ctx.submit(self.ctx.archive.stats, show, lambda exc: None)
        return w

    # --------------------------------------------------------- server mode
    def _server_tab(self) -> QWidget:
        w = QWidget()
        box = QGroupBox("Server mode")
        note = QLabel("In server mode osirix-py keeps receiving, storing and serving images "
                      "(listener and web access) with no window on screen; every message that would "
                      "open a dialog is written to the log instead. To start in server mode, run "
                      "<tt>osirix-py --server-mode</tt>. Quit it with Ctrl+C or SIGTERM, or from the "
                      "tray icon where the desktop has one.")
        note.setWordWrap(True)
        note.setTextFormat(Qt.TextFormat.RichText)
        self.server_mode_button = QPushButton("Switch to Server Mode Now")
        self.server_mode_button.clicked.connect(self._server_mode_now)
        bl = QVBoxLayout(box)
        bl.addWidget(note)
        bl.addWidget(self.server_mode_button)
        lay = QVBoxLayout(w)
        lay.addWidget(box)
        lay.addStretch(1)
        return w

    def _server_mode_now(self) -> None:
        self.accept()
        self.serverModeRequested.emit(True)
