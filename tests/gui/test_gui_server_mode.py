"""Server mode: no window, no dialog of any kind; errors become log lines; the runtime serves."""

from __future__ import annotations

import logging
import socket

import pytest
from guihelpers import visible_dialogs
from PySide6.QtWidgets import QApplication

from osirix_py.dicom import synthetic
from osirix_py.dicom.tags import Level
from osirix_py.gui.app import GuiApplication
from osirix_py.gui.browser import BrowserWindow
from osirix_py.gui.importing import start_import
from osirix_py.gui.notify import is_server_mode, notify, set_server_mode
from osirix_py.gui.preferences import PreferencesDialog
from osirix_py.services.nodes import Node
from osirix_py.storage.base import StorageFullError


@pytest.fixture
def server_mode(qapp):
    set_server_mode(True)
    yield
    set_server_mode(False)


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_server_mode_errors_open_no_dialog(qtbot, ctx, tmp_path, no_dialogs, caplog):
    caplog.set_level(logging.INFO, logger="osirix_py.gui")
    w = BrowserWindow(ctx)
    qtbot.addWidget(w)
    w.show()
    viewer = w.open_series(ctx.archive.find(Level.SERIES)[0]["SeriesInstanceUID"])
    assert viewer.isVisible()
    w.set_server_mode(True)
    try:
        assert is_server_mode() and w.act_server.isChecked()
        assert not w.isVisible() and not viewer.isVisible()
        assert not [x for x in QApplication.topLevelWidgets() if x.isVisible()]

        # 1. A bad file imported (dropped or through the menu: the same job).
        bad = tmp_path / "bad"
        bad.mkdir()
        (bad / "readme.txt").write_text("no image here")
        good = synthetic.write_series(synthetic.make_ct_series(slices=1, rows=16, columns=16,
                                                               patient_id="SRV-1"), bad)
        (bad / "cut.dcm").write_bytes(good[0].read_bytes()[:200])
        job = start_import(ctx, [bad])
        qtbot.waitUntil(lambda: job.is_finished, timeout=10000)
        qtbot.wait(50)
        assert "Some files could not be imported" in caplog.text

        # 2. A peer that does not answer an echo.
        prefs = PreferencesDialog(ctx)
        with qtbot.waitSignal(prefs.echoFinished, timeout=15000) as sig:
            prefs.echo_node(Node("nowhere", "NOBODY", "127.0.0.1", _closed_port()))
        assert sig.args[1] is False
        assert "Echo failed" in caplog.text
        prefs.deleteLater()

        # 3. The disk is full during an import.
        def full(*a, **k):
            raise StorageFullError(28, "No space left on device")

        ctx.archive.store.put = full
        files = synthetic.write_series(synthetic.make_ct_series(slices=2, rows=16, columns=16,
                                                                patient_id="FULL-1"), tmp_path / "full")
        job = start_import(ctx, files)
        qtbot.waitUntil(lambda: job.is_finished, timeout=10000)
        qtbot.wait(50)
        assert job.result.failed == 2 and {f.kind for f in job.result.failures} == {"disk-full"}
        assert "The disk is full" in caplog.text

        # Menu actions that would open a dialog do nothing in server mode.
        for a in (w.act_import_files, w.act_import_folder, w.act_prefs, w.act_shortcuts, w.act_about):
            a.trigger()
        notify("error", "Any message", "goes to the log")
        assert "Any message: goes to the log" in caplog.text
        assert visible_dialogs(QApplication.instance()) == []
        assert not [x for x in QApplication.topLevelWidgets() if x.isVisible()]
    finally:
        w.set_server_mode(False)
    assert w.isVisible() and not is_server_mode()


def test_leaving_server_mode_shows_the_windows_again(qtbot, ctx):
    w = BrowserWindow(ctx)
    qtbot.addWidget(w)
    w.show()
    w.act_server.trigger()
    assert is_server_mode() and not w.isVisible()
    w.set_server_mode(False)
    assert not is_server_mode() and w.isVisible() and not w.act_server.isChecked()


def test_gui_application_in_server_mode_keeps_the_runtime_serving(qtbot, demo_settings, no_dialogs):
    from osirix_py.net.scu import echo_address

    gui = GuiApplication(demo_settings, server_mode=True)
    try:
        assert gui.start()
        assert gui.wait_started(30)
        qtbot.waitUntil(lambda: gui.runtime.listener.is_running(), timeout=10000)
        assert not gui.window.isVisible() and is_server_mode()
        rt = gui.runtime
        assert echo_address("127.0.0.1", rt.listener_port, rt.ae_title, calling_ae="TEST", timeout=5) >= 0
        assert rt.http_port and rt.health().ok
        qtbot.waitUntil(lambda: gui.window.model.generation > 0, timeout=10000)
        assert gui.window.model.counts()[Level.STUDY] == 1
    finally:
        gui.shutdown()
        set_server_mode(False)
    assert not gui.runtime.listener.is_running()


def test_busy_listener_port_gives_a_plain_message_and_a_usable_browser(qtbot, demo_settings, dialogs):
    from dataclasses import replace

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    settings = replace(demo_settings, listener=replace(demo_settings.listener, port=port))
    gui = GuiApplication(settings)
    try:
        assert gui.start()
        assert gui.wait_started(30)
        qtbot.waitUntil(lambda: bool(dialogs.boxes), timeout=10000)
        (icon, title, text), = dialogs.boxes
        assert title == "Receiving images is off"
        assert f"Another program is already using network port {port}" in text
        assert "You can still browse, import and view images" in text
        assert "Errno" not in text and "0.0.0.0" not in text
        # The rest works: the browser lists the archive, the web side runs.
        assert gui.window.isVisible()
        qtbot.waitUntil(lambda: gui.window.model.generation > 0, timeout=10000)
        assert gui.window.model.counts()[Level.SERIES] == 2
        assert gui.runtime.http_port and not gui.runtime.listener.is_running()
        assert gui.window.listener_label.text() == "DICOM listener: off"
    finally:
        gui.shutdown()
        blocker.close()


def test_run_gui_quits_cleanly(qtbot, demo_settings, no_dialogs):
    import osirix_py.gui.app as app_mod
    from PySide6.QtCore import QTimer

    started = []

    def later():
        started.append(app_mod.is_server_mode())
        QApplication.instance().quit()

    QTimer.singleShot(1500, later)
    root = logging.getLogger()
    before = list(root.handlers)
    level = root.level
    try:
        assert app_mod.run_gui(demo_settings, server_mode=True) == 0
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
                h.close()
        for h in before:
            if h not in root.handlers:
                root.addHandler(h)
        root.setLevel(level)
    assert started == [True] and not is_server_mode()
    assert (demo_settings.log_dir / "osirix-py.log").is_file()


def test_osirix_py_server_mode_command_runs_headless_and_stops_on_sigterm(tmp_path):
    """`osirix-py --server-mode` on a machine without a display: serves, then quits on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = tmp_path / "data"
    data.mkdir()
    (data / "config.toml").write_text('[listener]\nport = 0\nbind_address = "127.0.0.1"\n'
                                      '[http]\nport = 0\n')
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    proc = subprocess.Popen([sys.executable, "-m", "osirix_py", "--data-dir", str(data), "--server-mode"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_file = data / "logs" / "osirix-py.log"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if log_file.is_file() and "DICOM listener OSIRIXPY on port" in log_file.read_text():
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read()
        assert "DICOM listener OSIRIXPY on port" in log_file.read_text()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    text = log_file.read_text()
    assert "SIGTERM received: quitting" in text and "runtime stopped" in text


def test_desktop_mode_without_a_display_says_so(tmp_path):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    r = subprocess.run([sys.executable, "-m", "osirix_py", "--data-dir", str(tmp_path / "d")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no display" in r.stderr and "--server-mode" in r.stderr
