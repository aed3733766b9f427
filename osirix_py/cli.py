"""The ``osirix-py`` command.

``osirix-py`` alone starts the desktop application (when the GUI extra is
installed); the sub-commands work headless: ``server``, ``import``, ``find``,
``delete``, ``stats``, ``check``, ``demo``, ``config show``, ``nodes``, and the
client side: ``query``, ``retrieve`` and ``send`` (C-FIND, C-GET/C-MOVE, C-STORE).
Exit status: 0 success, 1 partial failure (some files failed), 2 usage or
configuration error, 3 runtime error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path

from . import __version__
from .config import ConfigError, Settings, load_settings, to_toml

log = logging.getLogger("osirix_py")

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_ERROR):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="osirix-py",
        description="OsiriX-style DICOM workstation and mini-PACS. "
                    "Without a command, starts the desktop application.",
    )
    p.add_argument("--version", action="version", version=f"osirix-py {__version__}")
    p.add_argument("--data-dir", metavar="DIR",
                   help="use DIR for the database, the files and the configuration "
                        "(default: $OSIRIX_PY_HOME or the user data dir)")
    p.add_argument("--config", metavar="FILE", help="read settings from FILE")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--server-mode", action="store_true",
                   help="GUI: start hidden in server mode (no dialogs)")
    # The global options are accepted after the command too
    # (`osirix-py import -q DIR`); SUPPRESS keeps a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS)
    common.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS)
    common.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    _add = sub.add_parser

    def add_parser(name, **kw):
        return _add(name, parents=[common], **kw)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    s = sub.add_parser("import", help="import files, folders, ZIP archives and DICOMDIRs")
    s.add_argument("paths", nargs="+", metavar="PATH")
    s.add_argument("--in-place", action="store_true",
                   help="index the files where they are instead of copying them")
    s.add_argument("--workers", type=int, default=None, help="parallel workers")
    s.add_argument("--json", action="store_true", help="print the report as JSON")

    s = sub.add_parser("find", help="query the local database")
    s.add_argument("--level", default="study",
                   help="patient, study, series or instance (default study)")
    s.add_argument("filters", nargs="*", metavar="KEY=VALUE",
                   help="DICOM matching: exact, * ?, ranges A-B, UID lists a\\b")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--json", action="store_true", help="JSON array keyed by DICOM keyword")
    s.add_argument("--exact-names", action="store_true",
                   help="match person names case-sensitively")

    s = sub.add_parser("delete", help="delete a patient, study, series or instance")
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--patient", metavar="PATIENT_ID")
    g.add_argument("--study", metavar="UID")
    g.add_argument("--series", metavar="UID")
    g.add_argument("--instance", metavar="UID")

    s = sub.add_parser("stats", help="what the database holds")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("check", help="make the database and the files agree (after a crash)")
    s.add_argument("--no-repair", action="store_true", help="only report")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("demo", help="fill an empty database with a sample study")
    s.add_argument("--force", action="store_true", help="add the sample even if not empty")

    s = sub.add_parser("config", help="configuration")
    csub = s.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    c = csub.add_parser("show", help="print the effective settings")
    c.add_argument("--json", action="store_true")
    csub.add_parser("path", help="print the configuration file in use")

    s = sub.add_parser("nodes", help="remote DICOM nodes (locations)")
    nsub = s.add_subparsers(dest="nodes_command", metavar="ACTION", required=True)
    n = nsub.add_parser("add", help="add (or with --replace, change) a node")
    n.add_argument("name")
    n.add_argument("--aet", required=True, help="its AE title")
    n.add_argument("--host", required=True)
    n.add_argument("--port", type=int, required=True)
    n.add_argument("--method", choices=("move", "get"), default="move",
                   help="preferred retrieve method")
    n.add_argument("--description", default="")
    n.add_argument("--replace", action="store_true")
    n = nsub.add_parser("list", help="list nodes")
    n.add_argument("--json", action="store_true")
    n = nsub.add_parser("remove", help="remove a node")
    n.add_argument("name")
    n = nsub.add_parser("echo", help="C-ECHO a node")
    n.add_argument("name")

    s = sub.add_parser("users", help="users of the web server (passwords, API tokens, roles)")
    usub = s.add_subparsers(dest="users_command", metavar="ACTION", required=True)
    u = usub.add_parser("add", help="add a user (asks for the password)")
    u.add_argument("name")
    u.add_argument("--role", choices=("admin", "readonly"), default="readonly",
                   help="admin: everything; readonly: no delete, no STOW (default)")
    u.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    u = usub.add_parser("list", help="list users")
    u.add_argument("--json", action="store_true")
    u = usub.add_parser("remove", help="remove a user")
    u.add_argument("name")
    u = usub.add_parser("passwd", help="change a user's password (and optionally role)")
    u.add_argument("name")
    u.add_argument("--role", choices=("admin", "readonly"), default=None)
    u.add_argument("--password-stdin", action="store_true",
                   help="read the password from the first line of standard input")
    u = usub.add_parser("token", help="give a user a new API token (printed once) or revoke it")
    u.add_argument("name")
    u.add_argument("--revoke", action="store_true", help="remove the user's token")

    s = sub.add_parser("query", help="C-FIND a remote node (patient/study/series/instance)")
    s.add_argument("node", help="node name (or AE title) from 'nodes list'")
    s.add_argument("filters", nargs="*", metavar="KEY=VALUE",
                   help="DICOM matching keys, e.g. PatientName=DOE^* StudyDate=20240101-20241231")
    s.add_argument("--level", default="study",
                   help="patient, study, series or instance (default study)")
    s.add_argument("--limit", type=int, default=None)
    s.add_argument("--json", action="store_true", help="JSON array keyed by DICOM keyword")

    s = sub.add_parser("retrieve", help="C-GET / C-MOVE a study, series or instance from a node")
    s.add_argument("node")
    s.add_argument("--study", required=True, metavar="UID")
    s.add_argument("--series", metavar="UID")
    s.add_argument("--instance", metavar="UID")
    s.add_argument("--method", choices=("get", "move"), default=None,
                   help="default: the node's preferred method")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("send", help="C-STORE a local study, series or instance to a node")
    s.add_argument("node")
    s.add_argument("--study", metavar="UID")
    s.add_argument("--series", metavar="UID")
    s.add_argument("--instance", metavar="UID")
    s.add_argument("--retries", type=int, default=1, help="retries of failed instances (default 1)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("server", help="run headless as a PACS node (listener + web)")
    s.add_argument("--aet", help="our AE title")
    s.add_argument("--port", type=int, help="DICOM port")
    s.add_argument("--bind", help="bind address")
    s.add_argument("--http-port", type=int, help="HTTP port (0: off)")
    return p


# --------------------------------------------------------------------------- helpers
def _settings(args) -> Settings:
    try:
        return load_settings(data_dir=args.data_dir, config_file=args.config)
    except ConfigError as exc:
        raise CliError(f"configuration error: {exc}", EXIT_USAGE) from None


def _archive(settings: Settings):
    from .db.engine import DatabaseError
    from .services.factory import open_archive
    from .storage import StorageError

    try:
        return open_archive(settings)
    except (DatabaseError, StorageError, OSError) as exc:
        raise CliError(str(exc)) from None


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, indent=2, ensure_ascii=False, default=str)
    sys.stdout.write("\n")


def _public(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _parse_filters(items: list[str]) -> dict[str, str]:
    from .dicom.tags import keyword_for_input

    out = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"filter {item!r} must look like KEY=VALUE", EXIT_USAGE)
        k, v = item.split("=", 1)
        try:
            out[keyword_for_input(k)] = v
        except KeyError as exc:
            raise CliError(str(exc.args[0]), EXIT_USAGE) from None
    return out


def _progress_bar(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, desc=desc, unit="file", file=sys.stderr, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


# --------------------------------------------------------------------------- commands
def cmd_import(args, settings: Settings) -> int:
    archive = _archive(settings)
    bar = _progress_bar(not args.quiet and not args.json, "Importing")
    lock = threading.Lock()

    def progress(rep):
        if bar is None:
            return
        with lock:
            bar.total = rep.total
            bar.n = rep.done
            bar.set_postfix(imported=rep.imported, dup=rep.duplicates, skipped=rep.skipped,
                            failed=rep.failed, refresh=False)
            bar.refresh()

    cancel = threading.Event()
    try:
        report = archive.import_paths(args.paths, in_place=args.in_place, progress=progress,
                                      cancel=cancel, workers=args.workers)
    except KeyboardInterrupt:
        cancel.set()
        raise
    finally:
        if bar is not None:
            bar.close()
        archive.close()
    if args.json:
        _print_json({
            "total": report.total, "imported": report.imported, "duplicates": report.duplicates,
            "replaced": report.replaced, "skipped": report.skipped, "failed": report.failed,
            "bytes": report.bytes, "seconds": round(report.seconds, 3),
            "files_per_second": round(report.rate, 1), "studies": sorted(report.studies),
            "failures": [{"file": f.source, "reason": f.reason} for f in report.failures],
            "skipped_files": [{"file": f.source, "reason": f.reason} for f in report.skipped_files],
            "warnings": [{"file": f.source, "reason": f.reason} for f in report.warnings],
        })
    else:
        for f in report.failures:
            print(f"failed: {f.reason}", file=sys.stderr)
        for f in report.warnings:
            print(f"warning: {f.reason}", file=sys.stderr)
        if args.verbose:
            for f in report.skipped_files:
                print(f"skipped: {f.reason}", file=sys.stderr)
        print(f"{report.summary()} in {report.seconds:.1f} s ({report.rate:.0f} files/s)")
    return EXIT_PARTIAL if report.failed else EXIT_OK


def _table(rows: list[dict], columns: list[str]) -> str:
    def cell(v):
        return "" if v is None else str(v)

    widths = [max([len(c)] + [len(cell(r.get(c))) for r in rows]) for c in columns]
    widths = [min(w, 48) for w in widths]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(cell(r.get(c))[:w].ljust(w) for c, w in zip(columns, widths)))
    return "\n".join(lines)


_FIND_COLUMNS = {
    "PATIENT": ["PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                "NumberOfPatientRelatedStudies"],
    "STUDY": ["PatientName", "PatientID", "StudyDate", "AccessionNumber", "ModalitiesInStudy",
              "StudyDescription", "NumberOfStudyRelatedInstances", "StudyInstanceUID"],
    "SERIES": ["PatientName", "StudyDate", "SeriesNumber", "Modality", "SeriesDescription",
               "NumberOfSeriesRelatedInstances", "SeriesInstanceUID"],
    "IMAGE": ["PatientName", "SeriesNumber", "InstanceNumber", "Rows", "Columns",
              "SOPInstanceUID"],
}


def cmd_find(args, settings: Settings) -> int:
    from .db.matching import QueryError
    from .dicom.tags import Level

    try:
        level = Level.parse(args.level)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    query = _parse_filters(args.filters)
    archive = _archive(settings)
    try:
        rows = archive.find(level, query, limit=args.limit, offset=args.offset,
                            fuzzy_names=not args.exact_names)
    except (QueryError, KeyError) as exc:
        raise CliError(f"bad query: {exc}", EXIT_USAGE) from None
    finally:
        archive.close()
    if args.json:
        _print_json([_public(r) for r in rows])
    else:
        if rows:
            print(_table(rows, _FIND_COLUMNS[level.value]))
        print(f"{len(rows)} match(es) at {level.cli_name} level", file=sys.stderr)
    return EXIT_OK


def cmd_delete(args, settings: Settings) -> int:
    from .dicom.tags import Level
    from .services.archive import ArchiveError

    if args.patient:
        level, uid = Level.PATIENT, args.patient
    elif args.study:
        level, uid = Level.STUDY, args.study
    elif args.series:
        level, uid = Level.SERIES, args.series
    else:
        level, uid = Level.IMAGE, args.instance
    archive = _archive(settings)
    try:
        rep = archive.delete(level, uid)
    except ArchiveError as exc:
        raise CliError(str(exc)) from None
    finally:
        archive.close()
    for e in rep.errors:
        print(f"warning: {e}", file=sys.stderr)
    print(f"deleted {level.cli_name} {uid}: {rep.instances} instance(s), "
          f"{rep.files_removed} file(s) removed")
    return EXIT_OK


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def cmd_stats(args, settings: Settings) -> int:
    archive = _archive(settings)
    try:
        s = archive.stats()
    finally:
        archive.close()
    s["data_dir"] = str(settings.data_dir)
    s["database"] = archive.db.url
    if args.json:
        _print_json(s)
    else:
        print(f"data dir:   {settings.data_dir}")
        print(f"database:   {archive.db.url}")
        print(f"patients:   {s['patients']}")
        print(f"studies:    {s['studies']}")
        print(f"series:     {s['series']}")
        print(f"instances:  {s['instances']}")
        print(f"size:       {_human_bytes(s['bytes'])}")
        print(f"free space: {_human_bytes(s['free_bytes'])}")
        if s["series_by_modality"]:
            mods = ", ".join(f"{m or '?'} {n}" for m, n in sorted(s["series_by_modality"].items()))
            print(f"series by modality: {mods}")
    return EXIT_OK


def cmd_check(args, settings: Settings) -> int:
    archive = _archive(settings)
    try:
        rep = archive.check(repair=not args.no_repair)
    finally:
        archive.close()
    if args.json:
        _print_json(rep.__dict__)
    else:
        print(f"checked {rep.rows_checked} row(s) and {rep.files_checked} file(s)")
        for sop in rep.rows_without_file:
            print(f"row without file {'removed' if not args.no_repair else 'found'}: {sop}")
        for key in rep.files_reindexed:
            print(f"file without row {'re-indexed' if not args.no_repair else 'found'}: {key}")
        for msg in rep.files_unreadable:
            print(f"unreadable file: {msg}")
        if rep.clean:
            print("database and files agree")
    return EXIT_OK if rep.clean or not args.no_repair else EXIT_PARTIAL


def cmd_demo(args, settings: Settings) -> int:
    from .dicom import synthetic

    archive = _archive(settings)
    try:
        if archive.count("study") and not args.force:
            print("the database is not empty; use --force to add the sample study anyway")
            return EXIT_OK
        with tempfile.TemporaryDirectory(prefix="osirix-py-demo-") as tmp:
            synthetic.demo_study(Path(tmp))
            rep = archive.import_paths([tmp])
    finally:
        archive.close()
    print(f"sample study added: {rep.summary()}")
    print("try: osirix-py find --level series")
    return EXIT_OK if not rep.failed else EXIT_PARTIAL


def cmd_config(args, settings: Settings) -> int:
    if args.config_command == "path":
        print(settings.config_file or "(no configuration file; defaults in use)")
        return EXIT_OK
    if args.json:
        _print_json(settings.to_dict())
    else:
        print(f"# configuration file: {settings.config_file or '(none; defaults)'}")
        print(f"# database: {settings.to_dict()['effective_database_url']}")
        print(to_toml(settings), end="")
    return EXIT_OK


def _open_db(settings: Settings):
    """The database of *settings* (a CliError saying why when it cannot be opened)."""
    from .db.engine import DatabaseError, open_database

    try:
        return open_database(settings.effective_database_url)
    except DatabaseError as exc:
        raise CliError(str(exc)) from None


def cmd_nodes(args, settings: Settings) -> int:
    from .services.nodes import Node, NodeError, NodeRepository

    db = _open_db(settings)
    repo = NodeRepository(db)
    try:
        if settings.nodes:
            repo.sync_from_config(settings.nodes)
        if args.nodes_command == "add":
            node = repo.add(Node(name=args.name, ae_title=args.aet, host=args.host, port=args.port,
                                 retrieve_method=args.method, description=args.description),
                            replace=args.replace)
            print(f"node {node} saved")
        elif args.nodes_command == "remove":
            repo.remove(args.name)
            print(f"node {args.name} removed")
        elif args.nodes_command == "list":
            rows = [n.to_dict() for n in repo.list()]
            if args.json:
                _print_json(rows)
            elif rows:
                print(_table(rows, ["name", "ae_title", "host", "port", "retrieve_method", "description"]))
            else:
                print("no nodes; add one with: osirix-py nodes add NAME --aet AE --host H --port P")
        elif args.nodes_command == "echo":
            from .net.scu import EchoError, echo

            node = repo.get(args.name)
            try:
                rtt = echo(node, calling_ae=settings.listener.ae_title, timeout=settings.connect_timeout)
            except EchoError as exc:
                raise CliError(f"C-ECHO {node} failed: {exc}") from None
            print(f"C-ECHO {node}: success in {rtt * 1000:.1f} ms")
    except NodeError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        db.dispose()
    return EXIT_OK


def _read_password(args, name: str) -> str:
    """A new password: from stdin (--password-stdin) or asked twice on the terminal."""
    if args.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    import getpass

    if not sys.stdin.isatty():
        raise CliError("no terminal to ask for the password: use --password-stdin", EXIT_USAGE)
    first = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != first:
        raise CliError("the passwords differ", EXIT_USAGE)
    return first


def cmd_users(args, settings: Settings) -> int:
    from .web.users import UserError, UserStore

    db = _open_db(settings)
    store = UserStore(db)
    try:
        cmd = args.users_command
        if cmd == "add":
            user = store.add(args.name, _read_password(args, args.name), args.role)
            print(f"user {user.name} added ({user.role})")
        elif cmd == "passwd":
            store.set_password(args.name, _read_password(args, args.name))
            if args.role:
                store.set_role(args.name, args.role)
            print(f"password of {args.name} changed" + (f", role {args.role}" if args.role else ""))
        elif cmd == "remove":
            store.remove(args.name)
            print(f"user {args.name} removed")
        elif cmd == "token":
            if args.revoke:
                store.revoke_token(args.name)
                print(f"API token of {args.name} revoked")
            else:
                token = store.new_token(args.name)
                print(token)
                print(f"(the API token of {args.name}; it is shown only now: "
                      "send it as 'Authorization: Bearer TOKEN')", file=sys.stderr)
        elif cmd == "list":
            rows = [{"name": u.name, "role": u.role, "api_token": u.has_token} for u in store.list()]
            if args.json:
                _print_json(rows)
            elif rows:
                print(_table(rows, ["name", "role", "api_token"]))
            else:
                print("no users; add one with: osirix-py users add NAME --role admin")
    except UserError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        db.dispose()
    return EXIT_OK


def _node_repo(settings: Settings, db):
    from .services.nodes import NodeError, NodeRepository

    repo = NodeRepository(db)
    try:
        if settings.nodes:
            repo.sync_from_config(settings.nodes)
    except NodeError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    return repo


def _get_node(repo, name: str):
    from .services.nodes import NodeError

    try:
        return repo.get(name)
    except NodeError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def cmd_query(args, settings: Settings) -> int:
    from .dicom.tags import Level
    from .net.client import query
    from .net.scu import ScuError

    try:
        level = Level.parse(args.level)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    filters = _parse_filters(args.filters)
    db = _open_db(settings)
    try:
        node = _get_node(_node_repo(settings, db), args.node)
    finally:
        db.dispose()
    try:
        rows = query(node, level, filters, calling_ae=settings.listener.ae_title,
                     timeout=settings.connect_timeout, limit=args.limit)
    except ScuError as exc:
        raise CliError(f"C-FIND {node} failed: {exc}",
                       EXIT_USAGE if exc.kind == "usage" else EXIT_ERROR) from None
    if args.json:
        _print_json(rows)
    else:
        if rows:
            print(_table(rows, [c for c in _FIND_COLUMNS[level.value]
                                if c not in ("Rows", "Columns")]))
        print(f"{len(rows)} match(es) at {level.cli_name} level on {node}", file=sys.stderr)
    return EXIT_OK


def _job_bar(enabled: bool, desc: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=0, desc=desc, unit="inst", file=sys.stderr, dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def _run_job(args, settings: Settings, submit, desc: str, *, need_listener: bool = False) -> int:
    """Run one retrieve/send job in a JobManager of our own; a tqdm bar while it runs."""
    from .net import client
    from .net.scp import Listener, ListenerError
    from .services.jobs import JobManager

    archive = _archive(settings)
    listener = None
    bar = _job_bar(not args.quiet and not args.json, desc)
    lock = threading.Lock()
    try:
        repo = _node_repo(settings, archive.db)
        node = _get_node(repo, args.node)
        if need_listener(node) if callable(need_listener) else need_listener:
            listener = Listener(settings.listener, archive, repo)
            try:
                listener.start()
            except ListenerError as exc:
                # Most often an osirix-py server of this installation holds the
                # port: it receives the C-MOVE sub-operations.
                log.warning("no listener of our own (%s); assuming a running osirix-py server "
                            "receives the instances", exc)
                print(f"note: {exc}; the instances go to whatever listens as "
                      f"{settings.listener.ae_title} on port {settings.listener.port}", file=sys.stderr)
                listener = None
        manager = JobManager(archive, calling_ae=settings.listener.ae_title,
                             timeout=settings.connect_timeout, workers=1,
                             listener_port=lambda: listener.port if listener else settings.listener.port,
                             retrieve=client.retrieve, send=client.send)

        def on_update(job):
            if bar is None:
                return
            with lock:
                bar.total = job.total
                bar.n = job.completed + job.failed
                bar.set_postfix(failed=job.failed, rate=f"{job.rate or 0:.0f}/s", refresh=False)
                bar.refresh()

        manager.subscribe(on_update)
        job = submit(manager, node)
        try:
            while not manager.wait(job.id, 0.5).finished:
                pass
        except KeyboardInterrupt:
            manager.cancel(job.id)
            manager.wait(job.id, 30)
            raise
        finally:
            manager.shutdown()
    finally:
        if bar is not None:
            bar.close()
        if listener is not None:
            listener.stop(timeout=5)
        archive.close()
    job = manager.get(job.id)
    if args.json:
        _print_json(job.to_dict())
    else:
        for uid, why in (job.details.get("failures") or {}).items():
            print(f"failed: {uid}: {why}", file=sys.stderr)
        rate = f" ({job.rate:.0f} inst/s, {_human_bytes(int(job.byte_rate or 0))}/s)" if job.rate else ""
        print(f"{job.description}: {job.state}, {job.completed} of {job.total} completed, "
              f"{job.failed} failed, {job.warning} warning(s){rate}")
    if job.state == "failed":
        raise CliError(job.error or "failed", EXIT_ERROR if not job.completed else EXIT_PARTIAL)
    if job.state == "cancelled":
        return EXIT_PARTIAL
    return EXIT_PARTIAL if job.failed else EXIT_OK


def cmd_retrieve(args, settings: Settings) -> int:
    if args.instance and not args.series:
        raise CliError("--instance needs --series", EXIT_USAGE)

    def submit(manager, node):
        return manager.submit_retrieve(node, study_uid=args.study, series_uid=args.series,
                                       instance_uid=args.instance, method=args.method)

    return _run_job(args, settings, submit, "Retrieving",
                    need_listener=lambda node: (args.method or node.retrieve_method) == "move")


def cmd_send(args, settings: Settings) -> int:
    if not (args.study or args.series or args.instance):
        raise CliError("send needs --study, --series or --instance", EXIT_USAGE)

    def submit(manager, node):
        return manager.submit_send(node, study_uid=args.study, series_uid=args.series,
                                   instance_uid=args.instance, retries=args.retries)

    return _run_job(args, settings, submit, "Sending")


def cmd_server(args, settings: Settings) -> int:
    from dataclasses import replace

    from .config import validate_ae_title

    lst = settings.listener
    try:
        if args.aet:
            lst = replace(lst, ae_title=validate_ae_title(args.aet))
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.port is not None:
        lst = replace(lst, port=args.port)
    if args.bind:
        lst = replace(lst, bind_address=args.bind)
    http = settings.http
    if args.http_port is not None:
        http = replace(http, port=args.http_port, enabled=args.http_port != 0)
    if args.bind:
        http = replace(http, bind_address=args.bind)
    settings = replace(settings, listener=lst, http=http)
    from .server.runtime import serve_forever

    return serve_forever(settings, verbose=args.verbose)


def cmd_gui(args, settings: Settings) -> int:
    try:
        from .gui.app import run_gui  # noqa: F401 - optional extra
    except ImportError as exc:
        raise CliError(
            "the desktop application is not available in this installation "
            f"({exc}); install the GUI extra (pip install 'osirix-py[gui]') or run "
            "'osirix-py server' for the headless PACS node", EXIT_USAGE) from None
    return run_gui(settings, server_mode=args.server_mode)


COMMANDS = {
    "import": cmd_import, "find": cmd_find, "delete": cmd_delete, "stats": cmd_stats,
    "check": cmd_check, "demo": cmd_demo, "config": cmd_config, "nodes": cmd_nodes,
    "server": cmd_server, "query": cmd_query, "retrieve": cmd_retrieve, "send": cmd_send,
    "users": cmd_users,
}


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:
        logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        settings = _settings(args)
        if args.command is None:
            return cmd_gui(args, settings)
        return COMMANDS[args.command](args, settings)
    except CliError as exc:
        print(f"osirix-py: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("osirix-py: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `osirix-py find | head`: not an error.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
