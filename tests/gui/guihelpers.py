"""Deterministic input for GUI tests: events are sent, not simulated through the window system."""

from __future__ import annotations

import io

import pydicom
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication

from osirix_py.dicom.tags import Level

L = Qt.MouseButton.LeftButton
R = Qt.MouseButton.RightButton
NOB = Qt.MouseButton.NoButton


def mouse(widget, kind, pos, button=L, buttons=None, modifiers=Qt.KeyboardModifier.NoModifier):
    pos = QPointF(pos)
    types = {"press": QMouseEvent.Type.MouseButtonPress, "move": QMouseEvent.Type.MouseMove,
             "release": QMouseEvent.Type.MouseButtonRelease, "double": QMouseEvent.Type.MouseButtonDblClick}
    if buttons is None:
        buttons = button if kind in ("press", "move", "double") else NOB
    ev = QMouseEvent(types[kind], pos, widget.mapToGlobal(pos), button if kind != "move" else NOB,
                     buttons, modifiers)
    QApplication.sendEvent(widget, ev)


def drag(widget, start, end, button=L, steps=5):
    start, end = QPointF(start), QPointF(end)
    mouse(widget, "press", start, button)
    for i in range(1, steps + 1):
        p = start + (end - start) * (i / steps)
        mouse(widget, "move", p, button, buttons=button)
    mouse(widget, "release", end, button)


def wheel(widget, pos, delta=-120, modifiers=Qt.KeyboardModifier.NoModifier):
    pos = QPointF(pos)
    ev = QWheelEvent(pos, widget.mapToGlobal(pos), QPoint(), QPoint(0, delta), NOB, modifiers,
                     Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(widget, ev)


def series_uid(archive, modality: str) -> str:
    return archive.find(Level.SERIES, {"Modality": modality})[0]["SeriesInstanceUID"]


def dataset_of(archive, sop_uid: str):
    row = archive.find(Level.IMAGE, {"SOPInstanceUID": sop_uid})[0]
    return pydicom.dcmread(io.BytesIO(archive.read_instance(row)))


def key(qtbot, widget, k, modifiers=Qt.KeyboardModifier.NoModifier):
    """A key press as the user makes it: in the active window (shortcuts need one under X)."""
    from PySide6.QtTest import QTest

    win = widget.window()
    if QApplication.activeWindow() is not win:
        win.activateWindow()
        win.raise_()
        qtbot.waitUntil(lambda: QApplication.activeWindow() is win, timeout=5000)
    QTest.keyClick(widget, k, modifiers)
