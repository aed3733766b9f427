"""Import files and folders as a background job (menu, drag and drop)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from .jobs import Job
from .notify import ERROR, INFO, WARNING, notify

log = logging.getLogger(__name__)

#: Reasons listed in the message box itself; the rest go into its details.
MAX_LISTED = 5


def import_title(paths: Sequence[Path]) -> str:
    if len(paths) == 1:
        return f"Import {Path(paths[0]).name or paths[0]}"
    return f"Import {len(paths)} items"


def start_import(ctx, paths: Sequence[str | Path], *,
                 on_done: Callable[[Job], None] | None = None) -> Job:
    """Import ``paths`` on a worker thread; progress in the Activity panel; cancellable.

    When the job ends with files that were not imported, the user gets ONE
    message (a log line in server mode) saying how many and why.
    """
    paths = [Path(p) for p in paths]
    job = Job("import", import_title(paths))

    def work(job: Job):
        def progress(rep):
            job.update(done=rep.done, total=rep.total, rate=rep.rate,
                       status=f"{rep.imported} imported" + (f", {rep.failed} failed" if rep.failed else ""))

        rep = ctx.archive.import_paths(paths, progress=progress, cancel=job.cancel_event)
        for f in rep.failures:
            job.add_error(f.reason)
        for f in rep.skipped_files:
            job.add_error(f.reason)
        job.update(done=rep.done, total=rep.total, rate=rep.rate, status=rep.summary())
        return rep

    def done(job: Job):
        report_import(job)
        if on_done is not None:
            on_done(job)

    return ctx.jobs.start(job, work, on_done=done)


def report_import(job: Job) -> None:
    """The one message of a finished import job (nothing when all went well)."""
    rep = job.result
    if rep is None:  # the job itself failed (an unexpected error)
        notify(ERROR, "Import failed", f"{job.title} could not run.",
               details="\n".join(job.errors))
        return
    problems = list(rep.failures) + list(rep.skipped_files)
    if not problems:
        if rep.cancelled:
            log.info("%s cancelled: %s", job.title, rep.summary())
        return
    disk_full = any(f.kind == "disk-full" for f in rep.failures)
    n = len(problems)
    if disk_full:
        level, title = ERROR, "The disk is full"
        head = (f"{n} file(s) could not be stored because there is no space left for the "
                "database. Free some disk space and import them again.")
    elif rep.failures:
        level, title = WARNING, "Some files could not be imported"
        head = f"{n} of {rep.total} file(s) were not imported."
    else:
        level, title = INFO, "Some files were skipped"
        head = f"{n} of {rep.total} file(s) are not DICOM images and were skipped."
    if rep.imported:
        head += f" {rep.imported} file(s) were imported."
    listed = "\n".join(f"\u2022 {_short(p.reason)}" for p in problems[:MAX_LISTED])
    more = f"\n... and {n - MAX_LISTED} more (see Details)" if n > MAX_LISTED else ""
    notify(level, title, f"{head}\n\n{listed}{more}",
           details="\n".join(p.reason for p in problems))


def _short(reason: str) -> str:
    """'/long/path/to/file.dcm: why' -> 'file.dcm: why'."""
    head, sep, tail = reason.partition(": ")
    if sep and ("/" in head or "\\" in head):
        return f"{Path(head.split('!')[0]).name}{'!' + head.split('!', 1)[1] if '!' in head else ''}: {tail}"
    return reason
