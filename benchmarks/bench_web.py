"""Web server benchmarks: QIDO-RS study search and rendered JPEG, osirix-py vs Orthanc.

* ``qido``: ``GET /studies?limit=200`` (DICOM JSON) on 10,000 one-instance
  studies (1,000 in --quick runs), osirix-py's ``/dicomweb`` vs Orthanc's
  DICOMweb plugin; per request, median of the repetitions.  Target: at most
  half of Orthanc's time.
* ``rendered``: JPEG of a 512x512 CT slice, osirix-py's
  ``/api/instances/{uid}/rendered`` vs Orthanc's ``/instances/{id}/rendered``
  (Accept: image/jpeg, default window, size and quality 90 on both), through one
  keep-alive connection per server (the same ``http.client`` code for both).
  Slices from the middle of the series (the ends are air only: black images),
  each asked once of each server, who goes first alternating: a first render
  (osirix-py's render cache never answers); target: no slower than Orthanc.
  A second row asks for the same slices again: osirix-py answers from its
  render cache, Orthanc (which has none) renders again; no target.
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
import http.client
import json
import subprocess
import sys
import time
import urllib.parse
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


class _KeepAlive:
    """One persistent HTTP/1.1 connection per server (http.client), the same for both
    peers: a viewer keeps its connection open, and a new TCP connection per image would
    measure connection set-up (and urllib's own overhead) as much as rendering."""

    def __init__(self) -> None:
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def get(self, url: str, accept: str | None = None) -> bytes:
        u = urllib.parse.urlsplit(url)
        conn = self._conns.get(u.netloc)
        if conn is None:
            conn = self._conns[u.netloc] = http.client.HTTPConnection(u.hostname, u.port,
                                                                      timeout=60)
        headers = {"Accept": accept} if accept else {}
        if _is_ours(url):
            headers["Authorization"] = _OURS_AUTH
        conn.request("GET", u.path + (f"?{u.query}" if u.query else ""), headers=headers)
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise PeerError(f"GET {url}: HTTP {r.status}")
        if r.will_close:
            conn.close()
            del self._conns[u.netloc]
        return body

    def timed_get(self, url: str, accept: str | None = None) -> tuple[float, bytes]:
        t0 = time.perf_counter()
        body = self.get(url, accept)
        return time.perf_counter() - t0, body

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


@register("rendered", "JPEG of a 512x512 CT slice (first render of each slice), osirix-py "
                      "/api/instances/{uid}/rendered vs Orthanc /instances/{id}/rendered; "
                      "and a repeat request of the same slices")
def bench_rendered(ctx: Context) -> list[Row]:
    label = "rendered JPEG of a 512x512 CT slice"
    label_again = "rendered JPEG, same slice again (osirix-py: render cache)"
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
        sops = [r["SOPInstanceUID"] for r in sorted(ours, key=lambda r: int(r["InstanceNumber"]))]
        theirs = {i["MainDicomTags"]["SOPInstanceUID"]: i["ID"]
                  for i in orth.rest("/instances?expand")}
        if len(sops) != n or not set(sops) <= set(theirs):
            raise PeerError(f"rendered: osirix-py holds {len(sops)}, Orthanc {len(theirs)} of {n}")
        # The synthetic series' first and last tenth are air only (an all-black JPEG
        # that costs almost nothing to encode): measure slices of the middle, which
        # show the phantom.
        middle = sops[n // 5:n - n // 5]
        client = _KeepAlive()
        stack.callback(client.close)

        def ours_get(sop):
            return client.timed_get(f"{ours_url}/api/instances/{sop}/rendered", "image/jpeg")

        def orth_get(sop):
            return client.timed_get(f"{orth.url}/instances/{theirs[sop]}/rendered", "image/jpeg")

        # Warm both servers up (imports, first decode, connections) on a slice that
        # is not measured.
        ours_get(sops[n // 5 - 1])
        orth_get(sops[n // 5 - 1])
        per_rep = max(1, min(20, len(middle) // max(1, ctx.repeat)))
        times: dict[str, list[float]] = {"osirix-py": [], ORTHANC: []}
        again: dict[str, list[float]] = {"osirix-py": [], ORTHANC: []}
        sizes: dict[str, list[int]] = {"osirix-py": [], ORTHANC: []}
        for r in range(ctx.repeat):
            chunk = middle[r * per_rep:(r + 1) * per_rep]
            for out in (times, again):  # first render of each slice, then the same again
                t_one: dict[str, list[float]] = {"osirix-py": [], ORTHANC: []}
                for k, sop in enumerate(chunk):
                    # Same slice from both, who goes first alternating.
                    order = (("osirix-py", ours_get), (ORTHANC, orth_get))
                    for who, fetch in (order if k % 2 == 0 else order[::-1]):
                        t, body = fetch(sop)
                        if body[:2] != b"\xff\xd8":
                            raise PeerError(f"{who} did not answer a JPEG")
                        t_one[who].append(t)
                        if out is times:
                            sizes[who].append(len(body))
                for who, ts in t_one.items():
                    out[who].append(ctx.median(ts) * 1e3)
    ctx.cleanup()
    kb = {who: ctx.median(v) / 1e3 for who, v in sizes.items()}
    note = (f"{per_rep} distinct slices a repetition, keep-alive, quality 90; "
            f"{kb['osirix-py']:.1f} vs {kb[ORTHANC]:.1f} kB")
    row = Row("rendered", label, "ms", ctx.median(times["osirix-py"]), ctx.median(times[ORTHANC]),
              "Orthanc", higher_is_better=False, target=Target.ratio_at_least(1.0, "Orthanc"),
              note=note, samples=times["osirix-py"], peer_samples=times[ORTHANC])
    row_again = Row("rendered", label_again, "ms", ctx.median(again["osirix-py"]),
                    ctx.median(again[ORTHANC]), "Orthanc", higher_is_better=False,
                    note="Orthanc renders again",
                    samples=again["osirix-py"], peer_samples=again[ORTHANC])
    ctx.say(f"rendered: {row.ours:.2f} ms vs {row.peer:.2f} ms per slice (first render); "
            f"{row_again.ours:.2f} ms vs {row_again.peer:.2f} ms again")
    return [row, row_again]


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
