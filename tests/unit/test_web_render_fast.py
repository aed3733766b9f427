"""The quick render path (dicom/quickheader + Renderer._quick_frame) against the full decode.

For each variant the windowed uint8 image (before JPEG) of the quick path must equal,
pixel for pixel, the one of the full path (pydicom ``dcmread`` of the whole file,
``pixels.decode_frame``, ``DisplayPipeline.from_dataset``); files the quick path does
not cover must return ``None`` from :func:`quickheader.read_native` and still render
through the full path.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         RLELossless)

from osirix_py.dicom import quickheader, synthetic
from osirix_py.web import render
from osirix_py.web.common import HttpProblem


def _bytes(ds: Dataset, *, implicit: bool | None = None, preamble: bool = True) -> bytes:
    buf = io.BytesIO()
    ts = ds.file_meta.TransferSyntaxUID
    if implicit is None:
        implicit = ts == ImplicitVRLittleEndian
    ds.save_as(buf, enforce_file_format=preamble, implicit_vr=implicit,
               little_endian=ts != ExplicitVRBigEndian)
    return buf.getvalue()


def _ct(**kw) -> Dataset:
    return synthetic.make_ct_series(slices=3, rows=64, columns=48, **kw)[1]


def _mr(**kw) -> Dataset:
    return synthetic.make_mr_series(slices=3, rows=40, columns=56, **kw)[1]


def _with_ts(ds: Dataset, ts) -> Dataset:
    ds = ds.copy()
    ds.file_meta = FileMetaDataset(ds.file_meta)
    ds.file_meta.TransferSyntaxUID = ts
    return ds


def _noisy_high_bits(ds: Dataset, bits_stored: int) -> Dataset:
    """Bits Stored < Bits Allocated with garbage in the unused high bits."""
    ds = ds.copy()
    arr = np.frombuffer(ds.PixelData, "<u2").copy()
    mask = (1 << bits_stored) - 1
    rng = np.random.default_rng(1)
    arr = (arr & mask) | (rng.integers(0, 1 << (16 - bits_stored), arr.shape, dtype=np.uint16)
                          << bits_stored)
    ds.PixelData = arr.astype("<u2").tobytes()
    ds.BitsStored, ds.HighBit = bits_stored, bits_stored - 1
    return ds


def _multiframe(ds: Dataset, n: int = 4) -> Dataset:
    ds = ds.copy()
    arr = np.frombuffer(ds.PixelData, "<i2" if ds.PixelRepresentation else "<u2")
    frames = np.stack([arr + 7 * i for i in range(n)]).astype(arr.dtype)
    ds.PixelData = frames.tobytes()
    ds.NumberOfFrames = n
    return ds


def _eight_bit(ds: Dataset) -> Dataset:
    ds = ds.copy()
    arr = np.frombuffer(ds.PixelData, "<u2")
    ds.PixelData = (arr >> 4).astype(np.uint8).tobytes()
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for kw in ("WindowCenter", "WindowWidth"):
        if kw in ds:
            del ds[kw]
    return ds


def _set(ds: Dataset, **values) -> Dataset:
    ds = ds.copy()
    for k, v in values.items():
        if v is None:
            if k in ds:
                del ds[k]
        else:
            setattr(ds, k, v)
    return ds


def _with_sequences(ds: Dataset) -> Dataset:
    """Defined- and undefined-length sequences (nested) before the pixel data."""
    ds = ds.copy()
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-D4000", "SRT", "Abdomen"
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    item.PurposeOfReferenceCodeSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, item])
    ds.AnatomicRegionSequence = Sequence([inner])
    ds.ReferencedImageSequence.is_undefined_length = True
    ds.AnatomicRegionSequence.is_undefined_length = False
    return ds


#: name -> dataset; every one is covered by the quick path.
QUICK = {
    "ct-signed-explicit": lambda: _ct(),
    "ct-unsigned-rescale": lambda: _ct(unsigned=True),
    "ct-implicit": lambda: _with_ts(_ct(), ImplicitVRLittleEndian),
    "ct-monochrome1": lambda: _set(_ct(), PhotometricInterpretation="MONOCHROME1"),
    "ct-inverse-shape": lambda: _set(_ct(), PresentationLUTShape="INVERSE"),
    "ct-no-window": lambda: _set(_ct(), WindowCenter=None, WindowWidth=None),
    "ct-two-windows": lambda: _set(_ct(), WindowCenter=[40, 300], WindowWidth=[400, 1500]),
    "ct-rescale-fraction": lambda: _set(_ct(), RescaleSlope="0.5", RescaleIntercept="-1024.25"),
    "ct-padding": lambda: _set(_ct(), PixelPaddingValue=-1000),
    "ct-sigmoid": lambda: _set(_ct(), VOILUTFunction="SIGMOID"),
    "ct-12-bit-signed": lambda: _noisy_high_bits(_ct(), 12),
    "ct-12-bit-unsigned": lambda: _noisy_high_bits(_ct(unsigned=True), 12),
    "ct-sequences": lambda: _with_sequences(_ct()),
    "ct-sequences-implicit": lambda: _with_ts(_with_sequences(_ct()), ImplicitVRLittleEndian),
    "ct-multiframe": lambda: _multiframe(_ct()),
    "mr-unsigned": lambda: _mr(),
    "mr-implicit-multiframe": lambda: _with_ts(_multiframe(_mr(), 3), ImplicitVRLittleEndian),
    "mr-8-bit": lambda: _eight_bit(_mr()),
    "mr-8-bit-monochrome1": lambda: _set(_eight_bit(_mr()), PhotometricInterpretation="MONOCHROME1"),
}


def _voi_lut(ds: Dataset) -> Dataset:
    ds = _set(ds, WindowCenter=None, WindowWidth=None)
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 0, 8])  # LUT Descriptor
    item.add_new(0x00283006, "US", list(range(255, -1, -1)))  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    return ds


def _rle(ds: Dataset) -> Dataset:
    ds = ds.copy()
    ds.compress(RLELossless)
    return ds


#: Files the quick path hands to pydicom.
FALLBACK = {
    "big-endian": lambda: _with_ts(_ct(), ExplicitVRBigEndian),
    "rle-compressed": lambda: _rle(_ct()),
    "voi-lut-sequence": lambda: _voi_lut(_ct(unsigned=True)),
    "no-preamble": lambda: _ct(),
    "rgb": lambda: _rgb(),
    "frames-not-an-integer": lambda: _set(_multiframe(_ct(), 2), NumberOfFrames="2.0"),
}


def _rgb() -> Dataset:
    ds = _eight_bit(_mr())
    arr = np.frombuffer(ds.PixelData, np.uint8).reshape(ds.Rows, ds.Columns)
    ds.PixelData = np.stack([arr, 255 - arr, arr // 2], axis=-1).tobytes()
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    return ds


class _Archive:
    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.reads = 0

    def read_instance(self, row):
        self.reads += 1
        return self.files[row["SOPInstanceUID"]]


def _full(raw: bytes, index: int) -> render.Frame:
    return render.decode_dataset_frame(pydicom.dcmread(io.BytesIO(raw), force=True), index)


WINDOWS = [None, (40.0, 400.0), (-600.0, 1500.0), (100.0, 1.0)]


def _assert_same(quick: render.Frame, full: render.Frame) -> None:
    assert quick.frames == full.frames
    assert quick.spacing == full.spacing
    assert quick.stored.dtype == full.stored.dtype
    np.testing.assert_array_equal(quick.stored, full.stored)
    for w in WINDOWS:
        a, b = render.to_display(quick, w), render.to_display(full, w)
        assert a.dtype == np.uint8 and a.shape == b.shape
        np.testing.assert_array_equal(a, b, err_msg=f"window {w}")


@pytest.mark.parametrize("name", sorted(QUICK))
def test_quick_path_matches_full_decode(name):
    ds = QUICK[name]()
    raw = _bytes(ds)
    img = quickheader.read_native(raw)
    assert img is not None, "the quick path should cover this file"
    r = render.Renderer(_Archive({}))
    for index in range(img.frames):
        quick = r._quick_frame(raw, index)
        assert quick is not None
        _assert_same(quick, _full(raw, index))
        assert not quick.stored.flags.writeable


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
@pytest.mark.parametrize("name", sorted(FALLBACK))
def test_fallback_files_render_through_the_full_path(name):
    ds = FALLBACK[name]()
    raw = _bytes(ds, preamble=name != "no-preamble")
    assert quickheader.read_native(raw) is None
    r = render.Renderer(_Archive({"x": raw}))
    frame = r.frame({"SOPInstanceUID": "x", "_checksum": "c"}, 0)
    full = _full(raw, 0)
    np.testing.assert_array_equal(frame.stored, full.stored)
    np.testing.assert_array_equal(render.to_display(frame, None), render.to_display(full, None))
    jpeg = r.render({"SOPInstanceUID": "x", "_checksum": "c"}, render.RenderRequest())
    assert jpeg[:2] == b"\xff\xd8"


def test_pipelines_are_shared_across_slices_and_keyed_by_display_attributes():
    slices = synthetic.make_ct_series(slices=4, rows=32, columns=32)
    raws = [_bytes(ds) for ds in slices]
    r = render.Renderer(_Archive({}))
    frames = [r._quick_frame(raw, 0) for raw in raws]
    assert len({id(f.pipeline) for f in frames}) == 1
    # Per-slice Smallest/Largest Image Pixel Value do not split the key ...
    varied = [_set(ds, SmallestImagePixelValue=i, LargestImagePixelValue=1000 + i)
              for i, ds in enumerate(slices)]
    assert len({id(r._quick_frame(_bytes(ds), 0).pipeline) for ds in varied}) == 1
    # ... a different window does, and gives that window.
    other = r._quick_frame(_bytes(_set(slices[0], WindowCenter=300, WindowWidth=100)), 0)
    assert other.pipeline is not frames[0].pipeline
    assert other.pipeline.windows[0].center == 300.0
    for raw, f in zip(raws, frames):
        _assert_same(f, _full(raw, 0))


def test_frames_out_of_range_and_cache():
    raw = _bytes(_multiframe(_ct(), 3))
    arch = _Archive({"m": raw})
    r = render.Renderer(arch)
    row = {"SOPInstanceUID": "m", "_checksum": "c"}
    with pytest.raises(HttpProblem) as exc:
        r.frame(row, 3)
    assert exc.value.status == 404
    f2 = r.frame(row, 2)
    np.testing.assert_array_equal(f2.stored, _full(raw, 2).stored)
    # A frame of a multi-frame file is a copy, not a view that keeps the file alive.
    assert f2.stored.base is None or f2.stored.base.nbytes <= f2.stored.nbytes
    reads = arch.reads
    assert r.frame(row, 2) is f2 and arch.reads == reads


def test_rendered_jpeg_same_as_full_path():
    raw = _bytes(_ct())
    r = render.Renderer(_Archive({"a": raw}))
    req = render.RenderRequest(window=(40.0, 400.0), size=(32, 32))
    got = r.render({"SOPInstanceUID": "a", "_checksum": "c"}, req)
    assert got == render.render_frame(_full(raw, 0), req)


@pytest.mark.parametrize("cut", [0, 100, 131, 200, 400, -10])
def test_truncated_or_garbage_files_are_refused(cut):
    raw = _bytes(_ct())
    if cut < 0:
        bad = raw[:cut]  # pixel data shorter than the image
    else:
        bad = raw[:cut] + b"\xff" * 64
    assert quickheader.read_native(bad) is None


def test_native_image_fields():
    ds = _multiframe(_ct(), 2)
    raw = _bytes(ds)
    img = quickheader.read_native(raw)
    assert (img.rows, img.columns, img.bits_allocated, img.bits_stored, img.signed, img.frames,
            img.photometric) == (64, 48, 16, 16, True, 2, "MONOCHROME2")
    assert img.transfer_syntax == ExplicitVRLittleEndian and not img.implicit
    assert raw[img.pixel_offset - 12:img.pixel_offset - 8] == b"\xe0\x7f\x10\x00"
    assert img.pixel_length == 2 * 64 * 48 * 2
    mini = img.dataset()
    assert mini.Rows == 64 and float(mini.WindowWidth) == float(ds.WindowWidth)


class _FileArchive(_Archive):
    """Files on disk: the renderer reads them into its pooled buffer."""

    def __init__(self, folder, files: dict[str, bytes]):
        super().__init__(files)
        self.folder = folder
        for name, raw in files.items():
            (folder / name).write_bytes(raw)

    def instance_file(self, row):
        return self.folder / row["SOPInstanceUID"]


@pytest.mark.filterwarnings("ignore:Invalid value for VR IS")
@pytest.mark.parametrize("name", sorted(QUICK) + sorted(FALLBACK))
def test_pooled_render_from_files_matches_full_path(tmp_path, name):
    ds = (QUICK.get(name) or FALLBACK[name])()
    raw = _bytes(ds, preamble=name != "no-preamble")
    arch = _FileArchive(tmp_path, {"f": raw})
    r = render.Renderer(arch)
    row = {"SOPInstanceUID": "f", "_checksum": "c"}
    frames = pydicom.dcmread(io.BytesIO(raw), force=True).get("NumberOfFrames")
    n = int(frames) if frames and str(frames).isdigit() else 1
    for index in range(n):
        for window in (None, (40.0, 400.0)):
            for mt in ("image/jpeg", "image/png"):
                req = render.RenderRequest(frame=index, window=window, media_type=mt)
                got = r.render(row, req)
                assert got == render.render_frame(_full(raw, index), req), (index, window, mt)
    if name in QUICK:
        # Rendered from the pooled buffer: nothing read through the archive, nothing kept.
        assert arch.reads == 0 and not r.frames._d
    # Once a frame is cached (as the viewer's /pixels does), renders use it.
    f = r.frame(row, 0)
    req = render.RenderRequest(window=(10.0, 100.0))
    assert r.render(row, req) == render.render_frame(f, req)


def test_pooled_buffers_are_reused_and_not_shared(tmp_path):
    slices = synthetic.make_ct_series(slices=3, rows=64, columns=64)
    for i, ds in enumerate(slices):  # make the images differ
        ds.PixelData = (np.frombuffer(ds.PixelData, "<i2") + 150 * i).astype("<i2").tobytes()
    files = {f"s{i}": _bytes(ds) for i, ds in enumerate(slices)}
    r = render.Renderer(_FileArchive(tmp_path, files))
    req = render.RenderRequest(media_type="image/png")
    outs = [r.render({"SOPInstanceUID": k, "_checksum": "c"}, req) for k in files]
    for k, got in zip(files, outs):
        assert got == render.render_frame(_full(files[k], 0), req)
    assert len(set(outs)) == len(outs)


def test_read_native_takes_a_memoryview():
    raw = _bytes(_ct())
    a, b = quickheader.read_native(raw), quickheader.read_native(memoryview(bytearray(raw)))
    assert a.elements == b.elements and a.pixel_offset == b.pixel_offset


# ------------------------------------------------------------ streamed render (big files)
def _big_ct(rows: int = 256, columns: int = 300, private_bytes: int = 0) -> Dataset:
    """A CT slice bigger than the first read (:data:`render.HEAD_BYTES`), optionally with a
    header that does not end within it (a big private element before the pixel data)."""
    ds = synthetic.make_ct_series(slices=1, rows=rows, columns=columns)[0]
    rng = np.random.default_rng(rows + columns + private_bytes)
    ds.PixelData = rng.integers(-1100, 1500, rows * columns, dtype=np.int16).astype("<i2").tobytes()
    if private_bytes:
        ds.add_new(0x00090010, "LO", "OSIRIX-PY TEST")
        ds.add_new(0x00091001, "OB", bytes(rng.integers(0, 256, private_bytes, dtype=np.uint8)))
    return ds


@pytest.mark.parametrize("private", [0, 20 << 10, 200 << 10])
def test_streamed_render_matches_full_path(tmp_path, private, monkeypatch):
    streamed = []
    real = render._stream_lut
    monkeypatch.setattr(render, "_stream_lut", lambda *a: streamed.append(1) or real(*a))
    raw = _bytes(_big_ct(private_bytes=private))
    assert len(raw) > render.HEAD_BYTES
    head = quickheader.read_native(raw)
    assert (head.pixel_offset > render.HEAD_BYTES) == (private > render.HEAD_BYTES)
    arch = _FileArchive(tmp_path, {"f": raw})
    r = render.Renderer(arch)
    row = {"SOPInstanceUID": "f", "_checksum": "c"}
    for window in (None, (40.0, 400.0), (-600.0, 1500.0)):
        for size in ((None, None), (100, 100)):
            for mt in ("image/jpeg", "image/png"):
                req = render.RenderRequest(window=window, size=size, media_type=mt)
                assert r.render(row, req) == render.render_frame(_full(raw, 0), req), \
                    (window, size, mt)
    assert arch.reads == 0 and not r.frames._d  # straight from the file, nothing kept
    assert len(streamed) == 3 * 2 * 2  # every one through the LUT, piece by piece


def test_streamed_render_is_not_misled_by_an_earlier_file_in_the_buffer(tmp_path):
    """A file whose header is longer than the first read, rendered after others: the
    pooled buffer holds the earlier file's bytes past the first read."""
    files = {"a": _bytes(_big_ct(300, 310)), "b": _bytes(_big_ct(128, 128, 40 << 10)),
             "c": _bytes(_big_ct(200, 100))}
    r = render.Renderer(_FileArchive(tmp_path, files))
    req = render.RenderRequest(media_type="image/png")
    for name in ("a", "b", "c", "b", "a"):
        r.cache = render._LRU(0)
        got = r.render({"SOPInstanceUID": name, "_checksum": "c"}, req)
        assert got == render.render_frame(_full(files[name], 0), req), name


def test_streamed_render_of_a_truncated_file_takes_the_ordinary_path(tmp_path):
    raw = _bytes(_big_ct())
    arch = _FileArchive(tmp_path, {"f": raw[:-1000]})
    arch.read_instance = lambda row: raw[:-1000]
    r = render.Renderer(arch)
    assert r._render_pooled({"SOPInstanceUID": "f", "_checksum": "c"},
                            render.RenderRequest()) is None


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (181, 181), (512, 512), (700, 333)])
@pytest.mark.parametrize("dtype", [np.uint16, np.uint8])
def test_apply_lut_in_pieces_equals_take(shape, dtype):
    rng = np.random.default_rng(shape[0])
    n = 1 << (8 * np.dtype(dtype).itemsize)
    lut = rng.integers(0, 256, n, dtype=np.uint8)
    idx = rng.integers(0, n, shape, dtype=dtype)
    want = np.take(lut, idx)
    np.testing.assert_array_equal(render._apply_lut(lut, idx), want)
    out = np.empty(shape, np.uint8)
    assert render._apply_lut(lut, idx, out) is out
    np.testing.assert_array_equal(out, want)
    # A strided view (not contiguous) and a LUT shorter than the dtype's range.
    np.testing.assert_array_equal(render._apply_lut(lut, idx[:, ::2]), np.take(lut, idx[:, ::2]))
    short = lut[:int(idx.max()) + 1]
    np.testing.assert_array_equal(render._apply_lut(short, idx), want)
    assert render._take_mode(short, idx) == ("raise" if short.size < n else "wrap")


def test_a_replaced_instance_is_rendered_again(tmp_path):
    """The render cache's key holds the instance's checksum: a new file under the same
    SOP Instance UID (a replace) is never answered with the old image."""
    old, new = _bytes(_big_ct(96, 96)), _bytes(_big_ct(96, 97))
    arch = _FileArchive(tmp_path, {"f": old})
    r = render.Renderer(arch)
    req = render.RenderRequest()
    first = r.render({"SOPInstanceUID": "f", "_checksum": "old"}, req)
    assert first == render.render_frame(_full(old, 0), req)
    (tmp_path / "f").write_bytes(new)
    again = r.render({"SOPInstanceUID": "f", "_checksum": "new"}, req)
    assert again == render.render_frame(_full(new, 0), req) and again != first
    assert r.cached({"SOPInstanceUID": "f", "_checksum": "old"}, req) == first
