"""The benchmark harness: a registry of benchmarks, repeated runs, a table of ratios.

Run ``python -m benchmarks --help`` from the repository root.

Adding a benchmark
------------------
A benchmark is a function of a :class:`Context` that returns one or more
:class:`Row` s (or dicts with the same keys), registered under a short name::

    from benchmarks.harness import Row, Target, register

    @register("mip", "numpy MIP of a 512x512x300 volume")
    def bench_mip(ctx):
        times = ctx.repeat_timed(lambda: volume.max(axis=0))
        return Row("mip", "MIP 512x512x300", "ms", ctx.median(times) * 1e3,
                   higher_is_better=False, target=Target.at_most(20, "ms"))

Modules listed in :data:`OPTIONAL_MODULES` (``benchmarks/bench_imaging.py``
...) are imported when present; each may register with the decorator, expose a
``BENCHMARKS`` dict (name -> function) or plain ``bench_<name>`` functions.
A plain function may take no argument or the context; it may return rows, a
dict, a number of seconds, or nothing (then the harness times the call).

Each benchmark runs its measurement ``ctx.repeat`` times and reports the
median.  ``ratio`` is always "how many times better osirix-py is": ours/peer
for rates, peer/ours for times.  Benchmarks that need something missing (a
peer, a module another engineer is still writing) return a row with
``error="not available: ..."`` instead of failing the run.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import inspect
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger("benchmarks")

ROOT = Path(__file__).resolve().parent.parent

#: Benchmark modules of this package (registered with @register when imported).
BUILTIN_MODULES = ("benchmarks.bench_archive", "benchmarks.bench_network", "benchmarks.bench_volume")
#: Modules other engineers add; imported only when present.
OPTIONAL_MODULES = ("benchmarks.bench_imaging", "benchmarks.bench_render", "benchmarks.bench_gui",
                    "benchmarks.bench_web", "benchmarks.bench_client")


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class Target:
    """What counts as good: ``ratio >= value`` or ``ours <= value`` / ``ours >= value``."""

    kind: str  # "ratio_min", "max", "min"
    value: float
    unit: str = ""
    against: str = ""

    @classmethod
    def ratio_at_least(cls, value: float, against: str = "") -> "Target":
        return cls("ratio_min", value, "x", against)

    @classmethod
    def at_most(cls, value: float, unit: str) -> "Target":
        return cls("max", value, unit)

    @classmethod
    def at_least(cls, value: float, unit: str) -> "Target":
        return cls("min", value, unit)

    def text(self) -> str:
        if self.kind == "ratio_min":
            return f">= {self.value:g}x" + (f" {self.against}" if self.against else "")
        if self.kind == "max":
            return f"< {self.value:g} {self.unit}".rstrip()
        return f">= {self.value:g} {self.unit}".rstrip()

    def met(self, row: "Row") -> bool | None:
        if self.kind == "ratio_min":
            r = row.ratio
            return None if r is None else r >= self.value
        if row.ours is None:
            return None
        return row.ours <= self.value if self.kind == "max" else row.ours >= self.value


@dataclass
class Row:
    benchmark: str
    name: str
    unit: str = ""
    ours: float | None = None
    peer: float | None = None
    peer_name: str = ""
    higher_is_better: bool = True
    target: Target | None = None
    note: str = ""
    error: str = ""
    samples: list[float] = field(default_factory=list)
    peer_samples: list[float] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.ours is None or self.peer is None or self.ours <= 0 or self.peer <= 0:
            return None
        return self.ours / self.peer if self.higher_is_better else self.peer / self.ours

    @property
    def met(self) -> bool | None:
        if self.error or self.target is None:
            return None
        return self.target.met(self)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target"] = self.target.text() if self.target else None
        d["ratio"] = self.ratio
        d["met"] = self.met
        return d


# --------------------------------------------------------------------------- context
#: Untimed rounds before the timed ones in the benchmarks between two
#: long-running programs (a retrieve into our runtime from Orthanc, a
#: retrieve from our server or Orthanc): each side's first run pays
#: one-time costs a running server or workstation has long paid (lazy
#: imports, thread pools, statement caches, files not yet in the page
#: cache) -- in two runs of the retrieve benchmark, our first C-GET took 140
#: and 227 ms where the next five took 95-114 and 114-172 ms.  Every side
#: gets the same rounds, the dcmtk tools too.
WARM_UP = 1


def rotated(items: list, k: int) -> list:
    """*items* rotated left by *k*: the order of the runs of repetition *k*.

    Which run follows another matters on this kind of machine: deleting a
    run's files makes every file created in the next minute slower (ext4
    without a journal scans the inodes deleted in the last 60 s on each
    create: measured 0.05 -> 0.86 ms per create after deleting ~3,000
    files), and page-cache pages freed by a deletion are cheaper to fill
    than fresh ones.  Rotating gives each side each position equally."""
    k %= len(items) or 1
    return items[k:] + items[:k]


@dataclass
class Context:
    quick: bool = False
    repeat: int = 3
    cache: Path = field(default_factory=lambda: Path(__file__).resolve().parent / ".cache")
    tmp_root: Path | None = None
    keep: bool = False
    _shim: object = None
    _tmp_dirs: list[Path] = field(default_factory=list)

    def size(self, full, quick):
        """*quick* in --quick runs, *full* otherwise."""
        return quick if self.quick else full

    def tempdir(self, prefix: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"bench-{prefix}-", dir=self.tmp_root))
        self._tmp_dirs.append(d)
        return d

    def cleanup(self) -> None:
        if self.keep:
            return
        for d in self._tmp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._tmp_dirs.clear()

    @property
    def shim(self):
        """The bind-to-loopback LD_PRELOAD shim (built once), or None without a compiler."""
        if self._shim is None:
            from .peers import loopback_shim

            self._shim = loopback_shim(self.cache) or False
        return self._shim or None

    @staticmethod
    def median(values: Iterable[float]) -> float:
        return statistics.median(list(values))

    def repeat_timed(self, fn: Callable[[], object], n: int | None = None) -> list[float]:
        """Seconds of ``n`` (default ``repeat``) calls of *fn*."""
        out = []
        for _ in range(n or self.repeat):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return out

    def say(self, msg: str) -> None:
        print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- registry
@dataclass
class Benchmark:
    name: str
    func: Callable[[Context], object]
    description: str = ""
    module: str = ""


#: name -> benchmark, in registration order (the order of the table).
BENCHMARKS: dict[str, Benchmark] = {}


def register(name: str, description: str = ""):
    """Decorator: register ``func(ctx)`` as benchmark *name*."""
    def deco(func):
        doc = (func.__doc__ or "").strip().splitlines()
        add(name, func, description or (doc[0] if doc else ""))
        return func
    return deco


def add(name: str, func: Callable, description: str = "") -> None:
    """Register a plain function (no argument or the context) as benchmark *name*."""
    if name in BENCHMARKS and BENCHMARKS[name].func is not func:
        raise ValueError(f"benchmark {name!r} registered twice")
    BENCHMARKS[name] = Benchmark(name, func, description or "", getattr(func, "__module__", ""))


_LOADED = False
LOAD_PROBLEMS: dict[str, str] = {}


def load_benchmarks() -> dict[str, Benchmark]:
    global _LOADED
    if _LOADED:
        return BENCHMARKS
    _LOADED = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    for mod in OPTIONAL_MODULES:
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:
                LOAD_PROBLEMS[mod] = f"{exc.__class__.__name__}: {exc}"
            continue
        except Exception as exc:  # noqa: BLE001 - someone else's module in progress
            LOAD_PROBLEMS[mod] = f"{exc.__class__.__name__}: {exc}"
            continue
        _register_module(m)
    return BENCHMARKS


def _register_module(m) -> None:
    known = {b.func for b in BENCHMARKS.values()}
    table = getattr(m, "BENCHMARKS", None)
    if isinstance(table, dict) and table is not BENCHMARKS:
        for name, fn in table.items():
            if callable(fn) and fn not in known:
                add(name, fn, (fn.__doc__ or "").strip().split("\n")[0])
        return
    for attr, fn in vars(m).items():
        if attr.startswith("bench_") and inspect.isfunction(fn) and fn.__module__ == m.__name__ \
                and fn not in known:
            add(attr[len("bench_"):].replace("_", "-"), fn, (fn.__doc__ or "").strip().split("\n")[0])


def _call(b: Benchmark, ctx: Context) -> list[Row]:
    """Run one benchmark and normalise what it returns into rows."""
    try:
        params = inspect.signature(b.func).parameters
        takes_ctx = len(params) > 0
    except (TypeError, ValueError):
        takes_ctx = True
    call = (lambda: b.func(ctx)) if takes_ctx else b.func
    if b.module.startswith("benchmarks.bench_") and b.module not in BUILTIN_MODULES:
        # Plain functions of other modules: time them here when they return nothing.
        first = call()
        if first is None:
            times = ctx.repeat_timed(call)
            return [Row(b.name, b.description or b.name, "ms", ctx.median(times) * 1e3,
                        higher_is_better=False, samples=[t * 1e3 for t in times])]
        return _rows(b, first)
    return _rows(b, call())


def _rows(b: Benchmark, out) -> list[Row]:
    if out is None:
        return [Row(b.name, b.description or b.name, error="returned nothing")]
    if isinstance(out, (Row, dict)) or isinstance(out, (int, float)):
        out = [out]
    rows = []
    for r in out:
        if isinstance(r, Row):
            rows.append(r)
        elif isinstance(r, dict):
            d = dict(r)
            d.setdefault("benchmark", b.name)
            d.setdefault("name", b.description or b.name)
            if "value" in d and "ours" not in d:
                d["ours"] = d.pop("value")
            t = d.get("target")
            if isinstance(t, (int, float)):
                d["target"] = Target.at_most(float(t), d.get("unit", ""))
            known = set(Row.__dataclass_fields__)
            extra = {k: v for k, v in d.items() if k not in known}
            d = {k: v for k, v in d.items() if k in known}
            if extra:
                d["note"] = (d.get("note", "") + " " + json.dumps(extra, default=str)).strip()
            rows.append(Row(**d))
        elif isinstance(r, (int, float)):
            rows.append(Row(b.name, b.description or b.name, "ms", float(r) * 1e3, higher_is_better=False))
        else:
            rows.append(Row(b.name, b.description or b.name, error=f"unexpected result {r!r:.60}"))
    return rows


# --------------------------------------------------------------------------- output
def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    a = abs(v)
    s = f"{v:.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3g}"
    return f"{s} {unit}".strip()


def table(rows: list[Row]) -> str:
    head = ["benchmark", "measure", "osirix-py", "peer", "ratio", "target", "met?"]
    body = []
    for r in rows:
        if r.error:
            body.append([r.benchmark, r.name, r.error, "", "", r.target.text() if r.target else "-", "-"])
            continue
        peer = "n/a" if r.peer is None else f"{_fmt(r.peer, r.unit)} ({r.peer_name})"
        ratio = "n/a" if r.ratio is None else f"{r.ratio:.2f}x"
        met = {True: "yes", False: "NO", None: "-"}[r.met]
        body.append([r.benchmark, r.name + (f" [{r.note}]" if r.note else ""), _fmt(r.ours, r.unit),
                     peer, ratio, r.target.text() if r.target else "-", met])
    widths = [max(len(head[i]), *(len(b[i]) for b in body)) if body else len(head[i])
              for i in range(len(head))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths)).rstrip() for b in body]
    return "\n".join(lines)


def _cmd_first_line(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        text = (res.stdout or res.stderr).strip().splitlines()
        return text[0].strip() if text else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(ctx: Context) -> dict:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    info = {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tmp": str(ctx.tmp_root or tempfile.gettempdir()),
    }
    fs = _cmd_first_line(["stat", "-f", "-c", "%T", info["tmp"]])
    if fs:
        info["tmp_fs"] = fs
    try:
        import osirix_py
        import pydicom
        import pynetdicom
        import sqlalchemy

        info.update(osirix_py=osirix_py.__version__, pydicom=pydicom.__version__,
                    pynetdicom=pynetdicom.__version__, sqlalchemy=sqlalchemy.__version__)
    except Exception:  # noqa: BLE001
        pass
    commit = _cmd_first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if commit:
        info["commit"] = commit
    return info


def peer_versions() -> dict:
    from .peers import orthanc_binary

    out = {}
    if shutil.which("storescu"):
        out["dcmtk"] = _cmd_first_line(["storescu", "--version"]).strip("$ ")
    ob = orthanc_binary()
    if ob:
        out["orthanc"] = _cmd_first_line([ob, "--version"])
    return out


# --------------------------------------------------------------------------- main
def _parse_only(values: list[str] | None) -> list[str]:
    out = []
    for v in values or []:
        out += [x.strip() for x in v.split(",") if x.strip()]
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="osirix-py benchmarks, side by side with reference peers "
                    "(pydicom, dcmtk storescp, Orthanc).  Prints a table of medians and ratios "
                    "(ratio > 1: osirix-py is better).")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only these benchmarks (repeatable, or a comma list)")
    p.add_argument("--quick", action="store_true",
                   help="smaller data (import 200 files, find on 2,000 studies, C-FIND on 1,000 ...)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    p.add_argument("--repeat", type=int, default=None,
                   help="runs per measurement; the median is reported (default 3)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="where generated data is kept (default benchmarks/.cache, "
                        "or $OSIRIX_PY_BENCH_CACHE)")
    p.add_argument("--tmp-dir", metavar="DIR",
                   help="where the temporary archives go (default: the system temp dir; "
                        "it should be a real disk, not tmpfs, for fsync to mean anything)")
    p.add_argument("--keep", action="store_true", help="keep temporary dirs and peer logs")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is not met")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if not args.verbose else
                        logging.INFO if args.verbose == 1 else logging.DEBUG,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.cache_dir:
        os.environ["OSIRIX_PY_BENCH_CACHE"] = str(Path(args.cache_dir).absolute())
    from . import data

    benches = load_benchmarks()
    if args.list:
        w = max(len(n) for n in benches)
        for b in benches.values():
            print(f"{b.name.ljust(w)}  {b.description}")
        for mod, why in LOAD_PROBLEMS.items():
            print(f"(not loaded: {mod}: {why})")
        return 0
    only = _parse_only(args.only)
    unknown = [n for n in only if n not in benches]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(benches)}",
              file=sys.stderr)
        return 2
    selected = [benches[n] for n in (only or benches)]
    ctx = Context(quick=args.quick, repeat=max(1, args.repeat or 3), cache=data.cache_dir(),
                  tmp_root=Path(args.tmp_dir).absolute() if args.tmp_dir else None, keep=args.keep)
    if ctx.tmp_root:
        ctx.tmp_root.mkdir(parents=True, exist_ok=True)
    info = machine_info(ctx)
    print(f"# osirix-py benchmarks{' (--quick)' if ctx.quick else ''}: {info['date']}, "
          f"{info['nproc']} x {info['cpu']}, Python {info['python']}, "
          f"median of {ctx.repeat}", flush=True)
    rows: list[Row] = []
    t_all = time.perf_counter()
    try:
        for b in selected:
            ctx.say(f"{b.name}: {b.description}")
            t0 = time.perf_counter()
            try:
                got = _call(b, ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one failing benchmark never stops the rest
                if args.verbose:
                    traceback.print_exc()
                got = [Row(b.name, b.description, error=f"error: {exc.__class__.__name__}: "
                                                        f"{str(exc).splitlines()[0] if str(exc) else ''}"[:200])]
                ctx.say(f"{b.name} failed:\n{exc}")
            finally:
                ctx.cleanup()
            rows += got
            ctx.say(f"{b.name}: done in {time.perf_counter() - t0:.1f} s")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        ctx.cleanup()
        return 130
    print(table(rows), flush=True)
    print(f"# {len(rows)} row(s) in {time.perf_counter() - t_all:.0f} s", flush=True)
    if args.json:
        info.update(peer_versions())
        Path(args.json).write_text(json.dumps({
            "machine": info, "quick": ctx.quick, "repeat": ctx.repeat,
            "rows": [r.to_dict() for r in rows]}, indent=2, default=str) + "\n")
    if args.strict and any(r.met is False for r in rows):
        return 1
    return 0
