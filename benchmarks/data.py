"""Generated benchmark data, prepared once into a cache dir (default ``benchmarks/.cache``).

Nothing here is random between runs: every set is built by
``osirix_py.dicom.synthetic`` from fixed seeds, so the same set has the same
UIDs on every machine.  A set is written into a temporary folder and renamed
into place when complete (a ``manifest.json`` records what it holds), so an
interrupted preparation is simply redone.

Sets
----
``ct_series(n_series, slices)``
    512x512 CT series (int16, explicit VR little endian, ~0.5 MB a file),
    2 series per study, one patient per study: ``ct-<n_series>x<slices>/``.
    The full runs use 20 x 100 (2,000 files, the import benchmark; its first
    10 series are the 1,000 slices of the C-STORE benchmark).
``tiny_studies(n)``
    *n* studies of one 8x8 CT instance each, for C-FIND: ``tiny-<n>/``.
    1 study in 100 (and, for the 201-study set, 200 of 201) belongs to a
    patient named ``DOE^J<number>``; study dates spread over 2015-2024.
``find_database(n)``
    An osirix-py SQLite database of *n* studies built directly through
    ``osirix_py.db.repository.add_instance`` (no files), cached under a key that
    changes with the database code (schema, repository, attribute table).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("benchmarks.data")

DEFAULT_CACHE = Path(__file__).resolve().parent / ".cache"
#: Bump when the layout of a generated set changes.
DATA_VERSION = 1

CT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"


def cache_dir() -> Path:
    return Path(os.environ.get("OSIRIX_PY_BENCH_CACHE", DEFAULT_CACHE))


def _synthetic():
    try:
        from osirix_py.dicom import synthetic
    except ImportError as exc:  # pragma: no cover - being written by another engineer
        raise RuntimeError(f"osirix_py.dicom.synthetic is not available yet ({exc})") from exc
    return synthetic


def _progress(msg: str) -> None:
    print(f"[data] {msg}", file=sys.stderr, flush=True)


@dataclass
class FileSet:
    root: Path
    manifest: dict

    @property
    def files(self) -> list[Path]:
        return [self.root / p for p in self.manifest["files"]]

    @property
    def series_dirs(self) -> list[Path]:
        return [self.root / s["dir"] for s in self.manifest["series"]]


def _prepared(root: Path) -> dict | None:
    m = root / "manifest.json"
    if not m.is_file():
        return None
    try:
        data = json.loads(m.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("version") == DATA_VERSION else None


_CHILD_ENV = "OSIRIX_PY_BENCH_DATA_CHILD"


def _in_child(root: Path, kind: str, *args) -> dict | None:
    """Prepare a set in a child process (``python -m benchmarks.data KIND ARGS``).

    Generating data leaves the heap of the process that did it fragmented and
    large; the benchmarks measure memory and time in the harness process, so the
    preparation runs elsewhere.  Returns the manifest (``{}`` for a database), or
    None when already inside that child (then the caller builds it in-process).
    """
    if os.environ.get(_CHILD_ENV) == "1":
        return None
    import subprocess

    env = dict(os.environ, **{_CHILD_ENV: "1", "OSIRIX_PY_BENCH_CACHE": str(root.parent)})
    pkg_root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = str(pkg_root) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-m", "benchmarks.data", kind, *map(str, args)],
                         env=env, cwd=str(pkg_root), stdout=sys.stderr)
    if res.returncode != 0:
        raise RuntimeError(f"preparing {root.name} failed (python -m benchmarks.data {kind} "
                           f"{' '.join(map(str, args))}: rc {res.returncode})")
    if kind == "finddb":
        return {}
    manifest = _prepared(root)
    if manifest is None:
        raise RuntimeError(f"preparing {root.name}: the child process left no manifest")
    return manifest


def _build(root: Path, builder) -> dict:
    """Run *builder(tmp_dir) -> manifest* and move the result to *root* atomically."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    try:
        manifest = builder(tmp)
        manifest["version"] = DATA_VERSION
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# --------------------------------------------------------------------------- CT series
def ct_series(n_series: int, slices: int = 100, *, base: Path | None = None) -> FileSet:
    """*n_series* 512x512 CT series of *slices* slices each (see the module docstring)."""
    root = (base or cache_dir()) / f"ct-{n_series}x{slices}"
    manifest = _prepared(root) or _in_child(root, "ct", n_series, slices)
    if manifest is None:
        syn = _synthetic()

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            files, series = [], []
            for s in range(n_series):
                study = s // 2
                pid = f"BENCHCT{study:04d}"
                study_uid = syn.make_uid("bench-ct-study", study)
                series_uid = syn.make_uid("bench-ct-series", study, s)
                sub = f"study{study:04d}/series{s:04d}"
                paths = syn.write_series(syn.iter_ct_slices(
                    patient_name=f"BENCH^CT{study:04d}", patient_id=pid, study_uid=study_uid,
                    series_uid=series_uid, seed=s, slices=slices, rows=512, columns=512,
                    series_number=s % 2 + 1, accession=f"BCT{study:05d}",
                    series_description=f"Bench CT {s}"), tmp / sub)
                files += [str(p.relative_to(tmp)) for p in paths]
                series.append({"dir": sub, "study_uid": str(study_uid), "series_uid": str(series_uid),
                               "patient_id": pid, "count": len(paths)})
                _progress(f"ct-{n_series}x{slices}: series {s + 1}/{n_series} "
                          f"({len(files)} files, {time.perf_counter() - t0:.0f} s)")
            return {"kind": "ct", "files": files, "series": series}

        _progress(f"generating {n_series} x {slices} CT slices of 512x512 into {root} (once)")
        manifest = _build(root, build)
    return FileSet(root, manifest)


# --------------------------------------------------------------------------- tiny studies
DOE_EVERY = 100
_EPOCH = _dt.date(2015, 1, 1)
_SPAN_DAYS = 3650


def study_date(i: int) -> str:
    """Deterministic study date of study *i* (spread over 2015-2024)."""
    return (_EPOCH + _dt.timedelta(days=(i * 7919) % _SPAN_DAYS)).strftime("%Y%m%d")


def patient_name(i: int, n: int) -> str:
    """``DOE^J<i>`` for 1 study in 100 (200 of 201 for the 201-study set), else ``PAT<i>^X``."""
    if n <= 201:
        doe = i < n - 1
    else:
        doe = i % DOE_EVERY == 0
    return f"DOE^J{i:06d}" if doe else f"PAT{i:06d}^X"


def doe_matches(n: int) -> int:
    return sum(1 for i in range(n) if patient_name(i, n).startswith("DOE^J"))


def tiny_studies(n: int, *, base: Path | None = None) -> FileSet:
    """*n* studies of one 8x8 CT instance each (see the module docstring)."""
    root = (base or cache_dir()) / f"tiny-{n}"
    manifest = _prepared(root) or _in_child(root, "tiny", n)
    if manifest is None:
        syn = _synthetic()

        def build(tmp: Path) -> dict:
            t0 = time.perf_counter()
            files, series = [], []
            for i in range(n):
                study_uid = syn.make_uid("bench-tiny-study", n, i)
                series_uid = syn.make_uid("bench-tiny-series", n, i)
                sub = f"{i // 1000:03d}/{i:06d}"
                pid = f"TINY{i:06d}"
                paths = syn.write_series(syn.iter_ct_slices(
                    patient_name=patient_name(i, n), patient_id=pid, study_uid=study_uid,
                    series_uid=series_uid, seed=i, slices=1, rows=8, columns=8,
                    pixel_spacing=(30.0, 30.0), study_date=study_date(i),
                    accession=f"T{i:07d}", series_description="tiny"), tmp / sub)
                files += [str(p.relative_to(tmp)) for p in paths]
                series.append({"dir": sub, "study_uid": str(study_uid), "series_uid": str(series_uid),
                               "patient_id": pid, "count": len(paths)})
                if (i + 1) % 1000 == 0:
                    _progress(f"tiny-{n}: {i + 1}/{n} studies ({time.perf_counter() - t0:.0f} s)")
            return {"kind": "tiny", "files": files, "series": series}

        _progress(f"generating {n} tiny studies (8x8) into {root} (once)")
        manifest = _build(root, build)
    return FileSet(root, manifest)


# --------------------------------------------------------------------------- find database
def _db_code_key() -> str:
    import osirix_py.db.repository as repo_mod
    import osirix_py.db.schema as schema_mod
    import osirix_py.dicom.tags as tags_mod

    h = hashlib.sha256()
    for mod in (schema_mod, repo_mod, tags_mod):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()[:12]


def find_values(i: int, n: int) -> dict:
    """The attribute values of study *i* of an *n*-study find database."""
    uid = f"1.2.826.0.1.3680043.10.1000.{n}.{i}"
    return {
        "PatientName": patient_name(i, n), "PatientID": f"FIND{i:07d}",
        "PatientBirthDate": "19700101", "PatientSex": "O",
        "StudyInstanceUID": uid, "StudyDate": study_date(i), "StudyTime": "101500",
        "AccessionNumber": f"F{i:08d}", "StudyID": "1", "StudyDescription": "bench find",
        "SeriesInstanceUID": uid + ".1", "Modality": "CT" if i % 3 else "MR", "SeriesNumber": 1,
        "SOPInstanceUID": uid + ".1.1", "SOPClassUID": CT_SOP_CLASS, "InstanceNumber": 1,
        "Rows": 8, "Columns": 8, "TransferSyntaxUID": "1.2.840.10008.1.2.1",
    }


def find_database(n: int, *, base: Path | None = None, batch: int = 5000) -> Path:
    """Path of a cached SQLite database holding *n* studies (one instance each)."""
    from osirix_py.db import repository as repo
    from osirix_py.db.engine import open_database

    folder = (base or cache_dir()) / f"finddb-{n}-{_db_code_key()}"
    path = folder / "osirix-py.sqlite"
    if (folder / "complete").is_file() and path.is_file():
        return path
    if _in_child(folder, "finddb", n) is not None and (folder / "complete").is_file():
        return path
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    _progress(f"building a {n}-study database in {folder} via repository.add_instance (once)")
    db = open_database(f"sqlite:///{path}")
    t0 = time.perf_counter()
    try:
        now = _dt.datetime.now(_dt.timezone.utc)
        for start in range(0, n, batch):
            with db.engine.begin() as conn:
                for i in range(start, min(n, start + batch)):
                    rec = repo.InstanceRecord(values=find_values(i, n), file_path=f"bench/{i}.dcm",
                                              in_place=False, file_size=1000, checksum="0" * 16,
                                              origin="benchmark", character_set="ISO_IR 100",
                                              received_at=now)
                    repo.add_instance(conn, rec)
            done = min(n, start + batch)
            if n > batch:
                _progress(f"finddb-{n}: {done}/{n} studies ({time.perf_counter() - t0:.0f} s)")
    finally:
        db.dispose()
    (folder / "complete").write_text(f"{n} studies in {time.perf_counter() - t0:.1f} s\n")
    # Older builds of the same size (earlier code versions) are no longer useful.
    for old in folder.parent.glob(f"finddb-{n}-*"):
        if old != folder:
            shutil.rmtree(old, ignore_errors=True)
    return path


def date_range_for(n: int) -> tuple[str, int]:
    """A one-month StudyDate range query and how many of *n* studies it matches."""
    lo, hi = "20240101", "20240131"
    return f"{lo}-{hi}", sum(1 for i in range(n) if lo <= study_date(i) <= hi)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.data ct N_SERIES SLICES | tiny N | finddb N``: prepare a set now."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m benchmarks.data", description=main.__doc__)
    p.add_argument("kind", choices=("ct", "tiny", "finddb"))
    p.add_argument("numbers", nargs="+", type=int)
    a = p.parse_args(argv)
    if a.kind == "ct":
        print(ct_series(*a.numbers[:2]).root)
    elif a.kind == "tiny":
        print(tiny_studies(a.numbers[0]).root)
    else:
        print(find_database(a.numbers[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
