"""The Query & Retrieve window against a real Orthanc on 127.0.0.1.

Orthanc holds 3 patients x 1 study x 2 series x 5 slices.  The window runs
C-FIND at the study and series levels, and retrieves by C-MOVE (to the
listener of the embedded runtime) or C-GET; the retrieved study must show
up in the local archive and in the browser.  Failures (unreachable node,
wrong AE title, unknown calling AE) give a clear message, and none in
server mode.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from guihelpers import visible_dialogs
from guihelpers import (  # noqa: F401 - fixtures
    closed_port,
    gui_settings,
    key,
    orthanc_peer,
    start_gui,
    wait_job,
)
from PySide6.QtCore import Qt
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication, QToolBar

from osirix_py.dicom.tags import Level
from osirix_py.gui.notify import set_server_mode
from osirix_py.gui.qr import QueryRetrieveWindow, Transfer, problem_kind, start_transfers
from osirix_py.services.nodes import Node

pytestmark = pytest.mark.peers

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def gui(qapp, tmp_path, orthanc_peer):  # noqa: F811
    """The desktop application, its listener on the port Orthanc knows for OSIRIXPY."""
    g = start_gui(gui_settings(tmp_path / "data", listener_port=orthanc_peer.our_port))
    g.ctx.nodes.add(orthanc_peer.node("Orthanc", method="move"))
    yield g
    g.shutdown()
    set_server_mode(False)


def _search(qtbot, w: QueryRetrieveWindow, **fields) -> list[dict]:
    with qtbot.waitSignal(w.searchFinished, timeout=20000) as blocker:
        for k, v in fields.items():
            getattr(w, k).setText(v)
        w.search()
    assert blocker.args[1] == "", blocker.args
    return w.studies.rows


def _select_study(qtbot, w: QueryRetrieveWindow, patient_id: str) -> dict:
    for r in range(w.study_proxy.rowCount()):
        row = w.study_proxy.data(w.study_proxy.index(r, 0), Qt.ItemDataRole.UserRole + 1)
        if row["PatientID"] == patient_id:
            w.study_view.clearSelection()
            with qtbot.waitSignal(w.seriesListed, timeout=20000) as blocker:
                w.study_view.selectRow(r)
            assert blocker.args[1] == ""
            return row
    raise AssertionError(f"no study of {patient_id} listed")


def _cell(view, row: int, col: int) -> str:
    m = view.model()
    return m.data(m.index(row, col)) or ""


def test_query_series_and_retrieve_by_move(qtbot, gui, orthanc_peer):  # noqa: F811
    w = gui.window
    archive = gui.ctx.archive
    assert w.act_query.shortcut().toString() == "Ctrl+Shift+Q"
    assert w.act_query in w.findChild(QToolBar, "mainToolBar").actions()
    assert w.act_query.iconText() == "Query"
    w.act_query.trigger()
    qr = w.qr_window
    qtbot.waitExposed(qr)
    assert qr.isVisible() and qr.current_node().name == "Orthanc"

    rows = _search(qtbot, qr)
    assert {r["PatientID"] for r in rows} == {"PAT001", "PAT002", "PAT003"}
    names = {_cell(qr.study_view, i, 0) for i in range(3)}
    assert "M\u00fcller, J\u00fcrgen" in names  # ISO_IR 100 names decoded
    assert "found on Orthanc" in qr.message.text()

    study = _select_study(qtbot, qr, "PAT001")
    assert len(qr.series.rows) == 2
    assert [_cell(qr.series_view, i, 0) for i in range(2)] == ["1", "2"]
    assert all(r["NumberOfSeriesRelatedInstances"] == 5 for r in qr.series.rows)
    assert _cell(qr.study_view, qr.study_view.currentIndex().row(), 9) == ""  # nothing here yet

    # Retrieve ONE series (C-MOVE to our listener): live progress, then it is here.
    qr.series_view.selectRow(0)
    assert qr.retrieve_series_button.isEnabled()
    series_uid = qr.selected_series()[0]["SeriesInstanceUID"]
    qtbot.mouseClick(qr.retrieve_series_button, Qt.MouseButton.LeftButton)
    job = qr.jobs[-1]
    assert qr.progress.isVisible()  # live progress in the window while it runs
    assert job in gui.ctx.jobs.jobs()  # listed in Activity
    assert w.activity_dock.isVisible()
    wait_job(qtbot, job)
    assert job.state == "done", job.errors
    assert (job.done, job.total) == (5, 5)
    assert archive.count(Level.IMAGE, {"SeriesInstanceUID": series_uid}) == 5
    qtbot.waitUntil(lambda: qr.series.local_text(qr.series.rows[0]) == "\u2714", timeout=10000)
    assert not qr.progress.isVisible()
    row = gui.ctx.jobs.jobs().index(job)
    assert gui.ctx.jobs.data(gui.ctx.jobs.index(row, 1)) == "done"
    assert gui.ctx.jobs.data(gui.ctx.jobs.index(row, 2)) == "5/5"

    # The whole study; the browser shows it (through the change feed, no refresh by hand).
    n_jobs = len(qr.jobs)
    qr.study_view.setFocus()
    key(qtbot, qr.study_view, Qt.Key.Key_R, Qt.KeyboardModifier.ControlModifier)  # Ctrl+R
    assert len(qr.jobs) == n_jobs + 1
    job = qr.jobs[-1]
    assert "Synthetic" in job.title and "series" not in job.title
    wait_job(qtbot, job)
    assert job.state == "done", job.errors
    uid = study["StudyInstanceUID"]
    assert archive.count(Level.IMAGE, {"StudyInstanceUID": uid}) == 10

    def in_browser():
        return any(n.level is Level.STUDY and n.key == uid for n in w.model.iter_nodes())

    qtbot.waitUntil(in_browser, timeout=10000)
    qtbot.waitUntil(lambda: "\u2714" in [_cell(qr.study_view, i, 9) for i in range(3)], timeout=10000)
    # The job manager of the runtime recorded both retrieves.
    hist = gui.runtime.jobs.history()
    assert sum(1 for h in hist if h["kind"] == "retrieve" and h["state"] == "done") == 2


def test_retrieve_by_get_without_runtime(qtbot, empty_ctx, orthanc_peer):  # noqa: F811
    """C-GET needs no listener: the window works over a bare archive too."""
    empty_ctx.nodes.add(orthanc_peer.node("Orthanc GET", method="get"))
    qr = QueryRetrieveWindow(empty_ctx)
    qtbot.addWidget(qr)
    qr.show()
    rows = _search(qtbot, qr, patient_id="PAT002")
    assert [r["PatientID"] for r in rows] == ["PAT002"]
    _select_study(qtbot, qr, "PAT002")
    job = qr.retrieve_studies()[0]
    assert "Orthanc GET" in job.title
    wait_job(qtbot, job)
    assert job.state == "done", job.errors
    assert empty_ctx.archive.count(Level.IMAGE, {"PatientID": "PAT002"}) == 10
    qtbot.waitUntil(lambda: qr.studies.local_text(qr.studies.rows[0]) == "\u2714", timeout=10000)


def test_search_fields_shortcuts_and_remembered_location(qtbot, empty_ctx, orthanc_peer):  # noqa: F811
    ctx = empty_ctx
    ctx.nodes.add(orthanc_peer.node("A first", method="get"))
    ctx.nodes.add(orthanc_peer.node("Orthanc", method="get"))
    qr = QueryRetrieveWindow(ctx)
    qtbot.addWidget(qr)
    qr.show()
    qtbot.waitExposed(qr)
    assert qr.set_location("Orthanc")

    # Enter in a field searches; names match as "contains", non-ASCII included.
    qr.activateWindow()
    qr.name.setFocus()
    qr.name.setText("ller")
    finished = []
    qr.searchFinished.connect(lambda n, err: finished.append((n, err)))
    with qtbot.waitSignal(qr.searchFinished, timeout=20000):
        QTest.keyClick(qr.name, Qt.Key.Key_Return)
    qtbot.wait(100)
    assert finished == [(1, "")]  # one search, not stopped by a second one
    assert [r["PatientID"] for r in qr.studies.rows] == ["PAT002"]
    assert qr.query() == {"PatientName": "*ller*"}

    # Modality and description; the date shortcuts make DICOM ranges.
    qr.name.clear()
    qr.modality.setCurrentText("MR")
    assert {r["PatientID"] for r in _search(qtbot, qr)} == {"PAT002"}  # studies alternate CT / MR
    qr.modality.setCurrentText("")
    assert len(_search(qtbot, qr, description="Synthetic CT*")) == 2
    qr.description.clear()
    qr.date.setCurrentText("Today")
    q = qr.query()
    assert len(q["StudyDate"]) == 8 and "-" not in q["StudyDate"]
    assert _search(qtbot, qr) == []
    assert "0 studies found" in qr.message.text()
    qr.date.setCurrentText("Last week")
    assert "-" in qr.query()["StudyDate"]
    qr.date.setCurrentText("Range...")
    assert qr.date_from.isVisibleTo(qr)
    qr.clear_fields()
    assert qr.query() == {}

    # The last location is remembered for the next window.
    qr.close()
    again = QueryRetrieveWindow(ctx)
    qtbot.addWidget(again)
    assert again.current_node().name == "Orthanc"
    # Esc closes the window.
    again.show()
    qtbot.waitExposed(again)
    again.activateWindow()
    qtbot.waitUntil(lambda: QApplication.activeWindow() is again, timeout=5000)
    QTest.keyClick(again.study_view, Qt.Key.Key_Escape)
    qtbot.waitUntil(lambda: not again.isVisible(), timeout=5000)


def test_failures_give_clear_messages(qtbot, empty_ctx, orthanc_peer, dialogs):  # noqa: F811
    ctx = empty_ctx
    closed = closed_port()
    ctx.nodes.add(Node("Gone", "NOBODY", "127.0.0.1", closed))
    ctx.nodes.add(orthanc_peer.node("Wrong AE", ae_title="NOT_ORTHANC"))
    qr = QueryRetrieveWindow(ctx)
    qtbot.addWidget(qr)
    qr.show()

    def failed_search(location: str) -> str:
        assert qr.set_location(location)
        with qtbot.waitSignal(qr.searchFinished, timeout=20000) as blocker:
            qr.search()
        assert blocker.args[0] == 0 and blocker.args[1]
        return blocker.args[1]

    text = failed_search("Gone")
    assert "cannot be reached" in text and f"port {closed}" in text
    assert "Traceback" not in text and "ScuError" not in text
    assert dialogs.boxes[-1][1] == "Search failed" and "cannot be reached" in dialogs.boxes[-1][2]
    assert "cannot be reached" in qr.message.text()

    text = failed_search("Wrong AE")
    assert "does not go by the AE title" in text and "NOT_ORTHANC" in text

    # Orthanc does not know the calling AE title of this workstation.
    from dataclasses import replace

    from osirix_py.gui.context import AppContext

    stranger = AppContext(replace(ctx.settings, listener=replace(ctx.settings.listener, ae_title="STRANGER")),
                          ctx.archive, refresh_ms=100)
    try:
        stranger.nodes.add(orthanc_peer.node("Orthanc"))
        w2 = QueryRetrieveWindow(stranger)
        qtbot.addWidget(w2)
        w2.set_location("Orthanc")
        with qtbot.waitSignal(w2.searchFinished, timeout=20000) as blocker:
            w2.search()
        assert "refused to work with this workstation" in blocker.args[1]
        assert "STRANGER" in blocker.args[1]
    finally:
        stranger.close()

    # A retrieve from an unreachable node: a failed job with the same kind of message.
    job = start_transfers(ctx, "retrieve", Node("Gone", "NOBODY", "127.0.0.1", closed, retrieve_method="get"),
                          [Transfer(study_uid="1.2.3")], "Retrieve from Gone")
    wait_job(qtbot, job)
    assert job.state == "failed"
    assert "cannot be reached" in job.errors[-1]
    assert dialogs.boxes[-1][1] == "Retrieve failed" and "Technical details" not in dialogs.boxes[-1][2]
    # C-MOVE needs our listener: without one, say so instead of waiting for nothing.
    job = start_transfers(ctx, "retrieve", orthanc_peer.node(method="move"), [Transfer(study_uid="1.2.3")],
                          "Retrieve by move")
    wait_job(qtbot, job)
    assert job.state == "failed" and "receiving images is off" in job.errors[-1]
    assert not dialogs.dialogs


@pytest.mark.parametrize("text,kind", [
    ("X@h:1: connection refused by h:1 (nothing listens on that port)", "unreachable"),
    ("X@h:1: unknown host 'h' (Name or service not known)", "unknown-host"),
    ("X@h:1: association permanently rejected: Called AE title not recognised (we called as 'A')",
     "called-ae"),
    ("X@h:1: association permanently rejected: Calling AE title not recognised (we called as 'A')",
     "calling-ae"),
    ("X@h:1: the association was aborted during the C-FIND (the peer may refuse C-FIND from 'A')",
     "calling-ae"),
    ("X@h:1: C-MOVE refused, move destination 'A' unknown: add ...", "move-destination"),
    ("X@h:1: no C-FIND response within 3.0 s", "timeout"),
])
def test_problem_kinds(text, kind):
    assert problem_kind(text) == kind


def test_server_mode_no_dialog(qtbot, gui, orthanc_peer, no_dialogs, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="osirix_py.gui")
    w = gui.window
    gui.ctx.nodes.add(Node("Gone", "NOBODY", "127.0.0.1", closed_port(), retrieve_method="get"))
    qr = w.show_query()
    w.set_server_mode(True)
    assert not qr.isVisible()
    assert w.show_query() is qr and not qr.isVisible()  # no window in server mode
    qr.set_location("Gone")
    with qtbot.waitSignal(qr.searchFinished, timeout=20000) as blocker:
        qr.search()
    assert "cannot be reached" in blocker.args[1]
    job = start_transfers(gui.ctx, "retrieve", gui.ctx.nodes.get("Gone"), [Transfer(study_uid="1.2.3")],
                          "Retrieve from Gone")
    wait_job(qtbot, job)
    assert job.state == "failed"
    assert not visible_dialogs(QApplication.instance())
    assert not [x for x in QApplication.topLevelWidgets() if x.isVisible()]
    logged = [r.getMessage() for r in caplog.records if r.name == "osirix_py.gui"]
    assert any(m.startswith("Search failed: ") and "cannot be reached" in m for m in logged)
    assert any(m.startswith("Retrieve failed: ") for m in logged)
    # A retrieve that works in server mode still lands in the archive.
    qr.set_location("Orthanc")
    _search(qtbot, qr, patient_id="PAT003")
    job = qr.retrieve_studies()[0]
    wait_job(qtbot, job)
    assert job.state == "done", job.errors
    assert gui.ctx.archive.count(Level.IMAGE, {"PatientID": "PAT003"}) == 10


def test_screenshot(qtbot, gui, orthanc_peer, tmp_path):  # noqa: F811
    """The window with results and a retrieve in Activity; OSIRIX_SCREENSHOTS=dir keeps it."""
    gui.ctx.nodes.add(Node("CT-1", "CT_SCANNER_1", "10.0.12.31", 104, description="CT room 1"))
    qr = gui.window.show_query()
    qr.resize(1180, 700)
    qr.set_location("Orthanc")
    _search(qtbot, qr)
    _select_study(qtbot, qr, "PAT002")
    job = qr.retrieve_studies()[0]
    wait_job(qtbot, job)
    _select_study(qtbot, qr, "PAT001")
    qr.series_view.selectRow(0)
    qtbot.waitUntil(lambda: "\u2714" in [_cell(qr.study_view, i, 9) for i in range(3)], timeout=10000)
    qtbot.wait(200)
    out = Path(os.environ.get("OSIRIX_PY_SCREENSHOTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    img = qr.grab()
    assert img.save(str(out / "qr.png"))
    assert (out / "qr.png").stat().st_size > 10000


def test_move_to_a_wrong_address_says_so(qtbot, qapp, tmp_path, orthanc_peer, dialogs):  # noqa: F811
    """Orthanc knows OSIRIXPY at another port than our listener's: its transfers to us fail."""
    g = start_gui(gui_settings(tmp_path / "data", listener_port=0))
    try:
        assert g.runtime.listener_port != orthanc_peer.our_port
        node = orthanc_peer.node("Orthanc", method="move")
        job = start_transfers(g.ctx, "retrieve", node, [Transfer(study_uid=_any_study(orthanc_peer))],
                              "Retrieve by move")
        wait_job(qtbot, job)
        assert job.state == "failed", job.status
        text = job.errors[-1].split("\n\nTechnical details:")[0]
        assert "could not send the images to this workstation" in text
        assert f"OSIRIXPY (this computer, port {g.runtime.listener_port})" in text and "C-GET" in text
        assert dialogs.boxes and dialogs.boxes[-1][1] == "Retrieve failed"
        assert g.ctx.archive.count(Level.IMAGE) == 0
    finally:
        g.shutdown()


def _any_study(peer) -> str:
    from pydicom import dcmread

    return str(dcmread(next(peer.data.rglob("*.dcm")), stop_before_pixels=True).StudyInstanceUID)
