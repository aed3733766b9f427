"""DICOM attribute matching (PS3.4 C.2.2.2) as SQLAlchemy clauses.

One function, :func:`match_clause`, turns a query value for an attribute of
the table into a WHERE clause:

* empty value            -> universal matching (no clause)
* ``a\\b\\c`` on a UI    -> list of UID matching (IN)
* ``A-B``, ``A-``, ``-B`` on DA/TM/DT -> range matching
* ``*`` / ``?``          -> wildcard matching (LIKE with escapes)
* anything else          -> single value matching

Person names match case-insensitively by default (through the case-folded
shadow column), as radiologists type them.  Multi-valued derived columns
(ModalitiesInStudy, stored ``CT\\PT``) match when any of their values does.
Used by the local ``find`` command and by the C-FIND SCP alike.
"""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, Table, and_, false, or_

from ..dicom.tags import Attribute

_LIKE_ESCAPE = "!"
_DATE_RE = re.compile(r"^\d{8}$")
_TIME_RE = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


class QueryError(ValueError):
    """A query value that cannot be matched (bad range, bad date)."""


def normalise_person_name(value: str | None) -> str | None:
    """Case-folded form stored in ``<column>_norm`` and used for matching.

    Trailing empty components (``Doe^John^^^``) are dropped so that the
    encoded forms of one name compare equal.
    """
    if value is None:
        return None
    groups = [g.rstrip("^") for g in str(value).split("=")]
    while groups and groups[-1] == "":
        groups.pop()
    return "=".join(groups).casefold().strip()


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def _like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch in "%_!":
            out.append(_LIKE_ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _check_range_bound(attr: Attribute, v: str) -> str:
    if not v:
        return v
    if attr.vr == "DA":
        v = v.replace(".", "")  # ACR-NEMA style 2024.01.31
        if not _DATE_RE.match(v):
            raise QueryError(f"{attr.keyword}: {v!r} is not a date (YYYYMMDD)")
    elif attr.vr == "TM":
        v = v.replace(":", "")
        if not _TIME_RE.match(v):
            raise QueryError(f"{attr.keyword}: {v!r} is not a time (HHMMSS.FFFFFF)")
    return v


def _range_clause(attr: Attribute, col, value: str) -> ColumnElement:
    lo, _, hi = value.partition("-")
    lo = _check_range_bound(attr, lo.strip())
    hi = _check_range_bound(attr, hi.strip())
    if not lo and not hi:
        raise QueryError(f"{attr.keyword}: empty range {value!r}")
    clauses = []
    if lo:
        clauses.append(col >= lo)
    if hi:
        if attr.vr == "TM":
            # An upper time bound includes everything that starts with it:
            # "-1030" includes 103059.999.
            clauses.append(col <= hi + "\uffff")
        elif attr.vr == "DT":
            clauses.append(col <= hi + "\uffff")
        else:
            clauses.append(col <= hi)
    # A range never matches an empty value.
    clauses.append(col.is_not(None))
    clauses.append(col != "")
    return and_(*clauses)


def _multi_valued_clause(col, value: str) -> ColumnElement:
    """Any of the query values equals any of the stored backslash values."""
    parts = []
    for v in value.split("\\"):
        v = v.strip()
        if not v:
            continue
        if has_wildcard(v):
            pat = _like_pattern(v)
            parts.append(or_(
                col.like(pat, escape=_LIKE_ESCAPE),
                col.like(pat + "\\%", escape=_LIKE_ESCAPE),
                col.like("%\\" + pat, escape=_LIKE_ESCAPE),
                col.like("%\\" + pat + "\\%", escape=_LIKE_ESCAPE),
            ))
        else:
            esc = _like_pattern(v)
            parts.append(or_(
                col == v,
                col.like(esc + "\\%", escape=_LIKE_ESCAPE),
                col.like("%\\" + esc, escape=_LIKE_ESCAPE),
                col.like("%\\" + esc + "\\%", escape=_LIKE_ESCAPE),
            ))
    return or_(*parts) if parts else false()


def match_clause(
    table: Table,
    attr: Attribute,
    value,
    *,
    fuzzy_names: bool = True,
) -> ColumnElement | None:
    """The WHERE clause matching *value* on *attr*'s column of *table*.

    Returns ``None`` for universal matching.  Raises :class:`QueryError` for a
    value that cannot be matched.
    """
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        value = "\\".join(str(v) for v in value)
    value = str(value).strip()
    if value in ("", "*"):
        return None
    col = table.c[attr.column]

    if attr.keyword == "ModalitiesInStudy":
        return _multi_valued_clause(col, value)

    if attr.vr == "UI":
        uids = [u.strip() for u in value.split("\\") if u.strip()]
        if len(uids) == 1:
            return col == uids[0]
        return col.in_(uids)

    if attr.is_int:
        vals = []
        for v in value.split("\\"):
            v = v.strip()
            if not v:
                continue
            try:
                vals.append(int(v))
            except ValueError:
                raise QueryError(f"{attr.keyword}: {v!r} is not a number") from None
        if not vals:
            return None
        return col == vals[0] if len(vals) == 1 else col.in_(vals)

    if attr.vr in ("DA", "TM", "DT"):
        if "\\" in value:
            return or_(*[c for c in (match_clause(table, attr, v) for v in value.split("\\")) if c is not None])
        if "-" in value:
            return _range_clause(attr, col, value)
        v = _check_range_bound(attr, value) if not has_wildcard(value) else value
        if attr.vr == "TM" and not has_wildcard(v):
            # 1030 matches 1030, 103000, 103015.5: the stored value starts with it
            # once both are padded; compare on the given precision.
            return or_(col == v, col.like(_like_pattern(v) + "%", escape=_LIKE_ESCAPE))
        value = v

    if attr.is_person_name and fuzzy_names:
        col = table.c[f"{attr.column}_norm"]
        value = normalise_person_name(value) or ""
        if not has_wildcard(value):
            # "DOE^JOHN" matches "Doe^John" and also "Doe^John^^Dr".
            return or_(col == value, col.like(_like_pattern(value) + "^%", escape=_LIKE_ESCAPE))

    if "\\" in value and attr.vr not in ("PN",):
        alts = [v for v in value.split("\\")]
        return or_(*[
            col.like(_like_pattern(v), escape=_LIKE_ESCAPE) if has_wildcard(v) else col == v
            for v in alts
        ])

    if has_wildcard(value):
        return col.like(_like_pattern(value), escape=_LIKE_ESCAPE)
    return col == value
