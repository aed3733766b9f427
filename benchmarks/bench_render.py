"""3D viewer benchmarks: volume rendering while dragging / at rest, and MPR updates (issue #7).

A synthetic 512x512x300 int16 CT-like chest (``--quick``: 256x256x150) in a
512x512 view (``--quick``: 256x256), on whatever OpenGL this machine has
(Mesa llvmpipe here, so the renderer picks the CPU ray caster):

* ``render-3d``: the time to the first 3D frame after opening (ours: a
  subsampled preview while the ray caster's tables wait; target ~2 s) and to
  the first full-quality one; frames per second while the mouse drags (the
  renderer's interactive mode; target >= 10 fps) and the time to the
  full-quality frame after the release (target <= 2 s), for composite
  rendering (CT Bone preset) and 3D MIP (numpy shear-warp; the CPU ray
  caster's time for the same frame is in the note), in an oblique view.
  Peer: a plain VTK pipeline -- ``vtkSmartVolumeMapper`` with its defaults
  and the same transfer functions, i.e. what one gets without the adaptive
  mapper.
* ``render-mpr``: the MPR update after a crosshair move in the axial view (the two
  other planes are resliced), orthogonal and oblique, trilinear (the picture at
  rest) and nearest-neighbour (what the views show while the mouse drags);
  target <= 30 ms.
  Peer: the imaging core's numpy ``reslice`` of the same two planes.

Run with the harness (``python -m benchmarks --only render-3d,render-mpr [--quick]``)
or alone (``python benchmarks/bench_render.py [--quick]``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):  # run as a script: the harness imports this file as a module
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.harness import Row, Target

    def register(name, description=""):  # noqa: ARG001 - the module copy registers
        return lambda func: func
else:
    from .harness import Row, Target, register

_CACHE: dict = {}


def chest_volume(shape=(300, 512, 512), spacing=(1.0, 0.7, 0.7)):
    """A CT-like chest: body, lungs, spine, ribs-like rods, an aorta, contrast; mild noise (HU, int16)."""
    key = (shape, spacing)
    if key in _CACHE:
        return _CACHE[key]
    from osirix_py.imaging.volume import Volume

    s, r, c = shape
    dz, dy, dx = spacing
    y = (np.arange(r) - (r - 1) / 2) * dy
    x = (np.arange(c) - (c - 1) / 2) * dx
    yy, xx = np.meshgrid(y, x, indexing="ij")
    sl = np.full((r, c), -1000, np.int16)
    sl[(xx / 160) ** 2 + (yy / 115) ** 2 <= 1] = 40  # body
    sl[((np.abs(xx) - 70) / 55) ** 2 + ((yy + 5) / 75) ** 2 <= 1] = -850  # lungs
    sl[(xx / 18) ** 2 + ((yy - 80) / 18) ** 2 <= 1] = 700  # vertebral body
    sl[(xx / 14) ** 2 + ((yy - 25) / 14) ** 2 <= 1] = 250  # aorta (contrast)
    ang = np.arctan2(yy, xx)
    rad = np.sqrt((xx / 160) ** 2 + (yy / 115) ** 2)
    sl[(rad > 0.86) & (rad < 0.93) & (np.cos(ang * 12) > 0.6)] = 900  # ribs
    vol = np.empty(shape, np.int16)
    z = (np.arange(s) - (s - 1) / 2) * dz
    rng = np.random.default_rng(7)
    noise = rng.integers(-15, 16, size=(r, c), dtype=np.int16)
    for k in range(s):
        vol[k] = sl
        vol[k] += np.roll(noise, k * 7, axis=1)
        if abs(z[k]) < 40:  # a contrast-filled ball (a heart-like blob)
            rr = np.sqrt(40 ** 2 - z[k] ** 2)
            vol[k][((xx + 30) ** 2 + (yy + 10) ** 2) <= rr ** 2] = 180
    aff = np.diag([dx, dy, dz, 1.0])
    aff[:3, 3] = (-(c - 1) / 2 * dx, -(r - 1) / 2 * dy, -(s - 1) / 2 * dz)
    v = Volume(vol, aff, modality="CT", units="HU")
    _CACHE.clear()
    _CACHE[key] = v
    return v


def _load() -> str:
    """The machine's load when a row was measured (other processes share the cores)."""
    try:
        import os

        return f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    except (OSError, AttributeError):
        return ""


def _sizes(ctx):
    quick = bool(getattr(ctx, "quick", False))
    return ((150, 256, 256), (1.0, 1.4, 1.4), 256) if quick else ((300, 512, 512), (1.0, 0.7, 0.7), 512)


def _plain_vtk(vol, renderer, size):
    """The peer: vtkSmartVolumeMapper with defaults, the same TFs, the same camera."""
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkVolume
    from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkSmartVolumeMapper

    win = vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(size, size)
    ren = vtkRenderer()
    win.AddRenderer(ren)
    m = vtkSmartVolumeMapper()
    m.SetInputData(renderer.vtk.local)
    m.SetBlendMode(renderer.mapper.GetBlendMode())
    prop = vtkVolume()
    prop.SetMapper(m)
    prop.SetProperty(renderer.property)
    prop.SetUserMatrix(renderer.prop.GetUserMatrix())
    ren.AddVolume(prop)
    ren.SetActiveCamera(renderer.camera)
    return win, ren


def _fps(render, rotate, frames):
    times = []
    for _ in range(frames):
        rotate()
        t0 = time.perf_counter()
        render()
        times.append(time.perf_counter() - t0)
    return len(times) / sum(times), times


@register("render-3d", "volume rendering: time to the first frame, fps while dragging, full-quality frame")
def bench_render(ctx):
    from osirix_py.render import VolumeRenderer

    shape, spacing, view = _sizes(ctx)
    vol = chest_volume(shape, spacing)
    label = f"{shape[2]}x{shape[1]}x{shape[0]} in {view}x{view}"
    rows = []
    # time to the first 3D frame after opening: renderer + window + first picture (CT Bone).  Ours:
    # the subsampled preview while the ray caster's per-voxel tables wait for the next frame.
    t0 = time.perf_counter()
    r = VolumeRenderer(vol, size=(view, view), preset="ct-bone")
    r.render()
    first = time.perf_counter() - t0
    first_kind = r.last_frame_kind
    t1 = time.perf_counter()
    while r.needs_refine:
        r.render()
    first_full = time.perf_counter() - t0
    refine = time.perf_counter() - t1
    gl = r.gl.get("renderer", "?")
    ctx.say(f"renderer: {r.describe()}; first frame {first:.2f} s ({first_kind}), full {first_full:.2f} s")
    # the peer's first frame: a fresh window with vtkSmartVolumeMapper on the same volume, same TFs
    t0 = time.perf_counter()
    pwin, _ren = _plain_vtk(vol, r, view)
    pwin.Render()
    peer_first = time.perf_counter() - t0
    pwin.Finalize()
    rows.append(Row("render-3d", f"time to the first 3D frame after opening, CT Bone, {label}", "s", first,
                    peer=peer_first, peer_name="vtkSmartVolumeMapper", higher_is_better=False,
                    target=Target.at_most(2.0, "s"),
                    note=f"ours: {first_kind} (1 voxel in {r.preview_factor()} along each axis); the "
                         f"full-quality frame follows after {refine:.1f} s more (ray caster's gradient tables); "
                         f"{_load()}"))
    rows.append(Row("render-3d", f"time to the first full-quality 3D frame, CT Bone, {label}", "s", first_full,
                    peer=peer_first, peer_name="vtkSmartVolumeMapper", higher_is_better=False,
                    note="preview + full frame, as the window draws them"))
    drag_frames = ctx.size(30, 15)
    for mode in ("composite", "mip"):
        if mode == "mip":
            r.set_preset("mip")
        else:
            r.set_preset("ct-bone")
        r.reset_camera()
        r.rotate(30, 15)  # an oblique view (axis-aligned ones are the easy case)
        r.render()  # warm (the mapper's per-volume tables for this TF)
        fps_runs, full_runs = [], []
        for _ in range(ctx.repeat):
            r.begin_interaction()
            r.render()  # the first interactive frame calibrates the sample distance
            fps, _t = _fps(r.render, lambda: r.rotate(4, 1), drag_frames)
            fps_runs.append(fps)
            r.end_interaction()
            t0 = time.perf_counter()
            r.render()
            full_runs.append(time.perf_counter() - t0)
        note_extra = ""
        if mode == "mip" and r.uses_projection():
            # what the CPU ray caster takes for the same full-quality MIP (before the shear-warp path)
            r.fast_projection = False
            r.render()
            ray = []
            for _ in range(max(1, ctx.repeat)):
                t0 = time.perf_counter()
                r.render()
                ray.append(time.perf_counter() - t0)
            r.fast_projection = True
            note_extra = f"; numpy shear-warp -- the CPU ray caster takes {ctx.median(ray):.2f} s for this frame"
        # the peer: plain VTK (smart mapper), same TF and camera
        win, _ren = _plain_vtk(vol, r, view)
        t0 = time.perf_counter()
        win.Render()
        peer_first_mode = time.perf_counter() - t0
        peer_fps, _ = _fps(win.Render, lambda: r.camera.Azimuth(1.0), ctx.size(2, 3))
        t0 = time.perf_counter()
        win.Render()
        peer_still = time.perf_counter() - t0
        win.Finalize()
        name = "composite CT Bone" if mode == "composite" else "3D MIP"
        rows.append(Row("render-3d", f"fps while dragging, {name}, {label}", "fps", ctx.median(fps_runs),
                        peer=peer_fps, peer_name="vtkSmartVolumeMapper", higher_is_better=True,
                        target=Target.at_least(10, "fps"), samples=fps_runs,
                        note=f"{r.mapper_kind} ray caster{note_extra and ' / shear-warp'}, {gl}; {_load()}"))
        rows.append(Row("render-3d", f"full-quality frame after release, {name}", "s", ctx.median(full_runs),
                        peer=peer_still, peer_name="vtkSmartVolumeMapper", higher_is_better=False,
                        target=Target.at_most(2.0, "s"), samples=full_runs,
                        note=f"peer's first frame {peer_first_mode:.2f} s{note_extra}"))
    r.close()
    return rows


@register("render-mpr", "MPR update after a crosshair move (2 planes resliced), VTK vs numpy")
def bench_mpr(ctx):
    from osirix_py.imaging.reslice import reslice
    from osirix_py.render import MprEngine

    shape, spacing, _view = _sizes(ctx)
    vol = chest_volume(shape, spacing)
    label = f"{shape[2]}x{shape[1]}x{shape[0]}"
    rows = []
    for oblique, interactive in ((False, False), (True, False), (True, True)):
        eng = MprEngine(vol)
        eng.set_interactive(interactive)
        if oblique:
            eng.rotate("axial", 30.0)
            eng.rotate("coronal", 20.0)
        eng.images()
        moves = ctx.size(20, 10)
        ours, peer = [], []
        for i in range(moves):
            col, row = eng.crosshair_pixel("axial")
            eng.set_crosshair_from_view("axial", col + (3 if i % 2 else -2), row + (2 if i % 2 else -3))
            t0 = time.perf_counter()
            a = eng.image("coronal")
            b = eng.image("sagittal")
            ours.append(time.perf_counter() - t0)
            pc, ps = eng.plane("coronal"), eng.plane("sagittal")
            t0 = time.perf_counter()
            order = 0 if interactive else 1
            ra = reslice(vol, pc, order=order)
            rb = reslice(vol, ps, order=order)
            peer.append(time.perf_counter() - t0)
            assert a.shape == ra.shape and b.shape == rb.shape
        kind = ("oblique" if oblique else "orthogonal") + (" while dragging (nearest)" if interactive else "")
        pc = eng.plane("coronal")
        rows.append(Row("render-mpr", f"MPR update after a crosshair move, {kind}, {label}", "ms",
                        ctx.median(ours) * 1e3, peer=ctx.median(peer) * 1e3, peer_name="numpy reslice",
                        higher_is_better=False, target=Target.at_most(30, "ms"),
                        samples=[t * 1e3 for t in ours], peer_samples=[t * 1e3 for t in peer],
                        note=f"2 planes of {pc.rows}x{pc.columns}, "
                             f"{'nearest' if interactive else 'trilinear'}; {_load()}"))
    return rows


def main(argv: list[str] | None = None) -> int:
    from benchmarks.harness import main as harness_main

    args = list(sys.argv[1:] if argv is None else argv)
    return harness_main(["--only", "render-3d,render-mpr", *args])


if __name__ == "__main__":
    raise SystemExit(main())
