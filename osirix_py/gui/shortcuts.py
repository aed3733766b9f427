"""Keyboard shortcuts: one table used to build the viewer's actions and the Help dialog."""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)


@dataclass(frozen=True)
class Command:
    id: str
    text: str
    keys: tuple[str, ...]
    group: str
    checkable: bool = False


#: Viewer commands.  ``keys`` are QKeySequence strings; the first is shown in menus.
VIEWER_COMMANDS: tuple[Command, ...] = (
    Command("prev_slice", "Previous Image", ("Up",), "Browse"),
    Command("next_slice", "Next Image", ("Down",), "Browse"),
    Command("page_up", "Back 10 Images", ("PgUp",), "Browse"),
    Command("page_down", "Forward 10 Images", ("PgDown",), "Browse"),
    Command("first_slice", "First Image", ("Home",), "Browse"),
    Command("last_slice", "Last Image", ("End",), "Browse"),
    Command("prev_series", "Previous Series", ("Left",), "Browse"),
    Command("next_series", "Next Series", ("Right",), "Browse"),
    Command("cine", "Play / Stop Cine", ("Space",), "Browse", True),
    Command("sync", "Synchronise Scrolling", ("Y",), "Browse", True),
    Command("tool_wl", "Window/Level Tool", ("W",), "Tools", True),
    Command("tool_pan", "Pan (Move) Tool", ("M",), "Tools", True),
    Command("tool_zoom", "Zoom Tool", ("Z",), "Tools", True),
    Command("tool_select", "Select / Move ROI", ("S",), "Tools", True),
    Command("tool_length", "Length", ("L",), "Tools", True),
    Command("tool_angle", "Angle", ("A",), "Tools", True),
    Command("tool_rectangle", "Rectangle ROI", ("B",), "Tools", True),
    Command("tool_ellipse", "Ellipse ROI", ("E",), "Tools", True),
    Command("tool_polygon", "Polygon ROI", ("P",), "Tools", True),
    Command("tool_freehand", "Freehand ROI", ("D",), "Tools", True),
    Command("tool_point", "Point", ("X",), "Tools", True),
    Command("tool_text", "Text Annotation", ("T",), "Tools", True),
    Command("delete_roi", "Delete Selected ROI", ("Del", "Backspace"), "Tools"),
    Command("cancel", "Cancel Drawing / Deselect", ("Esc",), "Tools"),
    Command("wl_default", "Default Window", ("0",), "Window"),
    Command("wl_full", "Full Dynamic Range", ("Ctrl+0",), "Window"),
    Command("invert", "Invert", ("I",), "Image", True),
    Command("rotate_cw", "Rotate 90\u00b0 Clockwise", ("R",), "Image"),
    Command("rotate_ccw", "Rotate 90\u00b0 Counter-clockwise", ("Shift+R",), "Image"),
    Command("flip_h", "Flip Horizontal", ("H",), "Image"),
    Command("flip_v", "Flip Vertical", ("V",), "Image"),
    Command("fit", "Fit to Window", ("F",), "Image"),
    Command("actual_size", "Actual Pixels (1:1)", ("Ctrl+1",), "Image"),
    Command("zoom_in", "Zoom In", ("Ctrl+=", "Ctrl++"), "Image"),
    Command("zoom_out", "Zoom Out", ("Ctrl+-",), "Image"),
    Command("reset", "Reset View", ("Ctrl+R",), "Image"),
    Command("layout_1x1", "Layout 1\u00d71", ("Alt+1",), "Layout", True),
    Command("layout_1x2", "Layout 1\u00d72", ("Alt+2",), "Layout", True),
    Command("layout_2x2", "Layout 2\u00d72", ("Alt+3",), "Layout", True),
    Command("layout_mpr", "MPR: Axial, Coronal, Sagittal", ("Alt+4",), "Layout", True),
    Command("export", "Export View as PNG/JPEG...", ("Ctrl+S",), "File"),
    Command("copy", "Copy View", ("Ctrl+C",), "File"),
    Command("close", "Close Viewer", ("Ctrl+W",), "File"),
)

#: Shown in the dialog but handled by the view itself (mouse and digits).
OTHER_SHORTCUTS: tuple[tuple[str, str, str], ...] = (
    ("Browse", "Mouse wheel", "Previous / next image"),
    ("Image", "Ctrl + mouse wheel", "Zoom around the cursor"),
    ("Window", "Right-button drag (or left with the W/L tool)", "Window: horizontal = width, vertical = level"),
    ("Window", "1 ... 9", "Window presets (see the Window menu)"),
    ("Image", "Middle-button drag", "Pan"),
    ("Layout", "MPR: left click / drag", "Move the cross (the other two planes follow)"),
    ("Layout", "MPR: wheel, Up / Down", "Next / previous plane of the view under the cursor"),
    ("Layout", "Ctrl+3", "3D / MPR window on the current series (volume rendering, MIP, oblique MPR)"),
    ("Database", "Ctrl+Shift+Q", "Query & Retrieve (find and move studies from a DICOM node)"),
    ("Tools", "Double-click / Enter", "Close a polygon"),
    ("Database", "Return", "Open the selected series"),
    ("Database", "Del", "Delete the selected patients, studies or series"),
    ("Database", "Ctrl+O / Ctrl+Shift+O", "Import files / a folder (or drop them on the window)"),
    ("Database", "Ctrl+F", "Search"),
    ("Database", "Ctrl+J", "Show the Activity panel"),
    ("Database", "F5", "Refresh"),
)


def key_text(keys: tuple[str, ...]) -> str:
    return ", ".join(QKeySequence(k).toString(QKeySequence.SequenceFormat.NativeText) for k in keys)


class ShortcutsDialog(QDialog):
    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWindowTitle("Keyboard Shortcuts")
        self.setObjectName("shortcutsDialog")
        rows = [(c.group, key_text(c.keys), c.text) for c in VIEWER_COMMANDS] + list(OTHER_SHORTCUTS)
        order = ["Database", "Browse", "Window", "Image", "Tools", "Layout", "File"]
        rows.sort(key=lambda r: order.index(r[0]) if r[0] in order else len(order))
        table = QTableWidget(len(rows), 3)
        table.setObjectName("shortcutsTable")
        table.setHorizontalHeaderLabels(["Group", "Keys", "Action"])
        table.verticalHeader().hide()
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for i, (group, keys, text) in enumerate(rows):
            for j, v in enumerate((group, keys, text)):
                it = QTableWidgetItem(v)
                it.setFlags(Qt.ItemFlag.ItemIsEnabled)
                table.setItem(i, j, it)
        table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(table)
        lay.addWidget(buttons)
        self.table = table
        self.resize(620, 640)
