"""Preferences: listener settings applied to the runtime, locations, echo, database location."""

from __future__ import annotations

import tomllib

import pytest
from PySide6.QtWidgets import QDialog, QLineEdit

from osirix_py.gui.app import GuiApplication
from osirix_py.gui.preferences import NodeDialog, PreferencesDialog, config_path, listener_problem_text
from osirix_py.services.nodes import Node


@pytest.fixture
def gui(qtbot, demo_settings, dialogs):
    g = GuiApplication(demo_settings)
    assert g.start()
    assert g.wait_started(30)
    qtbot.waitUntil(lambda: g.runtime.listener.is_running(), timeout=10000)
    yield g
    g.shutdown()


def test_listener_settings_are_applied_and_saved(qtbot, gui, dialogs):
    from osirix_py.net.scu import echo_address

    prefs = PreferencesDialog(gui.ctx, gui.window)
    qtbot.addWidget(prefs)
    assert prefs.listener_status.text().startswith(f"Running: OSIRIXPY on 127.0.0.1:{gui.runtime.listener_port}")
    prefs.ae_title.setText("NEWAET")
    assert prefs.apply_listener()
    rt = gui.runtime
    assert rt.listener.is_running() and rt.ae_title == "NEWAET"
    assert echo_address("127.0.0.1", rt.listener_port, "NEWAET", calling_ae="T", timeout=5) >= 0
    saved = tomllib.loads(config_path(gui.ctx.settings).read_text())
    assert saved["listener"]["ae_title"] == "NEWAET"
    assert config_path(gui.ctx.settings) == gui.ctx.settings.data_dir / "config.toml"
    # Off, then a bad AE title: a message, nothing changes.
    prefs.enabled.setChecked(False)
    assert prefs.apply_listener() and not rt.listener.is_running()
    assert prefs.listener_status.text() == "Off"
    prefs.ae_title.setText("")
    assert not prefs.apply_listener()
    assert dialogs.boxes[-1][1] == "Listener"


def test_locations_add_edit_remove_and_echo(qtbot, gui, dialogs):
    ctx = gui.ctx
    prefs = PreferencesDialog(ctx, gui.window)
    qtbot.addWidget(prefs)
    d = NodeDialog(ctx.nodes, None, prefs)
    d.name.setText("self")
    d.ae.setText(gui.runtime.ae_title)
    d.host.setText("127.0.0.1")
    d.port.setValue(gui.runtime.listener_port)
    d.accept()
    assert d.result() == QDialog.DialogCode.Accepted
    prefs._reload_nodes()
    assert prefs.nodes_table.rowCount() == 1
    prefs.nodes_table.selectRow(0)
    assert prefs.selected_node().name == "self" and prefs.echo_button.isEnabled()
    with qtbot.waitSignal(prefs.echoFinished, timeout=15000) as sig:
        prefs.echo_selected()
    assert sig.args[1] is True and "echo OK" in prefs.echo_result.text()
    # A bad AE title is refused in the dialog itself (no box).
    bad = NodeDialog(ctx.nodes, prefs.selected_node(), prefs)
    bad.ae.setText("WAY_TOO_LONG_AE_TITLE_X")
    bad.ae.setMaxLength(64)
    bad.ae.setText("WAY_TOO_LONG_AE_TITLE_X")
    bad.accept()
    assert "AE title" in bad.error.text() and bad.result() != QDialog.DialogCode.Accepted
    # Rename through edit.
    e = NodeDialog(ctx.nodes, prefs.selected_node(), prefs)
    e.name.setText("myself")
    e.accept()
    assert [n.name for n in ctx.nodes.list()] == ["myself"]
    prefs._reload_nodes()
    prefs.nodes_table.selectRow(0)
    prefs.remove_node()  # confirmation answered Yes by the spy
    assert ctx.nodes.list() == [] and dialogs.boxes[-1][1] == "Remove Location"


def test_echo_failure_tells_the_user_once(qtbot, gui, dialogs):
    prefs = PreferencesDialog(gui.ctx, gui.window)
    qtbot.addWidget(prefs)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with qtbot.waitSignal(prefs.echoFinished, timeout=15000):
        prefs.echo_node(Node("gone", "GONE", "127.0.0.1", port))
    assert prefs.echo_result.text().startswith("\u2716")
    assert [b[1] for b in dialogs.boxes] == ["Echo failed"]


def test_database_tab_shows_the_location_read_only(qtbot, gui):
    prefs = PreferencesDialog(gui.ctx, gui.window)
    qtbot.addWidget(prefs)
    fields = [w for w in prefs.tabs.widget(2).findChildren(QLineEdit)]
    assert all(f.isReadOnly() for f in fields)
    assert str(gui.ctx.settings.data_dir) in [f.text() for f in fields]
    qtbot.waitUntil(lambda: "patient" in prefs.db_stats.text(), timeout=5000)
    assert prefs.db_stats.text().startswith("1 patient(s), 1 study(ies), 2 series, 84 image(s)")


def test_server_mode_button_switches_the_application(qtbot, gui):
    from osirix_py.gui.notify import is_server_mode, set_server_mode

    prefs = PreferencesDialog(gui.ctx, gui.window)
    qtbot.addWidget(prefs)
    prefs.serverModeRequested.connect(gui.window.set_server_mode)
    try:
        prefs.server_mode_button.click()
        assert is_server_mode() and not gui.window.isVisible()
    finally:
        gui.window.set_server_mode(False)
        set_server_mode(False)


def test_listener_problem_text_is_plain():
    t = listener_problem_text("cannot listen on 0.0.0.0:104: Permission denied", 104)
    assert "port 104" in t and "above 1024" in t
    t = listener_problem_text("something odd", 11112)
    assert "Reason: something odd" in t
