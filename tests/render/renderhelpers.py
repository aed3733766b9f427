"""Volumes for the render tests (imported by name; not a conftest, so nothing is shadowed).

VTK renders offscreen: without a display and without a choice in
``VTK_DEFAULT_OPENGL_WINDOW``, VTK's EGL window is used (scripts/test.sh picks
OSMesa for the whole suite, which works as well).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

# VTK comes with the "gui" extra (scripts/test.sh always installs it); a core-only install has none.
pytest.importorskip("vtkmodules")

if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

from osirix_py.imaging.volume import Volume  # noqa: E402


def rotation(axis, degrees: float) -> np.ndarray:
    a = np.asarray(axis, float)
    a = a / np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


def affine(direction: np.ndarray, spacing, origin) -> np.ndarray:
    """4x4 affine: columns = unit direction columns * spacing (column, row, slice)."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, float) @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def centred_affine(direction, spacing, shape) -> np.ndarray:
    """An affine that puts the volume centre at LPS (0, 0, 0)."""
    s, r, c = shape
    m = affine(direction, spacing, (0, 0, 0))
    centre = m[:3, :3] @ np.array([(c - 1) / 2, (r - 1) / 2, (s - 1) / 2])
    m[:3, 3] = -centre
    return m


def _voxel_points(shape, spacing, direction):
    """The centred affine of a volume and the LPS position of each voxel
    (one row per voxel, in array order)."""
    d = np.eye(3) if direction is None else np.asarray(direction, float)
    aff = centred_affine(d, spacing, shape)
    s, r, c = shape
    kk, jj, ii = np.meshgrid(np.arange(s), np.arange(r), np.arange(c), indexing="ij")
    idx = np.stack([ii.ravel(), jj.ravel(), kk.ravel()], axis=1).astype(float)
    return aff, idx @ aff[:3, :3].T + aff[:3, 3]


def sphere_volume(shape=(40, 48, 56), spacing=(1.2, 1.0, 1.5), direction=None, *,
                  center_lps=(10.0, -8.0, 6.0), radius=5.0, value=2000, background=-1000,
                  body=40, body_radius=None, modality="CT") -> Volume:
    """A CT-like volume: air, a soft-tissue ball filling most of it, one bright sphere at ``center_lps``."""
    aff, pts = _voxel_points(shape, spacing, direction)
    arr = np.full(pts.shape[0], background, np.int16)
    if body is not None:
        br = body_radius if body_radius is not None else 0.4 * min(np.array(shape) * np.array(spacing)[::-1])
        arr[np.linalg.norm(pts, axis=1) <= br] = body
    arr[np.linalg.norm(pts - np.asarray(center_lps), axis=1) <= radius] = value
    return Volume(arr.reshape(shape), aff, modality=modality, units="HU" if modality == "CT" else "")


def smooth_volume(shape=(30, 36, 40), spacing=(1.1, 0.9, 2.0), direction=None) -> Volume:
    """A smooth field (linear interpolation of it is nearly exact): good for comparing samplers."""
    aff, p = _voxel_points(shape, spacing, direction)
    vals = 500 + 8.0 * p[:, 0] - 5.0 * p[:, 1] + 12.0 * p[:, 2] + 200 * np.sin(p[:, 0] / 9.0)
    return Volume(np.round(vals).astype(np.int16).reshape(shape), aff, modality="MR")


def bright_centroid(img: np.ndarray, fraction: float = 0.9) -> tuple[float, float]:
    """(x, y) centroid of the pixels at least ``fraction`` of the brightest (grey of RGB)."""
    g = img.astype(float).mean(axis=2) if img.ndim == 3 else img.astype(float)
    ys, xs = np.nonzero(g >= fraction * g.max())
    return float(xs.mean()), float(ys.mean())
