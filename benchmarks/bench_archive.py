"""Archive-core benchmarks: ``import`` (files/s and memory) and ``find`` (local query latency)."""

from __future__ import annotations

import gc
import os
import resource
import shutil
import threading
import time
from pathlib import Path

from . import data
from .harness import Context, Row, Target, register


# --------------------------------------------------------------------------- memory
class RssSampler:
    """Peak resident set size of this process over a block, sampled every 10 ms."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.base = self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> "RssSampler":
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth_mib(self) -> float:
        return (self.peak - self.base) / 2**20


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # not Linux: the lifetime peak is the best we have
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r if os.uname().sysname == "Darwin" else r * 1024


# --------------------------------------------------------------------------- import
def _open_archive(data_dir: Path):
    from osirix_py.config import load_settings
    from osirix_py.services.factory import open_archive

    return open_archive(load_settings(data_dir=data_dir, environ={}))


@register("import", "import N 512x512 CT files (copy + index + fsync) vs a header-only pydicom read")
def bench_import(ctx: Context) -> list[Row]:
    import pydicom

    n_series = ctx.size(20, 2)
    fs = data.ct_series(n_series, 100)
    files = fs.files
    n = len(files)
    read_times, import_times, growth, copy_times = [], [], [], []
    for f in files:  # warm the page cache once, so that no run reads from a cold disk
        with open(f, "rb") as fh:
            while fh.read(1 << 20):
                pass
    for rep in range(ctx.repeat):
        # The plain baseline: one thread reading every header (no pixels), as any
        # DICOM tool must at least do.  It also warms the page cache for both.
        t0 = time.perf_counter()
        for f in files:
            pydicom.dcmread(f, stop_before_pixels=True)
        read_times.append(time.perf_counter() - t0)

        # The disk's own ceiling for the same job: copy every file's bytes to
        # new files on the same file system and make them durable (one sync
        # for all, the cheapest way there is).  No parsing, no index.
        copy_dir = ctx.tempdir("copy")
        t0 = time.perf_counter()
        for i, f in enumerate(files):
            with open(f, "rb") as src, open(copy_dir / f"{i}.dcm", "wb") as dst:
                dst.write(src.read())
        os.sync()
        copy_times.append(time.perf_counter() - t0)
        shutil.rmtree(copy_dir, ignore_errors=True)
        # Settle the deletion now (with a "discard" mount its trims go out at
        # the next journal commit), so that the import's first sync does not
        # pay for the copy's clean-up.
        os.sync()

        data_dir = ctx.tempdir("import")
        archive = _open_archive(data_dir)
        gc.collect()
        try:
            with RssSampler() as mem:
                rep_ = archive.import_paths([str(d) for d in fs.series_dirs])
        finally:
            archive.close()
        if rep_.imported != n or rep_.failed:
            raise RuntimeError(f"import: {rep_.summary()} (expected {n} imported)")
        import_times.append(rep_.seconds)
        growth.append(mem.growth_mib)
        ctx.say(f"import run {rep + 1}/{ctx.repeat}: {n / rep_.seconds:.0f} files/s, "
                f"pydicom {n / read_times[-1]:.0f} files/s, RSS +{mem.growth_mib:.0f} MiB")
        shutil.rmtree(data_dir, ignore_errors=True)
        os.sync()  # (likewise: the next copy floor does not pay for this clean-up)
    size = f"{n:,} CT 512x512"
    rows = [
        Row("import", f"import {size} files/s", "files/s", n / ctx.median(import_times),
            peer=n / ctx.median(read_times), peer_name="pydicom header read",
            target=Target.ratio_at_least(0.7, "pydicom"),
            samples=[n / t for t in import_times], peer_samples=[n / t for t in read_times]),
        # Context for the row above: a header-only read does no I/O at all, while
        # an import must write and sync every byte; this row compares with that.
        Row("import", f"import {size} vs durable plain copy", "files/s", n / ctx.median(import_times),
            peer=n / ctx.median(copy_times), peer_name="copy + sync (disk ceiling)",
            samples=[n / t for t in import_times], peer_samples=[n / t for t in copy_times]),
        # Memory must stay flat: it may not grow with the number of files.
        Row("import", f"import {size}: peak RSS growth", "MiB", max(growth),
            higher_is_better=False, target=Target.at_most(128, "MiB"), samples=growth),
    ]
    return rows


# --------------------------------------------------------------------------- find
@register("find", "local find at study level on a 100,000-study database (name wildcard, date range)")
def bench_find(ctx: Context) -> list[Row]:
    n = ctx.size(100_000, 2_000)
    db_path = data.find_database(n)
    archive = _open_archive(db_path.parent)
    rows = []
    try:
        date_range, n_dates = data.date_range_for(n)
        queries = [
            (f"find study PatientName=DOE^J* ({data.doe_matches(n):,} of {n:,})",
             {"PatientName": "DOE^J*"}, data.doe_matches(n)),
            (f"find study StudyDate={date_range} ({n_dates:,} of {n:,})",
             {"StudyDate": date_range}, n_dates),
        ]
        for label, query, expected in queries:
            got = len(archive.find("study", query))  # warm-up (and a check)
            if got != expected:
                raise RuntimeError(f"{label}: {got} matches, expected {expected}")
            times = ctx.repeat_timed(lambda q=query: archive.find("study", q), max(ctx.repeat, 7))
            rows.append(Row("find", label, "ms", ctx.median(times) * 1e3, higher_is_better=False,
                            target=Target.at_most(50, "ms"), samples=[t * 1e3 for t in times]))
    finally:
        archive.close()
    return rows
