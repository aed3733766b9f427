"""Client-side benchmarks: ``retrieve`` (C-GET / C-MOVE from Orthanc) and ``send`` (C-STORE).

* retrieve -- a 100-slice 512x512 CT series from Orthanc into an in-process
  osirix-py runtime (archive with fsync + index), by C-GET
  (:func:`osirix_py.net.client.retrieve`, instances stored through the archive)
  beside dcmtk ``getscu`` (files only), and by C-MOVE to our own listener beside
  dcmtk ``movescu`` to a ``storescp``.  Seconds for the whole retrieve
  (association included; dcmtk's ~40 ms process start included).  Target:
  <= 1.2x their time.
* send -- N 512x512 CT instances from the archive to a ``storescp`` (files
  only) in one association, beside dcmtk ``storescu`` of the same files.
  Target: <= 1.5x storescu's time.
"""

from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from pathlib import Path

from . import data, peers
from .harness import WARM_UP, Context, Row, Target, register, rotated
from .peers import OSIRIX_AET, STORESCP_AET, Orthanc, PeerError, StoreSCP


def _unavailable(bench: str, label: str, *, orthanc: bool = True) -> list[Row] | None:
    missing = peers.missing_tools(orthanc=orthanc)
    if missing:
        return [Row(bench, label, error=f"not available: {', '.join(missing)} missing "
                                        f"(run scripts/setup.sh)")]
    return None


def _runtime(ctx: Context, name: str, port: int = 0):
    from osirix_py.config import HttpConfig, ListenerConfig, Settings
    from osirix_py.server.runtime import Runtime, settle_heap

    settings = Settings(data_dir=ctx.tempdir(name),
                        listener=ListenerConfig(ae_title=OSIRIX_AET, port=port, bind_address=peers.LOOPBACK),
                        http=HttpConfig(enabled=False))
    rt = Runtime(settings).start()
    # As the GUI and `osirix-py server` do once started: without it, a full
    # garbage collection walking this process's ~10^5 long-lived objects fell
    # inside a timed retrieve now and then (45-55 ms, seen twice in 60 runs).
    settle_heap()
    return rt


@register("retrieve", "C-GET / C-MOVE of a 100-slice 512x512 CT series from Orthanc into osirix-py "
                      "vs dcmtk getscu / movescu")
def bench_retrieve(ctx: Context) -> list[Row]:
    from osirix_py.net.client import retrieve
    from osirix_py.services.nodes import Node

    label_get, label_move = "C-GET 100-slice CT from Orthanc", "C-MOVE 100-slice CT from Orthanc"
    na = _unavailable("retrieve", label_get)
    if na:
        return na
    fs = data.ct_series(ctx.size(20, 2), 100)
    series = fs.manifest["series"][0]
    n = series["count"]
    keys = {"StudyInstanceUID": series["study_uid"], "SeriesInstanceUID": series["series_uid"]}
    our_port = peers.free_port()
    times: dict[str, list[float]] = {"get": [], "getscu": [], "move": [], "movescu": []}
    with ExitStack() as stack:
        dest = stack.enter_context(StoreSCP(shim=ctx.shim, workdir=ctx.tempdir("dest")))
        orth = stack.enter_context(Orthanc(
            shim=ctx.shim, workdir=ctx.tempdir("orthanc"),
            modalities={STORESCP_AET: (STORESCP_AET, dest.port), OSIRIX_AET: (OSIRIX_AET, our_port)}))
        peers.storescu([fs.root / series["dir"]], aec=orth.aet, port=orth.dicom_port)
        rt = _runtime(ctx, "osirix", our_port)
        stack.callback(rt.stop)
        node = Node("orthanc", orth.aet, peers.LOOPBACK, orth.dicom_port)
        get_dir = ctx.tempdir("getscu")

        def ours(method: str) -> float:
            if rt.archive.count("study"):
                rt.archive.delete("study", series["study_uid"])
            t0 = time.perf_counter()
            prog = retrieve(node, rt.archive, study_uid=series["study_uid"],
                            series_uid=series["series_uid"], method=method, calling_ae=OSIRIX_AET)
            dt = time.perf_counter() - t0
            got = rt.archive.count("image")
            if prog.completed != n or got != n:
                raise PeerError(f"C-{method.upper()}: {prog.summary()}, {got} in the archive")
            return dt

        # Each dcmtk run's files go as soon as they are counted: never synced,
        # they would otherwise still be waiting in the page cache when our
        # next retrieve syncs the file system, and be written out on its
        # clock (measured: ~15 ms of a 120 ms retrieve).
        def getscu() -> float:
            t = peers.getscu(keys, aec=orth.aet, port=orth.dicom_port, out_dir=get_dir)
            got = peers.count_files(get_dir)
            shutil.rmtree(get_dir, ignore_errors=True)
            if got != n:
                raise PeerError(f"getscu: {got} of {n} arrived")
            return t

        def movescu() -> float:
            t = peers.movescu(keys, aec=orth.aet, port=orth.dicom_port, dest=STORESCP_AET)
            got = dest.count_files()
            dest.clear()
            if got != n:
                raise PeerError(f"movescu: {got} of {n} arrived")
            return t

        runs = {"get": lambda: ours("get"), "getscu": getscu,
                "move": lambda: ours("move"), "movescu": movescu}
        for rep in range(-WARM_UP, ctx.repeat):
            # (Each side runs first in every other repetition: see rotated().)
            for pair in (["get", "getscu"], ["move", "movescu"]):
                for who in rotated(pair, rep):
                    t = runs[who]()
                    if rep >= 0:
                        times[who].append(t)
            if rep < 0:
                continue
            ctx.say(f"retrieve run {rep + 1}/{ctx.repeat}: " +
                    ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    med = {k: ctx.median(v) for k, v in times.items()}
    return [
        Row("retrieve", label_get, "s", med["get"], med["getscu"], "dcmtk getscu (files only)",
            higher_is_better=False, target=Target.ratio_at_least(1 / 1.2, "getscu"),
            samples=times["get"], peer_samples=times["getscu"],
            note="ours stores into the archive: index + fsync, grouped, all done before it returns"),
        Row("retrieve", label_move, "s", med["move"], med["movescu"], "dcmtk movescu -> storescp",
            higher_is_better=False, target=Target.ratio_at_least(1 / 1.2, "movescu"),
            samples=times["move"], peer_samples=times["movescu"],
            note="ours: our listener stores the PACS's instances; index + fsync grouped, "
                 "all done before it returns"),
    ]


@register("send", "C-STORE of N 512x512 CT instances from the archive to storescp vs dcmtk storescu")
def bench_send(ctx: Context) -> list[Row]:
    from osirix_py.net.client import send
    from osirix_py.services.nodes import Node

    n_series = ctx.size(10, 2)
    label = f"send {n_series * 100:,} CT 512x512 to storescp, 1 assoc"
    na = _unavailable("send", label, orthanc=False)
    if na:
        return na
    fs = data.ct_series(ctx.size(20, 2), 100)
    dirs = [fs.root / s["dir"] for s in fs.manifest["series"][:n_series]]
    n = sum(s["count"] for s in fs.manifest["series"][:n_series])
    times: dict[str, list[float]] = {"ours": [], "storescu": []}
    with ExitStack() as stack:
        scp = stack.enter_context(StoreSCP(shim=ctx.shim, workdir=ctx.tempdir("storescp")))
        rt = _runtime(ctx, "osirix-send")
        stack.callback(rt.stop)
        rep_ = rt.archive.import_paths(dirs)
        if rep_.imported != n:
            raise PeerError(f"import: {rep_.summary()}")
        rows = rt.archive.find("image", {})
        node = Node("scp", scp.aet, peers.LOOPBACK, scp.port)
        for rep in range(ctx.repeat):
            scp.clear()
            t0 = time.perf_counter()
            prog = send(node, rt.archive, rows, calling_ae=OSIRIX_AET)
            times["ours"].append(time.perf_counter() - t0)
            if prog.completed != n or scp.count_files() != n:
                raise PeerError(f"send: {prog.summary()}, storescp holds {scp.count_files()}")
            scp.clear()
            times["storescu"].append(peers.storescu(dirs, aec=scp.aet, port=scp.port))
            ctx.say(f"send run {rep + 1}/{ctx.repeat}: ours {n / times['ours'][-1]:.0f}/s, "
                    f"storescu {n / times['storescu'][-1]:.0f}/s")
    med = {k: ctx.median(v) for k, v in times.items()}
    return [Row("send", label, "s", med["ours"], med["storescu"], "dcmtk storescu",
                higher_is_better=False, target=Target.ratio_at_least(1 / 1.5, "storescu"),
                samples=times["ours"], peer_samples=times["storescu"])]
