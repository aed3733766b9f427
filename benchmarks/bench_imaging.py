"""Imaging benchmarks: window/level, oblique reslice, MIP slab, volume loading.

Plain functions that return numbers.  Each takes either nothing, a repeat
count, or the harness context (``benchmarks.harness.Context``, from which the
repeat count and the ``--quick`` size are taken), and returns a dict with
``seconds`` (median of the repeats) plus the fields the harness shows
(``value`` in ms, ``unit``, ``target``, ``note``).  Run this file directly for
a JSON dump of all of them.

Targets (issue text): W/L of a 512x512 slice to 8 bits in about a
millisecond; an oblique 512x512 reslice of a 512x512x1000 int16 volume in at
most 30 ms; a 20-slice MIP slab "fast".  Volume loading has no target here;
its SimpleITK comparison lives in the harness.
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np

from osirix_py.dicom.pixels import Window, apply_window
from osirix_py.imaging import Volume, load_volume, oblique_plane, reslice, slab

_CACHE: dict[str, Any] = {}


def _repeats(arg: Any, default: int) -> tuple[int, bool]:
    """(repeat count, quick) from an int, a harness Context, or None."""
    if arg is None:
        return default, False
    if isinstance(arg, int):
        return max(1, arg), False
    rep = getattr(arg, "repeat", None)
    quick = bool(getattr(arg, "quick", False))
    return max(default, int(rep or default)), quick


def _timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _result(name: str, times: list[float], target_ms: float | None = None, **extra: Any) -> dict:
    med = statistics.median(times)
    d: dict[str, Any] = {
        "name": name,
        "seconds": med,
        "value": med * 1e3,
        "unit": "ms",
        "higher_is_better": False,
        "samples": [t * 1e3 for t in times],
    }
    if target_ms is not None:
        d["target"] = float(target_ms)
    d.update(extra)
    return d


def _ct_like_volume(slices: int, size: int = 512) -> Volume:
    """A int16 volume with CT-like values (a water disc in air with noise), built slice by slice."""
    key = f"vol-{slices}-{size}"
    vol = _CACHE.get(key)
    if vol is not None:
        return vol
    _CACHE.clear()
    gc.collect()
    yy, xx = np.mgrid[0:size, 0:size]
    disc = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2) < (0.4 * size) ** 2
    base = np.where(disc, 40, -1000).astype(np.int16)
    rng = np.random.default_rng(0)
    noise = rng.integers(-20, 21, size=(8, size, size), dtype=np.int16)
    arr = np.empty((slices, size, size), np.int16)
    for k in range(slices):
        np.add(base, noise[k % 8], out=arr[k])
    vol = Volume(arr, np.diag([0.7, 0.7, 0.7, 1.0]), modality="CT", units="HU",
                 value_range=(-1020.0, 60.0))
    _CACHE[key] = vol
    return vol


def bench_window_level(arg: Any = None) -> dict:
    """W/L of a 512x512 int16 slice to 8 bits (LUT + np.take)."""
    repeats, _ = _repeats(arg, 200)
    arr = np.random.default_rng(1).integers(-1024, 3071, size=(512, 512)).astype(np.int16)
    out = np.empty((512, 512), np.uint8)
    w = Window(40, 400)
    times = _timed(lambda: apply_window(arr, w, out=out), repeats, warmup=3)
    # a drag: a new window (new LUT) every call
    windows = [Window(40 + i, 400 + 2 * i) for i in range(repeats)]
    it = iter(windows * 2)
    drag = _timed(lambda: apply_window(arr, next(it), out=out), repeats, warmup=0)
    return _result("W/L 512x512 int16 -> uint8", times, 1.0,
                   note=f"new window each call: {statistics.median(drag) * 1e3:.2f} ms")


def bench_reslice_oblique(arg: Any = None, slices: int | None = None) -> dict:
    """Oblique 512x512 trilinear reslice of a 512x512xN int16 volume (N=1000; 300 quick)."""
    repeats, quick = _repeats(arg, 10)
    n = slices or (300 if quick else 1000)
    vol = _ct_like_volume(n)
    plane = oblique_plane(vol, None, [0.3, 0.2, 0.93], spacing=0.7, size=512)
    times = _timed(lambda: reslice(vol, plane), repeats, warmup=2)
    nearest = _timed(lambda: reslice(vol, plane, order=0), max(3, repeats // 2), warmup=1)
    return _result(f"oblique reslice 512x512 of 512x512x{n} int16", times, 30.0,
                   note=f"nearest neighbour: {statistics.median(nearest) * 1e3:.1f} ms")


def bench_mip_slab(arg: Any = None, slices: int | None = None) -> dict:
    """20-slice MIP slab (axial, along the acquisition axis) of 512x512 slices."""
    repeats, quick = _repeats(arg, 20)
    n = slices or (300 if quick else 1000)
    vol = _ct_like_volume(n)
    plane = vol.slice_plane(n // 2)
    thickness = 20 * vol.slice_spacing - 1e-3  # covers exactly 20 slices... centred: 19 or 20
    times = _timed(lambda: slab(vol, plane, thickness, "mip"), repeats, warmup=2)
    return _result("MIP slab of 20 slices 512x512 (axis-aligned)", times, 5.0)


def bench_mip_slab_oblique(arg: Any = None, slices: int | None = None) -> dict:
    """14 mm (20 samples) oblique MIP slab, 512x512, trilinear."""
    repeats, quick = _repeats(arg, 3)
    n = slices or (300 if quick else 1000)
    vol = _ct_like_volume(n)
    plane = oblique_plane(vol, None, [0.3, 0.2, 0.93], spacing=0.7, size=512)
    times = _timed(lambda: slab(vol, plane, 14.0, "mip", step=0.7), repeats, warmup=1)
    return _result("oblique MIP slab 14 mm (20 planes) 512x512", times)


def _series_for_load(arg: Any, slices: int) -> list[Path]:
    """A 512x512 CT series on disk: the harness's cached set when available, else generated."""
    try:
        from benchmarks.data import ct_series

        fs = ct_series(2, 100)
        d = fs.series_dirs[0]
        files = sorted(p for p in d.iterdir() if p.suffix == ".dcm")
        if files:
            return files[:slices]
    except Exception:  # noqa: BLE001 - fall back to our own data
        pass
    key = f"series-{slices}"
    if key in _CACHE:
        return _CACHE[key]
    from osirix_py.dicom.synthetic import iter_ct_slices, write_series

    folder = Path(tempfile.mkdtemp(prefix="bench-imaging-"))
    paths = write_series(iter_ct_slices(slices=slices, rows=512, columns=512), folder)
    _CACHE[key] = paths
    return paths


def bench_load_volume(arg: Any = None, paths: list[Path] | None = None, workers: int | None = None) -> dict:
    """load_volume() of a 100-slice 512x512 CT series from files (page cache warm)."""
    repeats, _ = _repeats(arg, 3)
    files = list(paths) if paths is not None else _series_for_load(arg, 100)
    load_volume(files, workers=workers)  # warm the page cache
    times = []
    for _ in range(repeats):
        gc.collect()
        t = time.perf_counter()
        vol = load_volume(files, workers=workers)
        times.append(time.perf_counter() - t)
        del vol
    gc.collect()
    tracemalloc.start()
    vol = load_volume(files, workers=workers)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    voxels = vol.nbytes
    med = statistics.median(times)
    return _result(f"load_volume {len(files)} x 512x512 CT files", times,
                   slices=len(files), slices_per_second=len(files) / med,
                   voxel_mib=voxels / 2**20, peak_traced_mib=peak / 2**20,
                   note=f"{len(files) / med:.0f} slices/s; traced peak {peak / voxels:.2f}x the voxel bytes")


def main() -> None:
    out = {}
    for fn in (bench_window_level, bench_reslice_oblique, bench_mip_slab, bench_mip_slab_oblique,
               bench_load_volume):
        r = fn()
        r.pop("samples", None)
        out[fn.__name__] = r
    print(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
