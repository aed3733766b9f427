"""Save screenshots of the desktop application to docs/screenshots/*.png.

Run under a virtual X server (real fonts, real window system)::

    xvfb-run -a -s "-screen 0 1280x1024x24" .venv/bin/python tests/gui/screenshots.py

or without a display (``QT_QPA_PLATFORM=offscreen`` is set then).  The demo
study is generated into a temporary data dir; nothing of the user's is
touched.  Optional argument: the output folder.

The other pictures in docs/screenshots come from the tests that drive those
windows; they save into the folder named by ``OSIRIX_PY_SCREENSHOTS``::

    OSIRIX_PY_SCREENSHOTS=docs/screenshots bash scripts/test.sh tests/gui/test_gui_qr.py \
        tests/gui/test_gui_mpr.py tests/integration/test_web_viewer_browser.py
    .venv/bin/python tests/gui/test_gui_viewer3d.py docs/screenshots   # viewer3d*.png
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PySide6.QtCore import QPointF, Qt  # noqa: E402
from PySide6.QtGui import QMouseEvent  # noqa: E402
from PySide6.QtWidgets import QApplication  # noqa: E402


def spin(app: QApplication, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def wait_for(app, cond, timeout=20.0) -> None:
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise TimeoutError("the GUI did not get there in time")
        app.processEvents()
        time.sleep(0.01)


def send(widget, kind, pos, button=Qt.MouseButton.LeftButton):
    types = {"press": QMouseEvent.Type.MouseButtonPress, "move": QMouseEvent.Type.MouseMove,
             "release": QMouseEvent.Type.MouseButtonRelease}
    buttons = button if kind != "release" else Qt.MouseButton.NoButton
    ev = QMouseEvent(types[kind], QPointF(pos), widget.mapToGlobal(QPointF(pos)),
                     button if kind != "move" else Qt.MouseButton.NoButton, buttons,
                     Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, ev)


def drag(widget, a, b, button=Qt.MouseButton.LeftButton):
    send(widget, "press", a, button)
    for i in range(1, 6):
        send(widget, "move", a + (b - a) * (i / 5), button)
    send(widget, "release", b, button)


def _port(preferred: int) -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", preferred))
        return preferred
    except OSError:
        return 0
    finally:
        s.close()


def main(out: Path) -> int:
    from osirix_py.config import load_settings
    from osirix_py.dicom import synthetic
    from osirix_py.dicom.tags import Level
    from osirix_py.gui.app import GuiApplication
    from osirix_py.gui.importing import start_import
    from osirix_py.gui.preferences import PreferencesDialog
    from osirix_py.services.nodes import Node

    out.mkdir(parents=True, exist_ok=True)
    app = QApplication.instance() or QApplication(sys.argv[:1])
    tmp = Path(tempfile.mkdtemp(prefix="osirix-shots-"))
    synthetic.demo_study(tmp / "demo")
    synthetic.generate_archive(tmp / "more", patients=3)
    settings = load_settings(data_dir=tmp / "data", environ={})
    # The usual ports when they are free (they show in the status bar), else free ones.
    settings = replace(settings, listener=replace(settings.listener, port=_port(11112)),
                       http=replace(settings.http, port=_port(8080)))
    gui = GuiApplication(settings)
    if not gui.start():
        return 1
    gui.wait_started(30)
    spin(app, 0.5)
    ctx = gui.ctx
    archive = ctx.archive
    ctx.nodes.add(Node("PACS", "MAIN_PACS", "pacs.hospital.example", 104, description="Main archive"))
    ctx.nodes.add(Node("CT-1", "CT_SCANNER_1", "10.0.12.31", 104, description="CT room 1"))
    w = gui.window
    w.resize(1240, 820)
    job = start_import(ctx, [tmp / "demo", tmp / "more"])
    wait_for(app, lambda: job.is_finished)
    wait_for(app, lambda: w.model.counts()[Level.SERIES] >= 2)
    spin(app, 1.0)
    demo = next(n for n in w.model.iter_nodes() if n.level is Level.STUDY
                and n.row.get("StudyDescription") == "Demo phantom study")
    w.tree.expandAll()
    w.tree.setCurrentIndex(w.model.createIndex(demo.pos, 0, demo))
    wait_for(app, lambda: w.thumbs.count() == 2)
    w.activity_dock.hide()
    spin(app, 2.0)  # thumbnails
    w.grab().save(str(out / "browser.png"))

    ct_uid = archive.find(Level.SERIES, {"Modality": "CT", "PatientID": "DEMO-001"})[0]["SeriesInstanceUID"]
    v = w.open_series(ct_uid)
    v.resize(1100, 900)
    spin(app, 0.5)
    view = v.view
    view.set_index(30)
    view.fit()
    spin(app, 0.3)
    dec = view.stack.get(30)
    import numpy as np

    z = float(dec.plane.position[2])
    col, row, _ = dec.plane.patient_to_pixel(np.array([-20.0, -45.0, z]))[0]
    r = 18.0 / dec.plane.pixel_spacing[1]
    v.set_tool("ellipse")
    drag(view, view.image_to_widget(col + 0.5 - r, row + 0.5 - r), view.image_to_widget(col + 0.5 + r, row + 0.5 + r))
    c2, r2, _ = dec.plane.patient_to_pixel(np.array([35.0, 0.0, z]))[0]
    c3, r3, _ = dec.plane.patient_to_pixel(np.array([65.0, 0.0, z]))[0]
    v.set_tool("length")
    drag(view, view.image_to_widget(c2, r2 + 30), view.image_to_widget(c3, r3 + 30))
    v.set_tool("wl")
    view.selected = None
    send(view, "move", view.image_to_widget(col + 40, row + 60))
    spin(app, 0.5)
    v.grab().save(str(out / "viewer.png"))

    v.set_layout("layout_1x2")
    spin(app, 1.0)
    v.panes[0].view.set_index(40)
    spin(app, 0.5)
    v.grab().save(str(out / "viewer-1x2.png"))
    v.close()

    w.activity_dock.show()
    spin(app, 0.3)
    prefs = PreferencesDialog(ctx, w)
    prefs.tabs.setCurrentIndex(1)
    prefs.show()
    prefs.nodes_table.selectRow(0)
    spin(app, 0.5)
    prefs.grab().save(str(out / "preferences-locations.png"))
    prefs.tabs.setCurrentIndex(0)
    spin(app, 0.2)
    prefs.grab().save(str(out / "preferences-listener.png"))
    prefs.close()
    from osirix_py.gui.shortcuts import ShortcutsDialog

    sd = ShortcutsDialog(w)
    sd.show()
    spin(app, 0.3)
    sd.grab().save(str(out / "shortcuts.png"))
    sd.close()
    w.grab().save(str(out / "browser-activity.png"))
    gui.shutdown()
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots"))
