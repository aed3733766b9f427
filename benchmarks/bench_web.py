"""Web server benchmarks: QIDO-RS study search and rendered JPEG, osirix-py vs Orthanc.

* ``qido``: ``GET /studies?limit=200`` (DICOM JSON) on 10,000 one-instance
  studies (1,000 in --quick runs), osirix-py's ``/dicomweb`` vs Orthanc's
  DICOMweb plugin; per request, median of the repetitions.  Target: at most
  half of Orthanc's time.
* ``rendered``: JPEG of a 512x512 CT slice, osirix-py's
  ``/api/instances/{uid}/rendered`` vs Orthanc's ``/instances/{id}/rendered``
  (Accept: image/jpeg).  Every request asks for a slice not rendered before
  (so osirix-py's render cache never answers); target: no slower than Orthanc.
* ``wado``: WADO-RS of a whole 100-instance 512x512 CT series
  (``GET /studies/{st}/series/{se}``, multipart/related application/dicom,
  ~52 MB), osirix-py's ``/dicomweb`` vs Orthanc's DICOMweb plugin; every byte
  read by the client.

Both servers get the same files through storescu first.  osirix-py runs as
configured by default, with authentication on: every request carries HTTP
Basic credentials of a user added with ``osirix-py users add`` (checked once
with scrypt, then from the server's credential cache).  Orthanc runs with its
authentication off.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
import urllib.request
from contextlib import ExitStack

from . import data, peers
from .harness import Context, Row, Target, register
from .peers import Orthanc, OsirixServer, PeerError

ORTHANC = "Orthanc"
#: The osirix-py user the benchmarks log in as (HTTP Basic).
BENCH_USER = ("bench", "bench-password-1")
_OURS_AUTH = "Basic " + base64.b64encode(":".join(BENCH_USER).encode()).decode()


def _unavailable(bench: str, name: str) -> list[Row] | None:
    ok, why = peers.osirix_server_available()
    if not ok:
        return [Row(bench, name, error=f"not available: {why}")]
    missing = peers.missing_tools(orthanc=True)
    if missing:
        return [Row(bench, name, error=f"not available: {', '.join(missing)} missing "
                                       f"(run scripts/setup.sh)")]
    return None


def _get(url: str, accept: str | None = None, timeout: float = 60.0) -> bytes:
    headers = {"Accept": accept} if accept else {}
    if _is_ours(url):
        headers["Authorization"] = _OURS_AUTH
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        if r.status != 200:
            raise PeerError(f"GET {url}: HTTP {r.status}")
        return r.read()


_OURS: set[str] = set()


def _is_ours(url: str) -> bool:
    return any(url.startswith(u) for u in _OURS)


def _timed_get(url: str, accept: str | None = None) -> tuple[float, bytes]:
    t0 = time.perf_counter()
    body = _get(url, accept)
    return time.perf_counter() - t0, body


def _osirix(ctx: Context, stack: ExitStack) -> tuple[OsirixServer, str]:
    http_port = peers.free_port()
    srv = OsirixServer(workdir=ctx.tempdir("osirix"), extra_args=["--http-port", str(http_port)])
    # The web server requires a user (authentication is on by default).
    res = subprocess.run([sys.executable, "-m", "osirix_py", "--data-dir", str(srv.data_dir),
                          "users", "add", BENCH_USER[0], "--role", "admin", "--password-stdin"],
                         input=BENCH_USER[1] + "\n", capture_output=True, text=True,
                         cwd=str(peers.ROOT), timeout=120)
    if res.returncode != 0:
        raise PeerError(f"osirix-py users add failed: {res.stderr.strip()}")
    srv = stack.enter_context(srv)
    url = f"http://{peers.LOOPBACK}:{http_port}"
    _OURS.add(url)
    peers.wait_until(lambda: peers.port_open(http_port), 30.0, "osirix-py HTTP server")
    return srv, url


@register("qido", "QIDO-RS study search returning 200 of 10,000 studies, osirix-py vs Orthanc "
                  "(DICOMweb plugin)")
def bench_qido(ctx: Context) -> list[Row]:
    n = ctx.size(10_000, 1_000)
    label = f"QIDO-RS /studies?limit=200 (of {n:,} studies)"
    na = _unavailable("qido", label)
    if na:
        return na
    if not peers.DICOMWEB_PLUGIN.exists():
        return [Row("qido", label, error="not available: Orthanc's DICOMweb plugin is missing")]
    fs = data.tiny_studies(n)
    with ExitStack() as stack:
        srv, ours_url = _osirix(ctx, stack)
        orth = stack.enter_context(Orthanc(shim=ctx.shim, workdir=ctx.tempdir("orthanc"),
                                           dicomweb=True))
        ctx.say(f"qido: loading {n:,} studies into osirix-py and Orthanc with storescu")
        peers.storescu([fs.root], aec=srv.aet, port=srv.port)
        peers.storescu([fs.root], aec=orth.aet, port=orth.dicom_port)
        urls = {"osirix-py": ours_url + "/dicomweb/studies?limit=200",
                ORTHANC: orth.url + "/dicom-web/studies?limit=200"}
        notes = []
        for who, url in urls.items():
            got = len(json.loads(_get(url)))
            if got != 200:
                notes.append(f"{who} answered {got}")
        per_rep = 5
        times: dict[str, list[float]] = {k: [] for k in urls}
        for _ in range(ctx.repeat):
            for who, url in urls.items():
                ts = [_timed_get(url)[0] for _ in range(per_rep)]
                times[who].append(ctx.median(ts) * 1e3)
    ctx.cleanup()
    row = Row("qido", label, "ms", ctx.median(times["osirix-py"]), ctx.median(times[ORTHANC]),
              "Orthanc DICOMweb", higher_is_better=False, target=Target.ratio_at_least(2.0, "Orthanc"),
              note="; ".join(notes), samples=times["osirix-py"], peer_samples=times[ORTHANC])
    ctx.say(f"qido: {row.ours:.1f} ms vs {row.peer:.1f} ms")
    return [row]


@register("rendered", "JPEG of a 512x512 CT slice (uncached), osirix-py /api/instances/{uid}/rendered "
                      "vs Orthanc /instances/{id}/rendered")
def bench_rendered(ctx: Context) -> list[Row]:
    label = "rendered JPEG of a 512x512 CT slice"
    na = _unavailable("rendered", label)
    if na:
        return na
    fs = data.ct_series(ctx.size(20, 2), 100)
    series = fs.manifest["series"][0]
    n = series["count"]
    with ExitStack() as stack:
        srv, ours_url = _osirix(ctx, stack)
        orth = stack.enter_context(Orthanc(shim=ctx.shim, workdir=ctx.tempdir("orthanc")))
        series_dir = fs.root / series["dir"]
        peers.storescu([series_dir], aec=srv.aet, port=srv.port)
        peers.storescu([series_dir], aec=orth.aet, port=orth.dicom_port)
        ours = json.loads(_get(f"{ours_url}/api/instances?SeriesInstanceUID={series['series_uid']}"
                               f"&limit=1000"))
        sops = [r["SOPInstanceUID"] for r in ours]
        theirs = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"]
                  for i in orth.rest("/instances?expand")}
        if len(sops) != n or not set(sops) <= set(theirs):
            raise PeerError(f"rendered: osirix-py holds {len(sops)}, Orthanc {len(theirs)} of {n}")
        # Warm both servers up (imports, first decode) on the last slice.
        _get(f"{ours_url}/api/instances/{sops[-1]}/rendered", "image/jpeg")
        _get(f"{orth.url}/instances/{theirs[sops[-1]]}/rendered", "image/jpeg")
        per_rep = max(1, min(20, (n - 1) // max(1, ctx.repeat)))
        times: dict[str, list[float]] = {"osirix-py": [], ORTHANC: []}
        sizes = []
        for r in range(ctx.repeat):
            chunk = sops[r * per_rep:(r + 1) * per_rep]
            t_ours, t_orth = [], []
            for sop in chunk:
                t, body = _timed_get(f"{ours_url}/api/instances/{sop}/rendered", "image/jpeg")
                if body[:2] != b"\xff\xd8":
                    raise PeerError("osirix-py did not answer a JPEG")
                sizes.append(len(body))
                t_ours.append(t)
                t, body = _timed_get(f"{orth.url}/instances/{theirs[sop]}/rendered", "image/jpeg")
                if body[:2] != b"\xff\xd8":
                    raise PeerError("Orthanc did not answer a JPEG")
                t_orth.append(t)
            times["osirix-py"].append(ctx.median(t_ours) * 1e3)
            times[ORTHANC].append(ctx.median(t_orth) * 1e3)
    ctx.cleanup()
    row = Row("rendered", label, "ms", ctx.median(times["osirix-py"]), ctx.median(times[ORTHANC]),
              "Orthanc", higher_is_better=False, target=Target.ratio_at_least(1.0, "Orthanc"),
              samples=times["osirix-py"], peer_samples=times[ORTHANC])
    ctx.say(f"rendered: {row.ours:.1f} ms vs {row.peer:.1f} ms per slice")
    return [row]


@register("wado", "WADO-RS of a 100-instance 512x512 CT series (multipart/related), osirix-py "
                  "vs Orthanc (DICOMweb plugin)")
def bench_wado(ctx: Context) -> list[Row]:
    label = "WADO-RS of a 100-instance CT series (512x512, ~52 MB)"
    na = _unavailable("wado", label)
    if na:
        return na
    if not peers.DICOMWEB_PLUGIN.exists():
        return [Row("wado", label, error="not available: Orthanc's DICOMweb plugin is missing")]
    fs = data.ct_series(1, 100)
    series = fs.manifest["series"][0]
    st, se, n = series["study_uid"], series["series_uid"], series["count"]
    accept = 'multipart/related; type="application/dicom"'
    with ExitStack() as stack:
        srv, ours_url = _osirix(ctx, stack)
        orth = stack.enter_context(Orthanc(shim=ctx.shim, workdir=ctx.tempdir("orthanc"),
                                           dicomweb=True))
        series_dir = fs.root / series["dir"]
        peers.storescu([series_dir], aec=srv.aet, port=srv.port)
        peers.storescu([series_dir], aec=orth.aet, port=orth.dicom_port)
        urls = {"osirix-py": f"{ours_url}/dicomweb/studies/{st}/series/{se}",
                ORTHANC: f"{orth.url}/dicom-web/studies/{st}/series/{se}"}
        sizes = {}
        for who, url in urls.items():  # warm-up, and a check of what came back
            body = _get(url, accept, timeout=300)
            parts = body.count(b"Content-Type: application/dicom") \
                + body.count(b"content-type: application/dicom")
            sizes[who] = len(body)
            if parts != n:
                raise PeerError(f"wado: {who} answered {parts} parts, not {n}")
        times: dict[str, list[float]] = {k: [] for k in urls}
        for _ in range(ctx.repeat):
            for who, url in urls.items():
                t0 = time.perf_counter()
                _get(url, accept, timeout=300)
                times[who].append((time.perf_counter() - t0) * 1e3)
    ctx.cleanup()
    mb = sizes["osirix-py"] / 1e6
    row = Row("wado", label, "ms", ctx.median(times["osirix-py"]), ctx.median(times[ORTHANC]),
              "Orthanc DICOMweb", higher_is_better=False,
              target=Target.ratio_at_least(1.0, "Orthanc"),
              note=f"{mb:.1f} MB from osirix-py, {sizes[ORTHANC] / 1e6:.1f} MB from Orthanc",
              samples=times["osirix-py"], peer_samples=times[ORTHANC])
    ctx.say(f"wado: {row.ours:.0f} ms vs {row.peer:.0f} ms for {n} instances")
    return [row]
