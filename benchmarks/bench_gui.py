"""``gui``: the 2D viewer on the offscreen Qt platform (issue #6 targets).

Three figures, each measured in a fresh child process (``QT_QPA_PLATFORM=offscreen``)
over an archive that indexes a generated 512x512 CT series in place
(1,000 slices; 100 with ``--quick``):

- *first image*: from "open series" (constructing the viewer window, as a
  double-click in the browser does) to the first painted image, beside the
  floor of any viewer: read one file, decode it, window it and wrap it in a
  QImage.  Target <= 0.5 s.  The row notes how many slices were decoded at
  that moment (the rest load in the background).
- *scroll fps*: wheel events through the whole series, each followed by a
  synchronous ``repaint()`` (wall time per frame), once the series is loaded.
- *W/L drag fps*: right-button drag, one ``QMouseEvent`` plus ``repaint()``
  per frame.

The peer of both rates is the raw numpy floor of one frame: a 65,536-entry
LUT through ``np.take`` into a QImage (for W/L the LUT is rebuilt for every
frame as the window changes).  Targets: >= 60 fps.

A fourth row (no target in the issue) times the MPR layout: dragging the
cross in the axial view, each frame moves the coronal and sagittal planes
and repaints all three views; beside it the imaging core alone doing the same
work without painting (``reslice`` of the two moved planes + window).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import data
from .harness import Context, Row, Target, register

_CHILD = r"""
import json, os, sys, time
os.environ["QT_QPA_PLATFORM"] = "offscreen"
mode, data_dir, uid = sys.argv[1], sys.argv[2], sys.argv[3]
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent, QWheelEvent
from PySide6.QtWidgets import QApplication
app = QApplication([])
import numpy as np
from osirix_py.config import load_settings
from osirix_py.services.factory import open_archive
from osirix_py.gui.context import AppContext
from osirix_py.gui.viewer import ViewerWindow
settings = load_settings(data_dir=data_dir, environ={})
archive = open_archive(settings)
ctx = AppContext(settings, archive)
archive.find("SERIES", {"SeriesInstanceUID": uid})  # connection pool and statement cache warm
out = {}

def mouse(view, kind, p, button, buttons):
    # A mouse event of *kind* at *p* to *view* (*button* pressed or released; none for a move).
    ev = QMouseEvent(kind, p, view.mapToGlobal(p), button if kind != QMouseEvent.Type.MouseMove
                     else Qt.MouseButton.NoButton, buttons, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(view, ev)


def wait_loaded(view, timeout=600):
    t0 = time.perf_counter()
    n = len(view.stack)
    while view.stack.decoded_count() < n and time.perf_counter() - t0 < timeout:
        app.processEvents()
        time.sleep(0.005)
    app.processEvents()
    return time.perf_counter() - t0

if mode == "first":
    t0 = time.perf_counter()
    win = ViewerWindow(ctx, uid)
    win.resize(1000, 860)
    win.show()
    view = win.view
    while view.frames_painted == 0:
        view.repaint()
        app.processEvents()
    out["seconds"] = time.perf_counter() - t0
    out["decoded_then"] = view.stack.decoded_count()
    out["slices"] = len(view.stack)
    out["full_load_s"] = out["seconds"] + wait_loaded(view)
elif mode == "floor-first":
    from osirix_py.dicom import pixels
    from osirix_py.dicom.tags import Level
    from osirix_py.gui.qimage import wrap_qimage
    import io, pydicom
    t0 = time.perf_counter()
    row = archive.find(Level.IMAGE, {"SeriesInstanceUID": uid, "InstanceNumber": 1})[0]
    ds = pydicom.dcmread(io.BytesIO(archive.read_instance(row)))
    stored = pixels.decode_frame(ds, 0)
    pipe = pixels.DisplayPipeline.from_dataset(ds)
    img8 = pipe.render(stored, pipe.default_window(stored))
    q = wrap_qimage(img8)
    out["seconds"] = time.perf_counter() - t0
elif mode in ("scroll", "wl"):
    win = ViewerWindow(ctx, uid)
    win.resize(1000, 860)
    win.show()
    view = win.view
    view.repaint()
    out["load_s"] = wait_loaded(view)
    n = len(view.stack)
    frames = int(sys.argv[4])
    times = []
    if mode == "scroll":
        view.set_index(0)
        view.repaint()
        pos = QPointF(view.width() / 2, view.height() / 2)
        gpos = view.mapToGlobal(pos)
        for i in range(frames):
            down = (i // (n - 1)) % 2 == 0
            t = time.perf_counter()
            ev = QWheelEvent(pos, gpos, QPoint(), QPoint(0, -120 if down else 120), Qt.MouseButton.NoButton,
                             Qt.KeyboardModifier.NoModifier, Qt.ScrollPhase.NoScrollPhase, False)
            QApplication.sendEvent(view, ev)
            view.repaint()
            app.processEvents()
            times.append(time.perf_counter() - t)
        out["last_index"] = view.index
    else:
        view.set_index(n // 2)
        view.repaint()
        c = QPointF(view.width() / 2, view.height() / 2)
        R = Qt.MouseButton.RightButton

        def send(kind, p, buttons):
            mouse(view, kind, p, R, buttons)

        send(QMouseEvent.Type.MouseButtonPress, c, R)
        w0 = view.window
        for i in range(frames):
            k = i % 200
            p = c + QPointF(k if k < 100 else 200 - k, -(k % 50))
            t = time.perf_counter()
            send(QMouseEvent.Type.MouseMove, p, R)
            view.repaint()
            app.processEvents()
            times.append(time.perf_counter() - t)
        send(QMouseEvent.Type.MouseButtonRelease, c, Qt.MouseButton.NoButton)
        out["window_changed"] = view.window != w0
    out["fps"] = len(times) / sum(times)
    times.sort()
    out["p95_ms"] = times[int(0.95 * (len(times) - 1))] * 1e3
    out["view"] = [view.width(), view.height()]
elif mode in ("mpr", "floor-mpr"):
    frames = int(sys.argv[4])
    win = ViewerWindow(ctx, uid)
    win.resize(1000, 860)
    win.show()
    view = win.view
    view.set_index(len(view.stack) // 2)
    view.repaint()
    t0 = time.perf_counter()
    mpr = win.show_mpr()
    while mpr.model.volume is None and mpr.loading:
        app.processEvents()
        time.sleep(0.005)
    out["volume_s"] = time.perf_counter() - t0
    if mpr.model.volume is None:
        raise SystemExit(f"no volume: {mpr.error}")
    app.processEvents()
    views = list(mpr.views.values())
    for v in views:
        v.repaint()
    ax = mpr.views["axial"]
    c = QPointF(ax.width() / 2, ax.height() / 2)
    L = Qt.MouseButton.LeftButton

    def send(kind, p, buttons):
        mouse(ax, kind, p, L, buttons)

    points = [c + QPointF((i % 60) - 30, ((i * 7) % 40) - 20) for i in range(frames)]
    times = []
    if mode == "mpr":
        send(QMouseEvent.Type.MouseButtonPress, c, L)
        for p in points:
            t = time.perf_counter()
            send(QMouseEvent.Type.MouseMove, p, L)
            for v in views:
                v.repaint()
            app.processEvents()
            times.append(time.perf_counter() - t)
        send(QMouseEvent.Type.MouseButtonRelease, c, Qt.MouseButton.NoButton)
    else:
        from osirix_py.dicom.pixels import apply_window
        from osirix_py.imaging.reslice import reslice
        vol, model = mpr.model.volume, mpr.model
        for p in points:
            pt = model.snap(ax.widget_to_patient(p))
            t = time.perf_counter()
            for name in ("coronal", "sagittal"):
                apply_window(reslice(vol, model.geometry[name].plane_at(pt), dtype=np.int16), model.window)
            times.append(time.perf_counter() - t)
    out["fps"] = len(times) / sum(times)
    times.sort()
    out["p95_ms"] = times[int(0.95 * (len(times) - 1))] * 1e3
    out["shape"] = list(mpr.model.volume.shape)
elif mode in ("floor-scroll", "floor-wl"):
    from osirix_py.dicom import pixels
    from osirix_py.gui.qimage import wrap_qimage
    frames = int(sys.argv[4])
    rng = np.random.default_rng(0)
    vol = rng.integers(-1024, 2000, size=(8, 512, 512), dtype=np.int16)
    pipe = pixels.DisplayPipeline(bits_stored=16, signed=True)
    t0 = time.perf_counter()
    for i in range(frames):
        w = pixels.Window(40.0 + (i if mode == "floor-wl" else 0), 400.0)
        lut = pipe._chain(np.arange(65536, dtype=np.uint16).view(np.int16), w, None) \
            if mode == "floor-wl" or i == 0 else lut
        img8 = np.take(lut, vol[i % 8].view(np.uint16))
        q = wrap_qimage(img8)
    out["fps"] = frames / (time.perf_counter() - t0)
for v in list(ctx.viewers):
    v.close()
ctx.close()
archive.close()
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)
"""


def _child(*args: str, timeout: float = 900) -> dict:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    env.pop("DISPLAY", None)
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", _CHILD, *args], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=str(root))
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"gui child {args[0]} failed (rc {res.returncode}): {' | '.join(tail)}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _archive_for(ctx: Context, slices: int) -> tuple[Path, str]:
    """A data dir indexing the generated series in place (made once, kept in the cache)."""
    fs = data.ct_series(1, slices)
    uid = fs.manifest["series"][0]["series_uid"]
    data_dir = ctx.cache / f"gui-archive-ct-1x{slices}"
    marker = data_dir / "ready.json"
    if not marker.is_file():
        import shutil

        from osirix_py.config import load_settings
        from osirix_py.services.factory import open_archive

        shutil.rmtree(data_dir, ignore_errors=True)
        ctx.say(f"gui: indexing {slices} slices in place into {data_dir} (once)")
        archive = open_archive(load_settings(data_dir=data_dir, environ={}))
        try:
            rep = archive.import_paths([fs.root / fs.manifest["series"][0]["dir"]], in_place=True)
            if rep.imported != slices:
                raise RuntimeError(f"indexing the GUI series: {rep.summary()}")
        finally:
            archive.close()
            archive.db.dispose()
        marker.write_text(json.dumps({"series_uid": uid, "slices": slices}))
    return data_dir, uid


@register("gui", "2D viewer (offscreen): first image, scroll and W/L-drag frame rates")
def bench_gui(ctx: Context) -> list[Row]:
    try:
        import PySide6.QtWidgets  # noqa: F401
    except ImportError:
        return [Row("gui", "2D viewer", error="not available: PySide6 is not installed")]
    slices = ctx.size(1000, 100)
    data_dir, uid = _archive_for(ctx, slices)
    d, u = str(data_dir), uid
    n_frames = ctx.size(1000, 300)
    rows: list[Row] = []

    first, floor_first, notes = [], [], []
    for _ in range(ctx.repeat):
        o = _child("first", d, u)
        first.append(o["seconds"])
        notes.append(o)
        floor_first.append(_child("floor-first", d, u)["seconds"])
        ctx.say(f"gui first image: {o['seconds'] * 1e3:.0f} ms ({o['decoded_then']}/{o['slices']} "
                f"slices decoded then; all in {o['full_load_s']:.1f} s)")
    last = notes[-1]
    rows.append(Row("gui", f"open {slices:,}-slice series -> first painted image", "s", ctx.median(first),
                    peer=ctx.median(floor_first), peer_name="floor: read+decode+window one file",
                    higher_is_better=False, target=Target.at_most(0.5, "s"),
                    note=f"{last['decoded_then']}/{last['slices']} decoded then, "
                         f"all loaded after {last['full_load_s']:.1f} s",
                    samples=first, peer_samples=floor_first))

    for mode, label in (("scroll", f"scroll {slices:,} slices 512x512"), ("wl", "W/L drag 512x512")):
        ours, floor, extra = [], [], {}
        for _ in range(ctx.repeat):
            o = _child(mode, d, u, str(n_frames))
            ours.append(o["fps"])
            extra = o
            floor.append(_child(f"floor-{mode}", d, u, str(n_frames))["fps"])
            ctx.say(f"gui {mode}: {o['fps']:.0f} fps (p95 {o['p95_ms']:.1f} ms, view {o['view']}), "
                    f"floor {floor[-1]:.0f} fps")
        rows.append(Row("gui", f"{label}, view {extra['view'][0]}x{extra['view'][1]} (fps)", "fps",
                        ctx.median(ours), peer=ctx.median(floor),
                        peer_name="floor: np.take LUT -> QImage" + (" + LUT rebuild" if mode == "wl" else ""),
                        higher_is_better=True, target=Target.at_least(60, "fps"),
                        note=f"p95 {extra['p95_ms']:.1f} ms/frame", samples=ours, peer_samples=floor))

    ours, floor, extra = [], [], {}
    n_mpr = ctx.size(300, 100)
    for _ in range(max(1, ctx.repeat - 1)):
        o = _child("mpr", d, u, str(n_mpr))
        ours.append(o["fps"])
        extra = o
        floor.append(_child("floor-mpr", d, u, str(n_mpr))["fps"])
        ctx.say(f"gui mpr: {o['fps']:.0f} fps (p95 {o['p95_ms']:.1f} ms, volume {o['shape']} built in "
                f"{o['volume_s']:.1f} s), core reslice alone {floor[-1]:.0f} fps")
    sh = extra["shape"]
    rows.append(Row("gui", f"MPR cross drag, {sh[2]}x{sh[1]}x{sh[0]}: 2 planes re-sliced, 3 views painted (fps)",
                    "fps", ctx.median(ours), peer=ctx.median(floor),
                    peer_name="imaging-core reslice() of the 2 planes + window, no painting",
                    higher_is_better=True,
                    note=f"p95 {extra['p95_ms']:.1f} ms/frame; volume built off the GUI thread in "
                         f"{extra['volume_s']:.1f} s", samples=ours, peer_samples=floor))
    return rows
