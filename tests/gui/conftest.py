"""Fixtures of the GUI tests (pytest-qt).

Qt runs on the ``offscreen`` platform when there is no display (set before
PySide6 is imported), or on the X server of ``xvfb-run``.  The demo study is
generated and imported once per session into a template data dir; every
test gets its own copy, so tests never share a database.
"""

from __future__ import annotations

import os
import shutil

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402

pytest.importorskip("PySide6.QtWidgets")
pytest.importorskip("pytestqt")

from PySide6.QtWidgets import QDialog, QFileDialog, QInputDialog, QMessageBox  # noqa: E402

from osirix_py.config import load_settings  # noqa: E402
from osirix_py.dicom import synthetic  # noqa: E402
from osirix_py.services.factory import open_archive  # noqa: E402


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    synthetic.demo_study(root)
    return root


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory, demo_files):
    """A data dir holding the imported demo study (imported once)."""
    data = tmp_path_factory.mktemp("template") / "data"
    archive = open_archive(load_settings(data_dir=data, environ={}))
    rep = archive.import_paths([demo_files])
    assert rep.imported == 84 and rep.failed == 0, rep.summary()
    archive.close()
    archive.db.dispose()
    return data


def _settings(data_dir):
    s = load_settings(data_dir=data_dir, environ={})
    # Tests never bind the well-known ports.
    from dataclasses import replace

    return replace(s, listener=replace(s.listener, port=0, bind_address="127.0.0.1"),
                   http=replace(s.http, port=0), connect_timeout=3.0)


@pytest.fixture
def demo_settings(tmp_path, demo_template):
    data = tmp_path / "data"
    shutil.copytree(demo_template, data)
    return _settings(data)


@pytest.fixture
def empty_settings(tmp_path):
    return _settings(tmp_path / "data")


def _make_ctx(settings):
    from osirix_py.gui.context import AppContext

    archive = open_archive(settings)
    ctx = AppContext(settings, archive, refresh_ms=100)
    return ctx


@pytest.fixture
def ctx(qapp, demo_settings):
    c = _make_ctx(demo_settings)
    yield c
    for v in list(c.viewers):
        v.close()
    c.close()
    c.archive.close()
    c.archive.db.dispose()


@pytest.fixture
def empty_ctx(qapp, empty_settings):
    c = _make_ctx(empty_settings)
    yield c
    c.close()
    c.archive.close()
    c.archive.db.dispose()


class DialogSpy:
    """Records message boxes instead of showing them (and fails on any other modal dialog)."""

    def __init__(self):
        self.boxes: list[tuple[str, str, str]] = []
        self.dialogs: list[str] = []


@pytest.fixture
def dialogs(monkeypatch):
    """Message boxes are recorded (answered OK / Yes); other modal dialogs are recorded too."""
    spy = DialogSpy()

    def box_exec(self):
        spy.boxes.append((self.icon().name, self.windowTitle(), self.text()))
        return QMessageBox.StandardButton.Yes if self.objectName() == "confirmBox" else QMessageBox.StandardButton.Ok

    def dialog_exec(self):
        spy.dialogs.append(type(self).__name__)
        return QDialog.DialogCode.Rejected

    monkeypatch.setattr(QMessageBox, "exec", box_exec)
    monkeypatch.setattr(QDialog, "exec", dialog_exec)
    return spy


@pytest.fixture
def no_dialogs(monkeypatch):
    """Any dialog, message box or file chooser fails the test."""

    def fail(*args, **kwargs):
        pytest.fail(f"a dialog was opened: {args[:2]!r}")

    for cls, names in ((QMessageBox, ("exec", "open", "show", "information", "warning", "critical",
                                      "question", "about")),
                       (QDialog, ("exec", "open", "show")),
                       (QFileDialog, ("getOpenFileNames", "getOpenFileName", "getExistingDirectory",
                                      "getSaveFileName")),
                       (QInputDialog, ("getText", "getInt", "getItem"))):
        for n in names:
            monkeypatch.setattr(cls, n, fail)
    yield

