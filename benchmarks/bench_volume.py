"""``volume-load``: a CT series into a 3D array, osirix-py beside SimpleITK (GDCM).

SimpleITK's ``ImageSeriesReader`` with GDCM-sorted file names is what 3D Slicer
uses.  Both read the same files from a warm page cache; each load runs in a
fresh child process so that peak memory (VmHWM) is measured per load and not
polluted by earlier runs.  The JPEG Lossless (process 14, SV1) copies are made
once with dcmtk's ``dcmcjpeg``.  ``volume-load-codecs`` does the same for
JPEG-LS (``dcmcjpls``), RLE (``dcmcrle``) and JPEG 2000 lossless (pydicom's
encoder), all lossless.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import data
from .harness import Context, Row, Target, register

_CHILD = r"""
import json, sys, time
kind, listing = sys.argv[1], sys.argv[2]
files = [l for l in open(listing).read().splitlines() if l]
# Warm-up on two files: both readers' lazy imports and codec discovery happen
# before the clock starts.
if kind == "osirix":
    from osirix_py.imaging import load_volume
    load_volume(files[:2])
    t0 = time.perf_counter()
    v = load_volume(files)
    nbytes, shape = v.array.nbytes, v.array.shape
else:
    import SimpleITK as sitk
    _r = sitk.ImageSeriesReader()
    _r.SetFileNames(files[:2])
    _r.Execute()
    t0 = time.perf_counter()
    folder = files[0].rsplit("/", 1)[0]
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder)
    r = sitk.ImageSeriesReader()
    r.SetFileNames(names)
    img = r.Execute()
    arr = sitk.GetArrayViewFromImage(img)
    nbytes, shape = arr.nbytes, arr.shape
seconds = time.perf_counter() - t0
hwm = base = 0
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) * 1024
print(json.dumps({"seconds": seconds, "hwm": hwm, "nbytes": nbytes, "shape": list(shape)}))
"""

# Resident memory of the child after the same warm-up (interpreter, imports,
# codecs), so that the measured peak is what the volume itself costs:
_BASELINE = r"""
import json, sys
kind, listing = sys.argv[1], sys.argv[2]
files = [l for l in open(listing).read().splitlines() if l]
if kind == "osirix":
    from osirix_py.imaging import load_volume
    load_volume(files[:2])
else:
    import SimpleITK as sitk
    _r = sitk.ImageSeriesReader()
    _r.SetFileNames(files[:2])
    _r.Execute()
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(json.dumps({"hwm": int(line.split()[1]) * 1024}))
"""


def _run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _dcmtk_copy(files: list[Path], dest: Path, cmd: list[str]) -> list[Path]:
    """Copies of *files* compressed by the dcmtk command *cmd* (made once, kept in the cache)."""
    dest.mkdir(parents=True, exist_ok=True)
    out = [dest / f.name for f in files]
    todo = [(f, o) for f, o in zip(files, out) if not o.exists()]
    if todo:
        if shutil.which(cmd[0]) is None:
            raise RuntimeError(f"{cmd[0]} (dcmtk) is needed to make the compressed copies")

        def one(pair):
            src, dst = pair
            tmp = dst.with_suffix(".tmp")
            subprocess.run([*cmd, str(src), str(tmp)], check=True, timeout=120, capture_output=True)
            tmp.replace(dst)

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(one, todo))
    return out


def _jpeg_lossless_copy(files: list[Path], dest: Path) -> list[Path]:
    """JPEG Lossless SV1 copies of *files* (made once, kept in the cache)."""
    return _dcmtk_copy(files, dest, ["dcmcjpeg", "+e1"])


def _j2k_copy(files: list[Path], dest: Path) -> list[Path]:
    """JPEG 2000 lossless copies of *files*, by pydicom's encoder (pylibjpeg-openjpeg)."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless

    dest.mkdir(parents=True, exist_ok=True)
    out = [dest / f.name for f in files]
    todo = [(f, o) for f, o in zip(files, out) if not o.exists()]

    def one(pair):
        src, dst = pair
        ds = pydicom.dcmread(src)
        ds.compress(JPEG2000Lossless)
        tmp = dst.with_suffix(".tmp")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(dst)

    for pair in todo:  # serially: the openjpeg encoder crashes when used from several threads
        one(pair)
    return out


def _compare(ctx: Context, label: str, paths: list[Path]) -> list[Row]:
    """Load *paths* with osirix-py and SimpleITK, each in fresh children: time and peak memory rows."""
    listing = ctx.tempdir("vol") / "files.txt"
    listing.write_text("\n".join(str(p) for p in paths))
    base = {k: _run(_BASELINE, k, str(listing))["hwm"] for k in ("osirix", "sitk")}
    for p in paths:  # warm the page cache for both readers
        p.read_bytes()
    ours, theirs, mem = [], [], []
    for rep in range(ctx.repeat):
        o = _run(_CHILD, "osirix", str(listing))
        s = _run(_CHILD, "sitk", str(listing))
        if o["shape"] != s["shape"]:
            raise RuntimeError(f"shapes differ: osirix-py {o['shape']} vs SimpleITK {s['shape']}")
        ours.append(o["seconds"])
        theirs.append(s["seconds"])
        mem.append((o["hwm"] - base["osirix"]) / o["nbytes"])
        ctx.say(f"volume-load {label} run {rep + 1}: osirix-py {o['seconds']:.2f} s, "
                f"SimpleITK {s['seconds']:.2f} s, peak {mem[-1]:.2f}x voxels")
    n = f"{len(paths):,} x 512x512 {label}"
    return [
        Row("volume-load", f"load {n}", "s", ctx.median(ours), peer=ctx.median(theirs),
            peer_name="SimpleITK ImageSeriesReader", higher_is_better=False,
            target=Target.ratio_at_least(1.0, "SimpleITK"), samples=ours, peer_samples=theirs),
        Row("volume-load", f"load {n}: peak memory / voxel bytes", "x", max(mem),
            higher_is_better=False, target=Target.at_most(1.1, "x"), samples=mem),
    ]


@register("volume-load", "load a 512x512 CT series into a volume (uncompressed, JPEG Lossless) vs SimpleITK")
def bench_volume_load(ctx: Context) -> list[Row]:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return [Row("volume-load", "volume load", error="SimpleITK is not installed (pip install SimpleITK)")]
    slices = ctx.size(1000, 100)
    fs = data.ct_series(1, slices)
    files = sorted(fs.files)
    sets = [("uncompressed", files),
            ("JPEG Lossless", _jpeg_lossless_copy(files, ctx.cache / f"ct-1x{slices}-jpegll"))]
    rows: list[Row] = []
    for label, paths in sets:
        rows += _compare(ctx, label, paths)
    return rows


@register("volume-load-codecs",
          "load a 512x512 CT series compressed as JPEG-LS, RLE and JPEG 2000 (all lossless) vs SimpleITK")
def bench_volume_load_codecs(ctx: Context) -> list[Row]:
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        return [Row("volume-load", "volume load", error="SimpleITK is not installed (pip install SimpleITK)")]
    slices = ctx.size(1000, 100)
    files = sorted(data.ct_series(1, slices).files)
    sets = [
        ("JPEG-LS", lambda: _dcmtk_copy(files, ctx.cache / f"ct-1x{slices}-jpegls", ["dcmcjpls", "+el"])),
        ("RLE", lambda: _dcmtk_copy(files, ctx.cache / f"ct-1x{slices}-rle", ["dcmcrle"])),
        ("JPEG 2000", lambda: _j2k_copy(files, ctx.cache / f"ct-1x{slices}-j2k")),
    ]
    rows: list[Row] = []
    for label, make in sets:
        try:
            paths = make()
        except Exception as exc:  # noqa: BLE001 - an encoder missing here: say so, go on
            rows.append(Row("volume-load", f"load {label}", error=str(exc)))
            continue
        rows += _compare(ctx, label, paths)
    return rows
