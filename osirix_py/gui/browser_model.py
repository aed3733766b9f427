"""The database browser's tree model: patients > studies > series, from ``archive.find``.

Columns come from the attribute table (:mod:`osirix_py.dicom.tags`): every
``browser=True`` attribute of the patient, study and series levels.  Columns
whose titles coincide once the level's name is dropped ("Study Description" /
"Series Description" -> "Description", the two instance counts ->
"Instances") are merged: a row shows the attribute of its own level.  The
tree column ("Name") shows each level's name-like attribute.

Queries run on the background pool (``archive.find`` at the study and the
series level with the same DICOM matching keys); results are *merged* into
the tree on the GUI thread so that expansion, selection and scroll position
survive a live refresh.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_description
from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, Qt, Signal

from ..dicom.tags import ATTRIBUTES, Attribute, Level

log = logging.getLogger(__name__)

TREE_LEVELS = (Level.PATIENT, Level.STUDY, Level.SERIES)
UID_KEY = {Level.PATIENT: "PatientID", Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID"}

#: Roles for tests and views.
LevelRole = Qt.ItemDataRole.UserRole + 1
UidRole = Qt.ItemDataRole.UserRole + 2
RowRole = Qt.ItemDataRole.UserRole + 3
SortRole = Qt.ItemDataRole.UserRole + 4


# --------------------------------------------------------------------------- columns
@dataclass
class Column:
    title: str
    by_level: dict[Level, Attribute] = field(default_factory=dict)

    @property
    def tooltip(self) -> str:
        return "\n".join(f"{a.tag_str} {dictionary_description(a.tag)} ({lv.value.lower()})"
                         for lv, a in self.by_level.items())


def column_title(attr: Attribute) -> str:
    """A short header for an attribute: "Patient's Sex" -> "Sex", "Study Date" -> "Date",
    "Number of Series Related Instances" -> "Instances"."""
    d = dictionary_description(attr.tag)
    m = re.match(r"Number of \w+ Related (\w+)$", d)
    if m:
        return m.group(1)
    d = d.replace("Patient's ", "")
    for prefix in ("Study ", "Series "):
        rest = d[len(prefix):]
        if d.startswith(prefix) and rest in ("Date", "Time", "Description"):
            return rest
    return d


def _is_label(attr: Attribute) -> bool:
    return attr.keyword.endswith("Name") or attr.keyword.endswith("Description")


def browser_columns() -> list[Column]:
    """Column 0 is the tree column; the others follow the attribute table's order."""
    label = Column("Name")
    cols: dict[str, Column] = {}
    for a in ATTRIBUTES:
        if not a.browser or a.level not in TREE_LEVELS:
            continue
        if a.level not in label.by_level and _is_label(a):
            label.by_level[a.level] = a
            continue
        c = cols.setdefault(column_title(a), Column(column_title(a)))
        c.by_level.setdefault(a.level, a)
    return [label, *cols.values()]


# --------------------------------------------------------------------------- formatting
def format_value(attr: Attribute | None, value: Any) -> str:
    if value is None or value == "":
        return ""
    if attr is None:
        return str(value)
    if attr.vr == "DA":
        s = str(value)
        if len(s) == 8 and s.isdigit():
            return f"{s[:4]}-{s[4:6]}-{s[6:]}"
        return s
    if attr.vr == "TM":
        s = str(value)
        return f"{s[:2]}:{s[2:4]}:{s[4:6]}".rstrip(":") if s[:6].isdigit() else s
    if attr.is_person_name:
        return format_person_name(str(value))
    if isinstance(value, str) and "\\" in value:
        return ", ".join(v for v in value.split("\\") if v)
    return str(value)


def format_person_name(pn: str) -> str:
    """``Doe^John^^Dr`` -> ``Doe, John``; other component groups (ideographic) dropped."""
    alpha = pn.split("=")[0]
    parts = [p.strip() for p in alpha.split("^")]
    family = parts[0] if parts else ""
    given = " ".join(p for p in parts[1:3] if p)
    if family and given:
        return f"{family}, {given}"
    return family or given or pn


def _sort_key(attr: Attribute | None, value: Any):
    if value is None or value == "":
        return (1, 0, "")
    if attr is not None and attr.is_int:
        try:
            return (0, int(value), "")
        except (TypeError, ValueError):
            pass
    if isinstance(value, (int, float)):
        return (0, value, "")
    return (0, 0, str(value).casefold())


# --------------------------------------------------------------------------- nodes
class Node:
    __slots__ = ("level", "key", "row", "parent", "children", "pos", "__weakref__")

    def __init__(self, level: Level | None, key: str, row: dict | None, parent: "Node | None"):
        self.level = level
        self.key = key
        self.row = row or {}
        self.parent = parent
        self.children: list[Node] = []
        self.pos = 0

    def renumber(self) -> None:
        for i, c in enumerate(self.children):
            c.pos = i


def group_rows(studies: list[dict], series: list[dict]) -> list[tuple[str, dict, list]]:
    """(patient key, patient row, [(study uid, study row, [(series uid, row, [])])])."""
    by_study: dict[str, list] = {}
    for r in series:
        by_study.setdefault(r["StudyInstanceUID"], []).append((r["SeriesInstanceUID"], r, []))
    patients: dict[str, tuple[str, dict, list]] = {}
    for st in studies:
        pid = st.get("PatientID") or ""
        key = f"{pid}\x00{st.get('IssuerOfPatientID') or ''}"
        p = patients.get(key)
        if p is None:
            p = patients[key] = (key, st, [])
        p[2].append((st["StudyInstanceUID"], st, by_study.get(st["StudyInstanceUID"], [])))
    return list(patients.values())


class DatabaseModel(QAbstractItemModel):
    """Patients, studies and series matching the current query (DICOM matching keys)."""

    #: Emitted on the GUI thread after every refresh has been merged.
    refreshed = Signal()
    #: A refresh failed (bad query value, database error); the message is for the user.
    failed = Signal(str)

    def __init__(self, ctx, parent: QObject | None = None):
        super().__init__(parent)
        self._ctx = ctx
        self.columns = browser_columns()
        self.root = Node(None, "", None, None)
        self.query: dict[str, str] = {}
        self._sort: tuple[int, Qt.SortOrder] | None = None
        self._busy = False
        self._again = False
        self.generation = 0

    # ------------------------------------------------------------ loading
    def set_query(self, query: dict[str, str]) -> None:
        self.query = {k: v for k, v in query.items() if v}
        self.refresh()

    def refresh(self) -> None:
        """Re-run the query in the background; merged when it answers (coalesced)."""
        if self._busy:
            self._again = True
            return
        self._busy = True
        query = dict(self.query)
        archive = self._ctx.archive

        def work():
            studies = archive.find(Level.STUDY, query)
            series = archive.find(Level.SERIES, query) if studies else []
            return group_rows(studies, series)

        if self._ctx.submit(work, self._loaded, self._load_failed) is None:
            self._busy = False

    def _loaded(self, tree) -> None:
        self._busy = False
        self._merge(self.root, QModelIndex(), tree, 0)
        if self._sort is not None:
            self._apply_sort()
        self.generation += 1
        self.refreshed.emit()
        if self._again:
            self._again = False
            self.refresh()

    def _load_failed(self, exc: BaseException) -> None:
        self._busy = False
        log.warning("browser query %s failed: %s", self.query, exc)
        self.failed.emit(str(exc))
        if self._again:
            self._again = False
            self.refresh()

    def _merge(self, node: Node, index: QModelIndex, items: list, depth: int) -> None:
        level = TREE_LEVELS[depth]
        new_keys = {k for k, _, _ in items}
        for i in range(len(node.children) - 1, -1, -1):
            if node.children[i].key not in new_keys:
                self.beginRemoveRows(index, i, i)
                del node.children[i]
                self.endRemoveRows()
        node.renumber()
        existing = {c.key: c for c in node.children}
        added = [(k, r, ch) for k, r, ch in items if k not in existing]
        for k, r, _ in items:
            c = existing.get(k)
            if c is not None and c.row != r:
                c.row = r
                self.dataChanged.emit(self.createIndex(c.pos, 0, c),
                                      self.createIndex(c.pos, len(self.columns) - 1, c))
        if added:
            first = len(node.children)
            self.beginInsertRows(index, first, first + len(added) - 1)
            for k, r, _ in added:
                node.children.append(Node(level, k, r, node))
            node.renumber()
            self.endInsertRows()
        if depth + 1 < len(TREE_LEVELS):
            by_key = {k: ch for k, _, ch in items}
            for c in node.children:
                self._merge(c, self.createIndex(c.pos, 0, c), by_key[c.key], depth + 1)

    # --------------------------------------------------------------- lookup
    def node(self, index: QModelIndex) -> Node | None:
        return index.internalPointer() if index.isValid() else None

    def iter_nodes(self, node: Node | None = None):
        for c in (node or self.root).children:
            yield c
            yield from self.iter_nodes(c)

    def counts(self) -> dict[Level, int]:
        out = {lv: 0 for lv in TREE_LEVELS}
        for n in self.iter_nodes():
            out[n.level] += 1
        return out

    # --------------------------------------------------------------- Qt API
    def index(self, row, column, parent=QModelIndex()):
        p = self.node(parent) or self.root
        if 0 <= row < len(p.children) and 0 <= column < len(self.columns):
            return self.createIndex(row, column, p.children[row])
        return QModelIndex()

    def parent(self, index=QModelIndex()):  # noqa: A003 - Qt API
        n = self.node(index)
        if n is None or n.parent is None or n.parent is self.root:
            return QModelIndex()
        return self.createIndex(n.parent.pos, 0, n.parent)

    def rowCount(self, parent=QModelIndex()):  # noqa: N802
        if parent.isValid() and parent.column() != 0:
            return 0
        return len((self.node(parent) or self.root).children)

    def columnCount(self, parent=QModelIndex()):  # noqa: N802
        return len(self.columns)

    def hasChildren(self, parent=QModelIndex()):  # noqa: N802
        return self.rowCount(parent) > 0

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < len(self.columns):
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.columns[section].title
        if role == Qt.ItemDataRole.ToolTipRole:
            return self.columns[section].tooltip
        return None

    def flags(self, index):
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def value(self, node: Node, column: int) -> tuple[Attribute | None, Any]:
        attr = self.columns[column].by_level.get(node.level)
        return attr, (node.row.get(attr.keyword) if attr is not None else None)

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        n = self.node(index)
        if n is None:
            return None
        col = index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            attr, v = self.value(n, col)
            text = format_value(attr, v)
            if col == 0 and not text:
                text = {Level.PATIENT: "(no name)", Level.STUDY: "(no description)",
                        Level.SERIES: f"Series {n.row.get('SeriesNumber') or ''}".strip()}[n.level]
            return text
        if role == Qt.ItemDataRole.ToolTipRole and col == 0:
            return f"{n.level.value.title()} {UID_KEY[n.level]}: {n.row.get(UID_KEY[n.level])}"
        if role == LevelRole:
            return n.level
        if role == UidRole:
            return n.row.get(UID_KEY[n.level])
        if role == RowRole:
            return n.row
        if role == SortRole:
            return _sort_key(*self.value(n, col))
        if role == Qt.ItemDataRole.TextAlignmentRole:
            attr, _ = self.value(n, col)
            if attr is not None and attr.is_int:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    # ----------------------------------------------------------------- sort
    def sort(self, column, order=Qt.SortOrder.AscendingOrder):
        self._sort = (column, order)
        self._apply_sort()

    def _apply_sort(self) -> None:
        column, order = self._sort
        self.layoutAboutToBeChanged.emit()
        old = self.persistentIndexList()
        old_nodes = [(self.node(i), i.column()) for i in old]
        self._sort_children(self.root, column, order == Qt.SortOrder.DescendingOrder)
        self.changePersistentIndexList(
            old, [self.createIndex(n.pos, c, n) if n is not None else QModelIndex() for n, c in old_nodes])
        self.layoutChanged.emit()

    def _sort_children(self, node: Node, column: int, reverse: bool) -> None:
        if not node.children:
            return

        keyed = [(_sort_key(*self.value(c, column)), _sort_key(*self.value(c, 0)), c) for c in node.children]
        present = [x for x in keyed if x[0][0] == 0]
        missing = [x for x in keyed if x[0][0] != 0]
        present.sort(key=lambda x: (x[0], x[1]), reverse=reverse)
        missing.sort(key=lambda x: x[1])  # missing values last in both orders
        node.children = [x[2] for x in present + missing]
        node.renumber()
        for c in node.children:
            self._sort_children(c, column, reverse)
