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


# --------------------------------------------------------------------------- real DICOM peers
# The integration tests' peer launchers (tests/integration/peers_fixtures.py) are loaded by
# path: ``from conftest import`` would be ambiguous between the two test folders.
import importlib.util  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

TESTS = Path(__file__).resolve().parents[1]


def peers_fixtures():
    """The module tests/integration/peers_fixtures.py (Orthanc / storescp launchers)."""
    name = "osirix_gui_peers_fixtures"
    mod = sys.modules.get(name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(name, TESTS / "integration" / "peers_fixtures.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return mod


def free_port() -> int:
    from benchmarks.peers import free_port as _free  # peers_fixtures put the repo on sys.path

    peers_fixtures()
    return _free()


def closed_port() -> int:
    """A loopback port nothing listens on (right now)."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class OrthancPeer:
    """A real Orthanc on 127.0.0.1 holding a synthetic archive; it knows ``our_ae`` at ``our_port``."""

    orthanc: object
    our_ae: str
    our_port: int
    data: Path

    def node(self, name: str = "Orthanc", *, method: str = "move", ae_title: str | None = None,
             port: int | None = None):
        from osirix_py.services.nodes import Node

        return Node(name, ae_title or self.orthanc.aet, "127.0.0.1", port or self.orthanc.dicom_port,
                    retrieve_method=method, description="Test PACS")


@pytest.fixture(scope="module")
def orthanc_peer(tmp_path_factory):
    """Orthanc with 3 patients x 1 study x 2 series x 5 slices (30 instances, 32x32)."""
    from benchmarks.peers import storescu

    from osirix_py.dicom import synthetic

    pf = peers_fixtures()
    root = tmp_path_factory.mktemp("gui-orthanc")
    data = root / "data"
    synthetic.generate_archive(data, patients=3, studies_per_patient=1, series_per_study=2,
                               slices=5, rows=32, columns=32, seed=11)
    our_port = free_port()
    orth = pf.start_orthanc(root / "orthanc", {"OSIRIXPY": ("OSIRIXPY", our_port)})
    try:
        storescu([data], aec=orth.aet, port=orth.dicom_port)
        assert orth.count_instances() == 30
        yield OrthancPeer(orth, "OSIRIXPY", our_port, data)
    finally:
        orth.cleanup()


@pytest.fixture
def storescp_peer(tmp_path):
    """dcmtk storescp (AE STORESCP) writing what it receives under ``.out_dir``."""
    scp = peers_fixtures().start_storescp(tmp_path / "storescp", "STORESCP", accept_all=True)
    yield scp
    scp.cleanup()


def gui_settings(data_dir: Path, *, listener_port: int = 0, ae_title: str = "OSIRIXPY"):
    """Settings of a GUI session on loopback: no web server, short connect timeout."""
    from osirix_py.config import load_settings

    s = load_settings(data_dir=data_dir, environ={})
    return replace(s, listener=replace(s.listener, port=listener_port, bind_address="127.0.0.1",
                                       ae_title=ae_title),
                   http=replace(s.http, port=0, enabled=False), connect_timeout=3.0)


def start_gui(settings):
    """The whole desktop application (runtime, listener, browser) as ``osirix-py`` starts it."""
    from osirix_py.gui.app import GuiApplication

    gui = GuiApplication(settings)
    assert gui.start()
    assert gui.wait_started(30)
    QApplication.processEvents()
    assert gui.start_problems == [], gui.start_problems
    return gui


def wait_job(qtbot, job, timeout: int = 30000):
    """Wait (bounded) until a GUI job has finished and its end has reached the GUI thread."""
    qtbot.waitUntil(lambda: job.is_finished, timeout=timeout)
    qtbot.wait(50)
    return job


def visible_dialogs(app) -> list:
    """Every dialog or message box on screen (server mode must never show one)."""
    from PySide6.QtWidgets import QDialog, QMessageBox

    return [w for w in app.topLevelWidgets() if w.isVisible() and isinstance(w, (QDialog, QMessageBox))]
