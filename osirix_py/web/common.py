"""Shared pieces of the HTTP front end: errors, UID checks, query parsing, DICOM JSON.

Handlers raise :class:`HttpProblem`; the app turns it into a JSON body
``{"error": reason}`` with the given status.  UIDs taken from a path are
checked against :data:`UID_RE` and then looked up in the database only:
nothing a client sends ever becomes a file-system path.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Iterable, Mapping

from pydicom.datadict import keyword_for_tag, tag_for_keyword
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from sqlalchemy import bindparam, select

from ..db.matching import QueryError
from ..db.schema import instances, series, studies
from ..dicom.tags import Level, attributes_up_to, find_attribute, keyword_for_input

#: What a UID in a path may look like.  Excludes the matching metacharacters
#: (``*``, ``?``, ``\``) so that a path UID can only ever match one object.
UID_RE = re.compile(r"^[0-9A-Za-z._-]{1,64}$")

DICOM_JSON = "application/dicom+json"


class HttpProblem(Exception):
    """An HTTP error with a reason for the client (JSON body ``{"error": ...}``)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def problem_response(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason, "status": status}, status_code=status)


def require_admin(request: Request) -> None:
    """403 unless the request's user (set by :mod:`.auth`) may change data."""
    user = request.scope.get("user")
    if user is None or not user.is_admin:
        raise HttpProblem(403, "this needs an admin user")


def check_uid(uid: str, what: str) -> str:
    if not UID_RE.match(uid or ""):
        raise HttpProblem(404, f"no {what} with UID {uid[:80]!r} (not a valid UID)")
    return uid


# --------------------------------------------------------------------- lookups
def find_one(archive, level: Level, uid: str, what: str, **parents: str) -> dict:
    """The row of the object *uid* at *level* (optionally within its parents); 404 if none."""
    check_uid(uid, what)
    for v in parents.values():
        check_uid(v, "parent")
    q = {_UNIQUE[level]: uid, **parents}
    rows = archive.find(level, q, limit=1)
    if not rows:
        raise HttpProblem(404, f"no {what} with UID {uid} in the archive")
    return rows[0]


def find_instances(archive, what: str, **keys: str) -> list[dict]:
    """IMAGE rows under the given unique keys (exact UIDs); 404 if none."""
    for v in keys.values():
        check_uid(v, what)
    rows = archive.find(Level.IMAGE, keys)
    if not rows:
        raise HttpProblem(404, f"no {what} with " + ", ".join(f"{k} {v}" for k, v in keys.items())
                          + " in the archive")
    return rows


_LOOKUP = (
    select(instances.c.sop_instance_uid.label("SOPInstanceUID"),
           series.c.series_instance_uid.label("SeriesInstanceUID"),
           studies.c.study_instance_uid.label("StudyInstanceUID"),
           instances.c.file_path.label("_file_path"), instances.c.in_place.label("_in_place"),
           instances.c.checksum.label("_checksum"), instances.c.file_size.label("_file_size"))
    .select_from(instances.join(series, instances.c.series_pk == series.c.id)
                 .join(studies, series.c.study_pk == studies.c.id))
)


def lookup_instance(archive, sop: str, *, study: str | None = None,
                    series_uid: str | None = None) -> dict:
    """The file of one instance by its exact SOP Instance UID (within study/series if given).

    A lean indexed lookup for the hot paths (rendering, frames): only the UIDs
    and what :meth:`Archive.read_instance` needs.  404 if there is none.
    The statement is compiled once per dialect and run on a pooled DB-API
    connection: ~0.02 ms where a Core ``select`` costs ~0.25 ms of Python.
    """
    check_uid(sop, "instance")
    for v in (study, series_uid):
        if v is not None:
            check_uid(v, "parent")
    row = _lookup_row(archive.db.engine, sop)
    if row is None or (study is not None and row["StudyInstanceUID"] != study) \
            or (series_uid is not None and row["SeriesInstanceUID"] != series_uid):
        where = "".join(f" in {w} {u}" for w, u in (("series", series_uid), ("study", study)) if u)
        raise HttpProblem(404, f"no instance with UID {sop}{where} in the archive")
    return row


#: dialect -> (SQL text, positional?, result keys) of :data:`_LOOKUP` by SOP Instance UID.
_LOOKUP_SQL: dict = {}


def _lookup_row(engine, sop: str) -> dict | None:
    dialect = engine.dialect
    prepared = _LOOKUP_SQL.get(dialect)
    if prepared is None:
        compiled = _LOOKUP.where(instances.c.sop_instance_uid == bindparam("sop")) \
            .compile(dialect=dialect)
        prepared = (str(compiled), bool(compiled.positional),
                    tuple(c.name for c in _LOOKUP.selected_columns))
        _LOOKUP_SQL[dialect] = prepared
    sql, positional, keys = prepared
    conn = engine.raw_connection()
    try:
        cur = conn.cursor()
        try:
            cur.execute(sql, (sop,) if positional else {"sop": sop})
            found = cur.fetchone()
        finally:
            cur.close()
    finally:
        conn.close()
    if found is None:
        return None
    row = dict(zip(keys, found))
    row["_in_place"] = bool(row["_in_place"])
    return row


_UNIQUE = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID",
           Level.SERIES: "SeriesInstanceUID", Level.IMAGE: "SOPInstanceUID"}


# --------------------------------------------------------------------- queries
def int_param(params: Mapping[str, str], name: str, default: int | None, *, minimum: int = 0,
              maximum: int | None = None) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise HttpProblem(400, f"{name}: {raw!r} is not an integer") from None
    if v < minimum or (maximum is not None and v > maximum):
        raise HttpProblem(400, f"{name}: {v} is out of range")
    return v


def matching_query(params: Iterable[tuple[str, str]], reserved: set[str]) -> dict[str, str]:
    """Matching keys from query parameters (keyword, any case, or ``gggg,eeee``/``ggggeeee``).

    Starlette has already percent-decoded the values (``A%5EB`` -> ``A^B``).
    Unknown or repeated keys -> 400.
    """
    out: dict[str, str] = {}
    for key, value in params:
        if key.lower() in reserved:
            continue
        try:
            kw = keyword_for_input(key)
        except KeyError:
            raise HttpProblem(400, f"{key!r} is not a searchable attribute") from None
        if kw in out:
            raise HttpProblem(400, f"{kw} is given more than once")
        out[kw] = value
    return out


def run_find(archive, level: Level, query: Mapping[str, str], *, limit=None, offset=0,
             fuzzy_names: bool = True) -> list[dict]:
    try:
        return archive.find(level, query, limit=limit, offset=offset, fuzzy_names=fuzzy_names)
    except QueryError as exc:
        raise HttpProblem(400, str(exc)) from None
    except KeyError as exc:
        raise HttpProblem(400, str(exc.args[0] if exc.args else exc)) from None


def resolve_tag(name: str) -> int | None:
    """A keyword or ``ggggeeee`` as a tag number; None if it is neither."""
    n = name.strip()
    t = tag_for_keyword(n)
    if t is not None:
        return t
    hexed = n.strip("()").replace(",", "")
    if len(hexed) == 8:
        try:
            return int(hexed, 16)
        except ValueError:
            return None
    return None


# --------------------------------------------------------------------- JSON out
def plain_row(row: Mapping) -> dict:
    """A database row as plain JSON (keywords, private keys dropped)."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _json_value(vr: str, value) -> list:
    if vr == "PN":
        out = []
        for name in str(value).split("\\"):
            groups = name.split("=")
            item = {}
            for key, g in zip(("Alphabetic", "Ideographic", "Phonetic"), groups):
                if g:
                    item[key] = g
            out.append(item)
        return out
    if vr in ("IS", "US", "UL", "SS", "SL", "SV", "UV"):
        vals = []
        for v in (value if isinstance(value, (list, tuple)) else str(value).split("\\")):
            try:
                vals.append(int(v))
            except (TypeError, ValueError):
                return [str(value)]
        return vals
    if vr in ("DS", "FL", "FD"):
        try:
            return [float(v) for v in str(value).split("\\")]
        except ValueError:
            return [str(value)]
    return str(value).split("\\")


@lru_cache(maxsize=None)
def _level_spec(level: Level) -> tuple[tuple[str, str, str, int, bool], ...]:
    """(keyword, "ggggeeee", VR, tag, unique) of each attribute up to *level*, in tag order."""
    spec = [(a.keyword, f"{a.tag:08X}", a.vr, a.tag, a.unique) for a in attributes_up_to(level)]
    return tuple(sorted(spec, key=lambda x: x[3]))


def dicom_json_row(level: Level, row: Mapping, *, include: set[int] | None = None,
                   extra: Mapping[str, tuple[str, object]] | None = None) -> dict:
    """A database row as a DICOM JSON object (PS3.18 F.2), built from the attribute table."""
    out: dict[str, dict] = {}
    for keyword, key, vr, tag, unique in _level_spec(level):
        if include is not None and tag not in include and not unique:
            continue
        value = row.get(keyword)
        if value is None or value == "":
            out[key] = {"vr": vr}
        elif vr in _PLAIN_VRS and "\\" not in str(value):
            out[key] = {"vr": vr, "Value": [str(value)]}
        else:
            out[key] = {"vr": vr, "Value": _json_value(vr, value)}
    if level is Level.STUDY or level is Level.PATIENT:
        cs = row.get("_character_set")
        if cs:
            out["00080005"] = {"vr": "CS", "Value": str(cs).split("\\")}
    for key, (vr, value) in (extra or {}).items():
        out[key] = {"vr": vr, "Value": [value]}
    return dict(sorted(out.items()))


_PLAIN_VRS = frozenset({"AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UI", "UR",
                        "UT", "UC"})


def json_bytes(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode("utf-8")


def dicom_json_response(obj, status: int = 200) -> Response:
    return Response(json_bytes(obj), status_code=status, media_type=DICOM_JSON)


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def is_indexed(keyword: str) -> bool:
    return find_attribute(keyword) is not None


def keyword_of(tag: int) -> str:
    return keyword_for_tag(tag) or f"{tag:08X}"
