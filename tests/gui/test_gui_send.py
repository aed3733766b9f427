"""Send to: the browser's menu of locations, against a real dcmtk storescp on 127.0.0.1."""

from __future__ import annotations

import logging

import pytest
from guihelpers import visible_dialogs
from guihelpers import closed_port, gui_settings, start_gui, storescp_peer, wait_job  # noqa: F401
from pydicom import dcmread
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QApplication, QMenu

from osirix_py.dicom.tags import Level
from osirix_py.gui.browser import BrowserWindow
from osirix_py.gui.notify import set_server_mode
from osirix_py.gui.sendto import SendToMenu, transfers_for
from osirix_py.services.nodes import Node

pytestmark = pytest.mark.peers


@pytest.fixture
def gui(qapp, demo_settings):
    """The desktop application over a copy of the demo study (CT 60 + MR 24 images)."""
    g = start_gui(gui_settings(demo_settings.data_dir))
    yield g
    g.shutdown()
    set_server_mode(False)


def _select(qtbot, w: BrowserWindow, level: Level, pred) -> list:
    qtbot.waitUntil(lambda: any(n.level is level for n in w.model.iter_nodes()), timeout=10000)
    w.tree.expandAll()
    nodes = [n for n in w.model.iter_nodes() if n.level is level and pred(n)]
    assert nodes
    w.tree.clearSelection()
    sm = w.tree.selectionModel()
    for n in nodes:
        idx = w.model.createIndex(n.pos, 0, n)
        sm.select(idx, sm.SelectionFlag.Select | sm.SelectionFlag.Rows)
    return nodes


def _action(menu: QMenu, name: str):
    menu.rebuild()
    found = [a for a in menu.actions() if a.objectName() == f"sendTo:{name}"]
    assert found, [a.text() for a in menu.actions()]
    return found[0]


def _received_uids(scp) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in scp.out_dir.rglob("*") if p.is_file()}


def test_send_series_from_menu(qtbot, gui, storescp_peer):  # noqa: F811
    scp = storescp_peer
    ctx, w = gui.ctx, gui.window
    ctx.nodes.add(Node("Store SCP", scp.aet, "127.0.0.1", scp.port, description="dcmtk"))
    # The menu is in File and in the tree's context menu; it lists the locations.
    file_menu = w.menuBar().actions()[0].menu()
    assert w.send_menu.menuAction() in file_menu.actions()
    assert w.send_menu.title().replace("&", "") == "Send To"
    _select(qtbot, w, Level.SERIES, lambda n: n.row.get("Modality") == "MR")
    assert w.send_menu.isEnabled()
    mr_uid = ctx.archive.find(Level.SERIES, {"Modality": "MR"})[0]["SeriesInstanceUID"]
    expected = {r["SOPInstanceUID"] for r in ctx.archive.find(Level.IMAGE, {"SeriesInstanceUID": mr_uid})}
    assert len(expected) == 24

    with qtbot.waitSignal(w.send_menu.sendStarted, timeout=5000) as blocker:
        _action(w.send_menu, "Store SCP").trigger()
    job = blocker.args[0]
    assert job in ctx.jobs.jobs() and w.activity_dock.isVisible()
    assert job.title.startswith("Send series 2") and job.title.endswith("to Store SCP")
    wait_job(qtbot, job)
    assert job.state == "done", job.errors
    assert (job.done, job.total) == (24, 24) and not job.errors
    assert "24 image(s) sent" in job.status
    qtbot.waitUntil(lambda: _received_uids(scp) == expected, timeout=10000)
    # The runtime's job manager recorded it.
    assert any(h["kind"] == "send" and h["state"] == "done" for h in gui.runtime.jobs.history())


def test_send_study_and_patient_selection(qtbot, gui, storescp_peer):  # noqa: F811
    scp = storescp_peer
    ctx, w = gui.ctx, gui.window
    ctx.nodes.add(Node("Store SCP", scp.aet, "127.0.0.1", scp.port))
    # A patient and one of its series selected: the patient (its study) goes, once.
    nodes = _select(qtbot, w, Level.PATIENT, lambda n: True)
    series = [n for n in w.model.iter_nodes() if n.level is Level.SERIES]
    sm = w.tree.selectionModel()
    sm.select(w.model.createIndex(series[0].pos, 0, series[0]), sm.SelectionFlag.Select | sm.SelectionFlag.Rows)
    transfers, what = transfers_for(w.selected_nodes())
    assert len(transfers) == 1 and transfers[0].series_uid is None
    assert what == "patient Demo, Patient"
    job = w.send_menu.send_to(ctx.nodes.get("Store SCP"))
    wait_job(qtbot, job, timeout=60000)
    assert job.state == "done", job.errors
    assert (job.done, job.total) == (84, 84)
    qtbot.waitUntil(lambda: len(_received_uids(scp)) == 84, timeout=20000)
    assert nodes


def test_send_without_runtime(qtbot, ctx, storescp_peer):  # noqa: F811
    """A bare context (no runtime) sends through the client directly."""
    scp = storescp_peer
    ctx.nodes.add(Node("Store SCP", scp.aet, "127.0.0.1", scp.port))
    w = BrowserWindow(ctx)
    qtbot.addWidget(w)
    _select(qtbot, w, Level.SERIES, lambda n: n.row.get("Modality") == "MR")
    _action(w.send_menu, "Store SCP").trigger()
    qtbot.waitUntil(lambda: ctx.jobs.jobs() and ctx.jobs.jobs()[0].is_finished, timeout=30000)
    job = ctx.jobs.jobs()[0]
    assert job.state == "done", job.errors
    assert job.done == 24
    qtbot.waitUntil(lambda: len(_received_uids(scp)) == 24, timeout=10000)


def test_send_to_unreachable_location(qtbot, gui, dialogs):
    ctx, w = gui.ctx, gui.window
    port = closed_port()
    ctx.nodes.add(Node("Gone", "NOBODY", "127.0.0.1", port))
    _select(qtbot, w, Level.SERIES, lambda n: n.row.get("Modality") == "MR")
    with qtbot.waitSignal(w.send_menu.sendStarted, timeout=5000) as blocker:
        _action(w.send_menu, "Gone").trigger()
    job = wait_job(qtbot, blocker.args[0])
    assert job.state == "failed"
    assert "cannot be reached" in job.errors[-1] and f"port {port}" in job.errors[-1]
    assert "Technical details" in job.errors[-1]  # the Activity panel has both
    level, title, text = dialogs.boxes[-1]
    assert title == "Send failed" and "cannot be reached" in text and "Technical" not in text
    assert not dialogs.dialogs
    # The Activity panel shows the message for the selected job.
    w.activity.table.selectRow(0)
    assert "cannot be reached" in w.activity.errors.toPlainText()


def test_send_in_server_mode_opens_no_dialog(qtbot, gui, no_dialogs, caplog):
    caplog.set_level(logging.INFO, logger="osirix_py.gui")
    ctx, w = gui.ctx, gui.window
    ctx.nodes.add(Node("Gone", "NOBODY", "127.0.0.1", closed_port()))
    _select(qtbot, w, Level.STUDY, lambda n: True)
    w.set_server_mode(True)
    job = wait_job(qtbot, w.send_menu.send_to(ctx.nodes.get("Gone")))
    assert job.state == "failed"
    assert not visible_dialogs(QApplication.instance())
    assert not [x for x in QApplication.topLevelWidgets() if x.isVisible()]
    logged = [r.getMessage() for r in caplog.records if r.name == "osirix_py.gui"]
    assert any(m.startswith("Send failed: ") and "cannot be reached" in m for m in logged)


def test_menu_without_locations_or_selection(qtbot, ctx):
    w = BrowserWindow(ctx)
    qtbot.addWidget(w)
    menu = SendToMenu(ctx, lambda: [], w)
    texts = [a.text() for a in menu.actions() if not a.isSeparator()]
    assert texts == ["No locations yet", "Locations\u2026"]
    ctx.nodes.add(Node("PACS", "MAIN_PACS", "127.0.0.1", 104))
    menu.rebuild()
    a = [a for a in menu.actions() if a.objectName() == "sendTo:PACS"][0]
    assert not a.isEnabled()  # nothing selected
    assert menu.send_to(ctx.nodes.get("PACS")) is None
    assert ctx.jobs.jobs() == []


def test_cancel_a_send_from_activity(qtbot, gui, storescp_peer):  # noqa: F811
    scp = storescp_peer
    ctx, w = gui.ctx, gui.window
    ctx.nodes.add(Node("Store SCP", scp.aet, "127.0.0.1", scp.port))
    _select(qtbot, w, Level.STUDY, lambda n: True)
    job = w.send_menu.send_to(ctx.nodes.get("Store SCP"))
    assert w.activity.selected_job() is job and w.activity.cancel_button.isEnabled()
    qtbot.mouseClick(w.activity.cancel_button, Qt.MouseButton.LeftButton)
    wait_job(qtbot, job)
    assert job.state == "cancelled", (job.state, job.errors)
    # The runtime's send stopped too (C-STORE of the rest not attempted), no message box.
    mj = [h for h in gui.runtime.jobs.history() if h["kind"] == "send"][0]
    assert mj["state"] in ("cancelled", "done")
    assert len(_received_uids(scp)) <= 84
