"""ROI geometry and statistics against analytic shapes; JSON round trips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from osirix_py.dicom.geometry import ImagePlane
from osirix_py.imaging import (
    AngleROI,
    EllipseROI,
    FreehandROI,
    ImageReference,
    LineROI,
    PlanarImage,
    PointROI,
    PolygonROI,
    RectangleROI,
    ROI,
    ROIError,
    Volume,
    oblique_plane,
    reslice_image,
    roi_from_json,
)


def _rotation(axis, deg):
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = math.radians(deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def phantom(plane: ImagePlane, *, inside=60.0, outside=-1000.0, radius=50.0, center_uv=(100.0, 80.0)):
    """A disc of value ``inside`` (radius mm, centre at in-plane mm) in ``outside``."""
    c, r = np.meshgrid(np.arange(plane.columns), np.arange(plane.rows))
    u = c * plane.pixel_spacing[1] - center_uv[0]
    v = r * plane.pixel_spacing[0] - center_uv[1]
    return np.where(u * u + v * v <= radius * radius, inside, outside)


def make_image(row=(1, 0, 0), col=(0, 1, 0), origin=(-50, -40, 12), spacing=(0.4, 0.5), size=(400, 450), **kw):
    plane = ImagePlane.from_vectors(origin, row, col, spacing, size[0], size[1])
    return PlanarImage(phantom(plane, **kw), plane, units="HU", modality="CT")


def at(img: PlanarImage, u: float, v: float) -> np.ndarray:
    """Patient position of in-plane mm coordinates."""
    p = img.plane
    return p.position + u * p.row_cosine + v * p.col_cosine


def test_ellipse_of_known_area_on_phantom():
    img = make_image()
    a, b = 30.0, 18.0
    roi = EllipseROI(center=at(img, 100, 80), axis_a=img.plane.row_cosine * a, axis_b=img.plane.col_cosine * b)
    s = roi.measure(img)
    assert s.area_mm2 == pytest.approx(math.pi * a * b, rel=1e-12)
    assert s.pixel_area_mm2 == pytest.approx(math.pi * a * b, rel=0.01)
    assert s.count * 0.4 * 0.5 == pytest.approx(s.pixel_area_mm2)
    assert s.mean == 60 and s.std == 0 and s.min == 60 and s.max == 60 and s.median == 60
    assert s.units == "HU"
    t = np.linspace(0, 2 * math.pi, 200001)
    numeric = np.sum(np.hypot(np.diff(a * np.cos(t)), np.diff(b * np.sin(t))))
    assert s.perimeter_mm == pytest.approx(numeric, rel=1e-8)


def test_ellipse_on_oblique_plane_and_rotated_axes():
    r = _rotation([1, 1, 0.2], 50)
    img = make_image(row=r[:, 0], col=r[:, 1], spacing=(0.5, 0.5), size=(360, 400))
    t = math.radians(30)
    ax_a = (math.cos(t) * img.plane.row_cosine + math.sin(t) * img.plane.col_cosine) * 20
    ax_b = (-math.sin(t) * img.plane.row_cosine + math.cos(t) * img.plane.col_cosine) * 10
    roi = EllipseROI(center=at(img, 100, 80), axis_a=ax_a, axis_b=ax_b)
    s = roi.measure(img)
    assert s.area_mm2 == pytest.approx(math.pi * 200)
    assert s.pixel_area_mm2 == pytest.approx(math.pi * 200, rel=0.015)
    assert s.mean == 60


def test_ellipse_straddling_two_regions_has_the_area_weighted_mean():
    # ellipse (actually a circle of radius 20) centred on the disc edge: half in, half out
    img = make_image(spacing=(0.2, 0.2), size=(800, 900))
    roi = EllipseROI.from_center_radii(img.plane, at(img, 150, 80), 20, 20)
    s = roi.measure(img)
    # area of the lens inside the disc (radius 50, centres 50 apart)
    R, r, d = 50.0, 20.0, 50.0
    lens = (r * r * math.acos((d * d + r * r - R * R) / (2 * d * r))
            + R * R * math.acos((d * d + R * R - r * r) / (2 * d * R))
            - 0.5 * math.sqrt((-d + r + R) * (d + r - R) * (d - r + R) * (d + r + R)))
    frac = lens / (math.pi * r * r)
    assert s.mean == pytest.approx(frac * 60 + (1 - frac) * -1000, abs=8)
    assert s.min == -1000 and s.max == 60


def test_rectangle_counts_are_exact():
    img = make_image(spacing=(0.5, 0.5))
    roi = RectangleROI.from_corners(img.plane, at(img, 10, 10), at(img, 60, 40))
    s = roi.measure(img)
    assert s.count == 100 * 60 and s.area_mm2 == pytest.approx(1500) and s.pixel_area_mm2 == pytest.approx(1500)
    assert s.mean == -1000
    flipped = RectangleROI.from_corners(img.plane, at(img, 60, 40), at(img, 10, 10))
    assert flipped.measure(img).count == 6000
    px = RectangleROI.from_pixels(img.plane, (20, 20), (120, 80))
    assert px.measure(img).count == 6000
    with pytest.raises(ROIError):
        RectangleROI(corner=[0, 0, 0], edge_u=[1, 0, 0], edge_v=[1, 1, 0])


def test_polygon_triangle_and_concave_shapes():
    img = make_image(spacing=(0.25, 0.25), size=(600, 600))
    tri = PolygonROI(vertices=[at(img, 10, 10), at(img, 70, 10), at(img, 10, 50)])
    s = tri.measure(img)
    assert s.area_mm2 == pytest.approx(0.5 * 60 * 40)
    assert s.pixel_area_mm2 == pytest.approx(1200, rel=0.01)
    assert s.perimeter_mm == pytest.approx(60 + 40 + math.hypot(60, 40))
    # an L shape on pixel centres: exact count by the half-open rule
    lshape = PolygonROI.from_pixels(img.plane, [(0, 0), (40, 0), (40, 10), (10, 10), (10, 30), (0, 30)])
    m = lshape.mask(img)
    assert m.sum() == 40 * 10 + 10 * 20
    assert lshape.area_mm2 == pytest.approx((40 * 10 + 10 * 20) * 0.25 * 0.25)


def test_freehand_circle_inside_the_disc():
    img = make_image(spacing=(0.3, 0.3), size=(500, 500))
    t = np.linspace(0, 2 * math.pi, 720, endpoint=False)
    pts = [at(img, 100 + 25 * math.cos(a), 80 + 25 * math.sin(a)) for a in t]
    roi = FreehandROI(vertices=pts, name="lesion")
    s = roi.measure(img)
    assert roi.kind == "freehand"
    assert s.area_mm2 == pytest.approx(math.pi * 625, rel=1e-4)
    assert s.pixel_area_mm2 == pytest.approx(math.pi * 625, rel=0.01)
    assert s.mean == 60 and s.std == 0


def test_statistics_of_noise_and_padding():
    plane = ImagePlane.from_vectors([0, 0, 0], [1, 0, 0], [0, 1, 0], (1, 1), 100, 100)
    rng = np.random.default_rng(0)
    arr = rng.normal(40, 10, (100, 100))
    arr[:, :10] = -3024  # padding
    img = PlanarImage(arr, plane, units="HU", padding=(-3024, -3024))
    roi = RectangleROI.from_corners(plane, [0, 0, 0], [100, 100, 0])
    s = roi.measure(img)
    inner = arr[:, 10:]
    assert s.count == inner.size
    assert s.mean == pytest.approx(inner.mean()) and s.std == pytest.approx(inner.std(ddof=1))
    assert s.median == pytest.approx(np.median(inner)) and s.min == inner.min() and s.max == inner.max()
    assert s.sum == pytest.approx(inner.sum())


def test_suv_statistics():
    plane = ImagePlane.from_vectors([0, 0, 0], [1, 0, 0], [0, 1, 0], (2, 2), 50, 50)
    arr = np.full((50, 50), 5000.0)
    img = PlanarImage(arr, plane, units="BQML", modality="PT", suv_factor=2e-4)
    s = EllipseROI.from_center_radii(plane, [50, 50, 0], 20, 20).measure(img)
    assert s.mean == 5000 and s.suv["mean"] == pytest.approx(1.0) and s.suv["max"] == pytest.approx(1.0)


def test_line_length_and_profile_on_a_ramp():
    plane = ImagePlane.from_vectors([0, 0, 0], [1, 0, 0], [0, 1, 0], (0.5, 0.5), 100, 100)
    c, r = np.meshgrid(np.arange(100), np.arange(100))
    img = PlanarImage((c * 0.5) * 2.0 + (r * 0.5) * 1.0, plane)  # 2 per mm along x, 1 along y
    line = LineROI(start=[5, 5, 0], end=[35, 45, 0])
    assert line.length_mm == pytest.approx(50)
    d, v = line.profile(img)
    assert np.allclose(v, 15 + d * (2 * 30 + 1 * 40) / 50)
    s = line.measure(img)
    assert s.length_mm == pytest.approx(50) and s.mean == pytest.approx(15 + 25 * 100 / 50)
    assert line.mask(img).sum() >= 80
    px = LineROI.from_pixels(plane, (10, 10), (70, 90))
    assert px.length_mm == pytest.approx(50)


def test_angle_and_point():
    a = AngleROI(first=[10, 0, 0], vertex=[0, 0, 0], second=[0, 5, 0])
    assert a.angle_deg == pytest.approx(90)
    assert AngleROI(first=[1, 1, 0], vertex=[0, 0, 0], second=[1, 0, 0]).angle_deg == pytest.approx(45)
    assert AngleROI(first=[1, 0, 0], vertex=[0, 0, 0], second=[-2, 0, 0]).angle_deg == pytest.approx(180)
    img = make_image()
    s = AngleROI.from_pixels(img.plane, (0, 10), (0, 0), (10, 0)).measure(img)
    assert s.angle_deg == pytest.approx(90) and s.count == 0
    p = PointROI(position=at(img, 100, 80))
    s = p.measure(img)
    assert s.count == 1 and s.mean == 60
    assert PointROI.from_pixels(img.plane, 0, 0).measure(img).mean == -1000


def test_roi_off_the_image_plane_is_refused():
    img = make_image()
    roi = EllipseROI.from_center_radii(img.plane, at(img, 100, 80) + 5 * img.plane.normal, 10, 10)
    with pytest.raises(ROIError, match="from the image plane"):
        roi.measure(img)
    assert roi.measure(img, tolerance=6).count > 0


def test_roi_on_a_reslice_of_a_volume():
    # a volume whose value is the distance from a point: a sphere of radius 15 is < 15
    shape = (40, 50, 50)
    aff = np.diag([0.8, 0.8, 1.0, 1.0])
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    pos = np.stack([i * 0.8, j * 0.8, k * 1.0], -1)
    centre = np.array([20.0, 20.0, 20.0])
    dist = np.linalg.norm(pos - centre, axis=-1)
    vol = Volume(np.where(dist <= 15, 100, 0).astype(np.int16), aff, units="HU", modality="CT")
    plane = oblique_plane(vol, centre, [1, 1, 1], spacing=0.25, size=160)
    img = reslice_image(vol, plane)
    roi = EllipseROI.from_center_radii(plane, centre, 10, 10)
    s = roi.measure(img)
    assert s.mean == pytest.approx(100, abs=0.5)
    assert s.area_mm2 == pytest.approx(math.pi * 100)


def test_measure_on_volume_slice_with_anisotropic_pixels():
    arr = np.zeros((3, 60, 80), np.int16)
    arr[1, 10:30, 20:60] = 50  # 20 rows x 40 columns
    vol = Volume(arr, np.diag([0.5, 1.5, 3.0, 1.0]))
    img = vol.slice_image(1)
    roi = RectangleROI.from_pixels(img.plane, (20, 10), (60, 30))
    s = roi.measure(img)
    assert s.count == 800 and s.mean == 50
    assert s.area_mm2 == pytest.approx(40 * 0.5 * 20 * 1.5)


ALL_ROIS = [
    PointROI(position=[1, 2, 3], name="p"),
    LineROI(start=[0, 0, 0], end=[3, 4, 0], color=(255, 0, 0)),
    AngleROI(first=[1, 0, 0], vertex=[0, 0, 0], second=[0, 1, 0]),
    RectangleROI(corner=[0, 0, 0], edge_u=[2, 0, 0], edge_v=[0, 3, 0]),
    EllipseROI(center=[1, 1, 1], axis_a=[2, 0, 0], axis_b=[0, 1, 0],
               reference=ImageReference("1.2.3", 4, "1.2.4", "1.2.5", "1.2.6")),
    PolygonROI(vertices=[[0, 0, 0], [1, 0, 0], [0, 1, 0]]),
    FreehandROI(vertices=[[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], name="ünïcode"),
]


@pytest.mark.parametrize("roi", ALL_ROIS, ids=[r.kind for r in ALL_ROIS])
def test_json_round_trip(roi):
    text = roi.to_json()
    d = json.loads(text)
    assert d["schema"] == "osirix-py/roi" and d["version"] == 1 and d["kind"] == roi.kind
    back = ROI.from_json(text)
    assert type(back) is type(roi)
    assert back.uid == roi.uid and back.name == roi.name and back.color == roi.color
    assert back.reference == roi.reference
    assert np.allclose(back.points(), roi.points())
    assert back.to_dict() == roi.to_dict()
    moved = roi.translated([1, 2, 3])
    assert np.allclose(moved.points()[0], roi.points()[0] + [1, 2, 3])


@pytest.mark.parametrize(
    "text, match",
    [
        ("not json", "cannot be parsed"),
        ('{"schema": "osirix-py/roi", "version": 99, "kind": "point", "geometry": {}}', "newer"),
        ('{"schema": "osirix-py/roi", "version": 1, "kind": "blob", "geometry": {}}', "unknown ROI kind"),
        ('{"schema": "other", "version": 1, "kind": "point", "geometry": {}}', "schema"),
        ('{"schema": "osirix-py/roi", "version": 1, "kind": "point", "geometry": {}}', "geometry"),
        ('{"schema": "osirix-py/roi", "version": 1, "kind": "ellipse", "geometry": '
         '{"center": [0,0,0], "axis_a": [1,0,0], "axis_b": [1,1,0]}}', "orthogonal"),
        ("[]", "JSON object"),
    ],
)
def test_bad_json_raises_roi_error(text, match):
    with pytest.raises(ROIError, match=match):
        roi_from_json(text)


def test_statistics_to_dict_is_json_safe():
    img = make_image()
    s = PointROI(position=at(img, 1, 1)).measure(img)
    d = s.to_dict()
    assert d["std"] is None  # one pixel: no standard deviation
    json.dumps(d)
