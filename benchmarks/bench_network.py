"""DICOM network benchmarks against real peers: ``storescu``, ``cfind``, ``cmove``, ``cget``.

Every peer runs on 127.0.0.1 with free ports and its own temporary directory
(see :mod:`benchmarks.peers`); every dcmtk client runs with ``TCP_NODELAY=1``.

* storescu -- C-STORE of N 512x512 CT instances in ONE association (dcmtk
  storescu) to a fresh osirix-py server, a fresh Orthanc (SQLite index) and a
  storescp that only writes files.  Rate in instances/s (process start included).
* cfind -- C-FIND at study level, per query inside one association: findscu
  ``--repeat`` 1 and ``--repeat R``, the difference divided by R-1 (removes the
  30-40 ms process start and the association set-up).  Both servers hold the same
  studies, loaded with storescu.
* cmove / cget -- C-MOVE of a 100-slice series to a storescp, C-GET of it with
  getscu; seconds for the whole client run (process start included, ~40 ms).
"""

from __future__ import annotations

import os
import shutil
from contextlib import ExitStack
from pathlib import Path

from . import data, peers
from .harness import WARM_UP, Context, Row, Target, register, rotated
from .peers import OSIRIX_AET, STORESCP_AET, Orthanc, OsirixServer, PeerError, StoreSCP

ORTHANC = "Orthanc"


def _unavailable(bench: str, name: str, *, orthanc: bool = True) -> list[Row] | None:
    """A 'not available' row when osirix-py's server or a peer cannot run here."""
    ok, why = peers.osirix_server_available()
    if not ok:
        return [Row(bench, name, error=f"not available: {why}")]
    missing = peers.missing_tools(orthanc=orthanc)
    if missing:
        return [Row(bench, name, error=f"not available: {', '.join(missing)} missing "
                                       f"(run scripts/setup.sh)")]
    return None


def _expect(what: str, got: int, expected: int) -> None:
    if got != expected:
        raise PeerError(f"{what}: holds {got} instance(s), expected {expected}")


# --------------------------------------------------------------------------- C-STORE
@register("storescu", "C-STORE of N 512x512 CT instances (dcmtk storescu, one association) "
                      "to osirix-py vs Orthanc vs storescp")
def bench_storescu(ctx: Context) -> list[Row]:
    n_series = ctx.size(10, 2)
    label = f"C-STORE {n_series * 100:,} CT 512x512, 1 assoc"
    na = _unavailable("storescu", label)
    if na:
        return na
    fs = data.ct_series(ctx.size(20, 2), 100)
    dirs = fs.series_dirs[:n_series]
    n = sum(s["count"] for s in fs.manifest["series"][:n_series])
    times: dict[str, list[float]] = {"osirix-py": [], ORTHANC: [], "storescp": []}

    def run(who: str) -> None:
        if who == "osirix-py":
            with OsirixServer(workdir=ctx.tempdir("osirix")) as srv:
                times[who].append(peers.storescu(dirs, aec=srv.aet, port=srv.port))
                _expect(who, srv.count_instances(), n)
        elif who == ORTHANC:
            with Orthanc(shim=ctx.shim, workdir=ctx.tempdir("orthanc")) as orth:
                times[who].append(peers.storescu(dirs, aec=orth.aet, port=orth.dicom_port))
                _expect("Orthanc", orth.count_instances(), n)
        else:
            with StoreSCP(shim=ctx.shim, workdir=ctx.tempdir("storescp")) as scp:
                times[who].append(peers.storescu(dirs, aec=scp.aet, port=scp.port))
                _expect(who, scp.count_files(), n)

    for rep in range(ctx.repeat):
        for who in rotated(list(times), rep):
            run(who)
            # Orthanc and storescp leave their files unsynced: written out
            # by the next run's file-system sync, on its clock (ours syncs
            # the file system before each acknowledgement).  Flushed here,
            # between runs, untimed.
            os.sync()
        ctx.say(f"storescu run {rep + 1}/{ctx.repeat}: " + ", ".join(
            f"{k} {n / v[-1]:.0f}/s" for k, v in times.items()))
        ctx.cleanup()
    rate = {k: [n / t for t in v] for k, v in times.items()}
    med = {k: ctx.median(v) for k, v in rate.items()}
    return [
        Row("storescu", label, "inst/s", med["osirix-py"], med[ORTHANC], "Orthanc SQLite",
            target=Target.ratio_at_least(1.5, "Orthanc"), samples=rate["osirix-py"],
            peer_samples=rate[ORTHANC]),
        Row("storescu", label, "inst/s", med["osirix-py"], med["storescp"], "storescp, files only",
            samples=rate["osirix-py"], peer_samples=rate["storescp"]),
    ]


# --------------------------------------------------------------------------- C-FIND
_RETURN_KEYS = {"PatientName": "", "PatientID": "", "StudyDate": "", "StudyTime": "",
                "AccessionNumber": "", "StudyDescription": "", "StudyInstanceUID": ""}


def _per_query(ctx: Context, keys: dict, aec: str, port: int, reps: int) -> list[float]:
    """Seconds per C-FIND inside one association: (t(--repeat R) - t(--repeat 1)) / (R - 1)."""
    out = []
    for _ in range(ctx.repeat):
        t1 = peers.findscu(keys, aec=aec, port=port, repeat=1)
        tr = peers.findscu(keys, aec=aec, port=port, repeat=reps)
        out.append(max(tr - t1, 0.0) / (reps - 1))
    return out


def _count_matches(keys: dict, aec: str, port: int) -> int:
    """Number of pending responses of one C-FIND (findscu -v logs one line per match)."""
    import subprocess

    argv = ["findscu", "-v", "-aet", "FINDSCU", "-aec", aec, "-S", "-k", "QueryRetrieveLevel=STUDY"]
    for k, v in keys.items():
        argv += ["-k", f"{k}={v}" if v != "" else k]
    argv += [peers.LOOPBACK, str(port)]
    res = subprocess.run(argv, capture_output=True, text=True, env=peers.client_env(), timeout=600)
    text = res.stdout + res.stderr
    return sum(1 for line in text.splitlines() if "Find Response:" in line and "Pending" in line)


@register("cfind", "C-FIND at study level per query, one association (findscu --repeat), "
                   "on 200 and 10,000 studies, osirix-py vs Orthanc")
def bench_cfind(ctx: Context) -> list[Row]:
    sizes = ctx.size((201, 10_000), (201, 1_000))
    na = _unavailable("cfind", "C-FIND study level")
    if na:
        return na
    rows = []
    for n in sizes:
        fs = data.tiny_studies(n)
        doe = data.doe_matches(n)
        with ExitStack() as stack:
            srv = stack.enter_context(OsirixServer(workdir=ctx.tempdir("osirix")))
            orth = stack.enter_context(Orthanc(shim=ctx.shim, workdir=ctx.tempdir("orthanc")))
            ctx.say(f"cfind: loading {n:,} studies into osirix-py and Orthanc with storescu")
            t_ours = peers.storescu([fs.root], aec=srv.aet, port=srv.port)
            t_orth = peers.storescu([fs.root], aec=orth.aet, port=orth.dicom_port)
            _expect("osirix-py", srv.count_instances(), n)
            _expect("Orthanc", orth.count_instances(), n)
            ctx.say(f"cfind: loaded in {t_ours:.1f} s (osirix-py) / {t_orth:.1f} s (Orthanc)")
            one = fs.manifest["series"][n // 2]["patient_id"]
            queries = [
                (f"C-FIND PatientName=DOE^J* ({doe:,} of {n:,})", {**_RETURN_KEYS, "PatientName": "DOE^J*"},
                 doe, 3 if doe > 500 else 16),
                (f"C-FIND PatientID exact (1 of {n:,})", {**_RETURN_KEYS, "PatientID": one}, 1, 201),
            ]
            for label, keys, expected, reps in queries:
                notes = []
                for who, aec, port in (("osirix-py", srv.aet, srv.port),
                                       (ORTHANC, orth.aet, orth.dicom_port)):
                    got = _count_matches(keys, aec, port)
                    if got != expected:
                        notes.append(f"{who} answered {got}")
                ours = [t * 1e3 for t in _per_query(ctx, keys, srv.aet, srv.port, reps)]
                theirs = [t * 1e3 for t in _per_query(ctx, keys, orth.aet, orth.dicom_port, reps)]
                rows.append(Row("cfind", label, "ms", ctx.median(ours), ctx.median(theirs), "Orthanc SQLite",
                                higher_is_better=False, target=Target.ratio_at_least(1.0, "Orthanc"),
                                note="; ".join(notes), samples=ours, peer_samples=theirs))
                ctx.say(f"cfind: {label}: {rows[-1].ours:.1f} ms vs {rows[-1].peer:.1f} ms")
        ctx.cleanup()
    return rows


# --------------------------------------------------------------------------- C-MOVE / C-GET
def _retrieve(ctx: Context, bench: str) -> list[Row]:
    label = "C-MOVE 100-slice CT series to storescp" if bench == "cmove" else \
        "C-GET 100-slice CT series (getscu)"
    na = _unavailable(bench, label)
    if na:
        return na
    fs = data.ct_series(ctx.size(20, 2), 100)  # series 0 is the same in every set
    series = fs.manifest["series"][0]
    n = series["count"]
    keys = {"StudyInstanceUID": series["study_uid"], "SeriesInstanceUID": series["series_uid"]}
    with ExitStack() as stack:
        dest = stack.enter_context(StoreSCP(shim=ctx.shim, workdir=ctx.tempdir("dest")))
        srv = stack.enter_context(OsirixServer(workdir=ctx.tempdir("osirix"),
                                               nodes={STORESCP_AET: (STORESCP_AET, dest.port)}))
        orth = stack.enter_context(Orthanc(
            shim=ctx.shim, workdir=ctx.tempdir("orthanc"),
            modalities={STORESCP_AET: (STORESCP_AET, dest.port), OSIRIX_AET: (OSIRIX_AET, srv.port)}))
        series_dir = fs.root / series["dir"]
        peers.storescu([series_dir], aec=srv.aet, port=srv.port)
        peers.storescu([series_dir], aec=orth.aet, port=orth.dicom_port)
        _expect("osirix-py", srv.count_instances(), n)
        _expect("Orthanc", orth.count_instances(), n)
        times: dict[str, list[float]] = {"osirix-py": [], ORTHANC: []}
        targets = {"osirix-py": (srv.aet, srv.port), ORTHANC: (orth.aet, orth.dicom_port)}
        get_dir = ctx.tempdir("getscu")
        for rep in range(-WARM_UP, ctx.repeat):  # (see WARM_UP)
            for who in rotated(list(targets), rep):
                aec, port = targets[who]
                if bench == "cmove":
                    dest.clear()
                    t = peers.movescu(keys, aec=aec, port=port, dest=STORESCP_AET)
                    got = dest.count_files()
                else:
                    shutil.rmtree(get_dir, ignore_errors=True)
                    t = peers.getscu(keys, aec=aec, port=port, out_dir=get_dir)
                    got = sum(1 for p in Path(get_dir).iterdir() if p.is_file())
                if got != n:
                    raise PeerError(f"{bench} from {who}: {got} of {n} instances arrived")
                if rep >= 0:
                    times[who].append(t)
    return [Row(bench, label, "s", ctx.median(times["osirix-py"]), ctx.median(times[ORTHANC]),
                "Orthanc SQLite", higher_is_better=False, target=Target.ratio_at_least(1.0, "Orthanc"),
                samples=times["osirix-py"], peer_samples=times[ORTHANC])]


@register("cmove", "C-MOVE of a 100-slice 512x512 CT series to a storescp, osirix-py vs Orthanc")
def bench_cmove(ctx: Context) -> list[Row]:
    return _retrieve(ctx, "cmove")


@register("cget", "C-GET of a 100-slice 512x512 CT series (getscu), osirix-py vs Orthanc")
def bench_cget(ctx: Context) -> list[Row]:
    return _retrieve(ctx, "cget")
