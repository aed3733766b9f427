"""The Query & Retrieve window, and the network jobs it shares with "Send to".

The window searches a remote location (a node of Preferences > Locations)
with C-FIND at the study level, lists the series of the selected study
(series-level C-FIND) and retrieves studies or series by the node's method
(C-MOVE to our listener, or C-GET).  Every network call runs off the GUI
thread: searches on the context's background pool, retrieves as jobs of the
Activity panel.  A retrieved study reaches the browser through the change
feed, like any instance the listener receives.

Network jobs (:func:`start_transfers`) run through the embedded runtime's
:class:`~osirix_py.services.jobs.JobManager` when there is one (so they are
recorded in the jobs table like those of the command line), mirrored into a
GUI :class:`~osirix_py.gui.jobs.Job` for the Activity panel; without a
runtime (tests) they call the client directly.  Failures become messages a
user can act on (:func:`problem_text`); the technical text goes to the
details and the log.  In server mode nothing is shown: messages are logged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QDate,
    QModelIndex,
    QSettings,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QAction, QBrush, QColor, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QDateEdit,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QProgressBar,
    QPushButton,
    QSplitter,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..dicom.tags import Level, find_attribute
from .browser_model import format_value
from .jobs import Job
from .notify import WARNING, is_server_mode, notify
from .search import DATE_SHORTCUTS, MODALITIES, _contains, selected_dates

log = logging.getLogger(__name__)

#: At most this many studies are listed per search (a C-CANCEL stops the rest).
MAX_RESULTS = 1000
#: Separates the message for people from the technical text in a job's errors.
DETAILS_SEP = "\n\nTechnical details: "
#: Rows of the UID lists looked up in the local archive at once.
_CHUNK = 400


# --------------------------------------------------------------------------- messages
def problem_kind(error: str) -> str:
    """What kind of failure a client-side error message describes.

    One of ``"unknown-host"``, ``"unreachable"``, ``"called-ae"``,
    ``"calling-ae"``, ``"rejected"``, ``"move-destination"``, ``"listener"``,
    ``"timeout"``, ``"nothing"`` or ``"other"``.  The messages come from
    :mod:`osirix_py.net.scu` / :mod:`osirix_py.net.client`
    (:class:`~osirix_py.net.scu.ScuError`), also through the job manager,
    which keeps only their text.
    """
    low = str(error).lower()
    if "unknown host" in low:
        return "unknown-host"
    if ("connection refused" in low or "no tcp connection" in low or "cannot connect" in low
            or ("no answer from" in low and "host down" in low)):
        return "unreachable"
    if "called ae title not recognised" in low:
        return "called-ae"
    if "calling ae title not recognised" in low:
        return "calling-ae"
    if "move destination" in low:
        return "move-destination"
    if "receiving images is off" in low:
        return "listener"
    if "aborted the association request" in low or "association was aborted" in low:
        # Orthanc (and others) abort instead of rejecting an unknown calling AE.
        return "calling-ae"
    if "rejected" in low:
        return "rejected"
    if "not a dicom port" in low:
        return "unreachable"
    if "within" in low and ("no " in low or "timeout" in low):
        return "timeout"
    if "nothing to send" in low:
        return "nothing"
    return "other"


def problem_text(error: BaseException | str, node, *, action: str = "query",
                 our_ae: str = "OSIRIXPY", our_port: int | None = None) -> str:
    """A message a user can act on, for a failed query, retrieve or send with *node*."""
    text = str(error)
    kind = problem_kind(text)
    name = getattr(node, "name", str(node))
    where = f"\u201c{name}\u201d"
    addr = f"{getattr(node, 'host', '?')}, port {getattr(node, 'port', '?')}"
    us = f"{our_ae} (this computer{f', port {our_port}' if our_port else ''})"
    if kind == "unknown-host":
        return (f"osirix-py cannot find the computer \u201c{getattr(node, 'host', '?')}\u201d of the "
                f"location {where}. Check its address in Preferences \u203a Locations.")
    if kind == "unreachable":
        return (f"The location {where} cannot be reached: nothing answers at {addr}. Check that the "
                "device is switched on and connected to the network, and that its address and port "
                "in Preferences \u203a Locations are right.")
    if kind == "called-ae":
        return (f"The location {where} answered, but it does not go by the AE title "
                f"\u201c{getattr(node, 'ae_title', '?')}\u201d. Check the AE title of this location in "
                "Preferences \u203a Locations.")
    if kind == "calling-ae":
        return (f"The location {where} refused to work with this workstation: it probably does not "
                f"know osirix-py's AE title. Ask its administrator to add {us} to its list of DICOM "
                "nodes.")
    if kind == "rejected":
        reason = text.split("rejected:", 1)[-1].split("(we called", 1)[0].strip(" .") if "rejected:" in text else ""
        return (f"The location {where} refused the connection"
                + (f" ({reason.lower()})" if reason else "") + ". Try again later, or check its "
                "settings in Preferences \u203a Locations.")
    if kind == "move-destination":
        return move_problem_text(name, us)
    if kind == "listener":
        return (f"Images from {where} are retrieved by C-MOVE, which needs osirix-py to receive "
                "images, but receiving images is off. Turn the listener on in Preferences \u203a "
                "Listener, or set the retrieve method of this location to C-GET.")
    if kind == "timeout":
        return f"The location {where} did not answer in time. It may be busy: try again later."
    if kind == "nothing":
        return "There is nothing to send: the selected images are no longer in the database."
    verb = {"query": "search", "retrieve": "retrieve", "send": "sending"}.get(action, action)
    return f"The {verb} with the location {where} did not succeed."


def move_problem_text(name: str, us: str) -> str:
    """A C-MOVE whose images cannot come: the PACS does not know us, or has a wrong address."""
    return (f"The location \u201c{name}\u201d could not send the images to this workstation: it does "
            f"not know it, or has a wrong address for it. Ask its administrator to add {us} to its "
            "list of DICOM nodes, or set the retrieve method of this location to C-GET in "
            "Preferences \u203a Locations.")


# --------------------------------------------------------------------------- network jobs
@dataclass
class Transfer:
    """One retrieve or send: a study or a series (``label`` names it for people)."""

    study_uid: str | None = None
    series_uid: str | None = None
    label: str = ""


@dataclass
class _Outcome:
    completed: int = 0
    failed: int = 0
    warning: int = 0
    total: int = 0
    cancelled: bool = False
    error: str | None = None
    failures: dict[str, str] = field(default_factory=dict)


class TransferError(RuntimeError):
    """A network job failed as a whole; the message is for people (``details``: technical)."""

    def __init__(self, message: str, details: str = ""):
        super().__init__(message)
        self.details = details


def our_address(ctx) -> tuple[str, int | None, float]:
    """(our AE title, our listener port or None, connect timeout) of this session."""
    rt = ctx.runtime
    settings = rt.settings if rt is not None else ctx.settings
    port = rt.listener_port if rt is not None and rt.listener.is_running() else None
    return settings.listener.ae_title, port, float(getattr(settings, "connect_timeout", 10.0))


def _listener_running(ctx) -> bool:
    rt = ctx.runtime
    return rt is not None and rt.listener.is_running()


def start_transfers(ctx, kind: str, node, transfers: Sequence[Transfer], title: str, *,
                    on_done: Callable[[Job], None] | None = None) -> Job:
    """Retrieve (``kind="retrieve"``) or send (``"send"``) *transfers* with *node* as ONE
    Activity job; progress, rate, per-instance problems and cancel there.

    When the job fails as a whole the user gets one message (a log line in
    server mode).  ``on_done(job)`` runs on the GUI thread afterwards.
    """
    if kind not in ("retrieve", "send"):
        raise ValueError(f"unknown transfer kind {kind!r}")
    transfers = list(transfers)
    job = Job(kind, title)
    our_ae, _, timeout = our_address(ctx)

    def work(job: Job):
        method = getattr(node, "retrieve_method", "move")
        if kind == "retrieve" and method == "move" and not _listener_running(ctx):
            raise TransferError(problem_text("receiving images is off", node, action=kind, our_ae=our_ae),
                                "C-MOVE needs the DICOM listener, which is not running")
        expected: list[int | None] = []
        if kind == "send":
            for t in transfers:
                expected.append(ctx.archive.count(Level.IMAGE, _send_query(t)))
            job.update(total=sum(e or 0 for e in expected), done=0)
        base, outcomes = 0, []
        for i, t in enumerate(transfers):
            if job.cancelled:
                break
            if len(transfers) > 1:
                job.update(status=f"{t.label or 'item'} ({i + 1} of {len(transfers)})")
            out = _one_transfer(ctx, kind, node, t, job, base, timeout)
            outcomes.append(out)
            if kind == "retrieve":
                base += out.completed + out.failed + out.warning
                job.update(total=max(job.total, base), done=base)
            else:
                base += expected[i] if expected[i] is not None else out.total
            if out.cancelled:
                break
        return _finish(ctx, job, kind, node, outcomes)

    def done(job: Job):
        what = "Retrieve" if kind == "retrieve" else "Send"
        if job.state == "failed":
            err = job.errors[-1] if job.errors else "unknown error"
            notify(WARNING, f"{what} failed", err.split(DETAILS_SEP)[0], details="\n".join(job.errors))
        elif job.state == "done" and isinstance(job.result, dict) and job.result.get("failed"):
            r = job.result
            verb = "retrieved" if kind == "retrieve" else "sent"
            notify(WARNING, f"{what}: some images failed",
                   f"{job.title}: {r['failed']} of {r['completed'] + r['failed']} image(s) could not be "
                   f"{verb}. The Activity panel lists them.", details="\n".join(job.errors[:200]))
        if on_done is not None:
            on_done(job)

    return ctx.jobs.start(job, work, on_done=done)


def _send_query(t: Transfer) -> dict:
    q = {}
    if t.study_uid:
        q["StudyInstanceUID"] = t.study_uid
    if t.series_uid:
        q["SeriesInstanceUID"] = t.series_uid
    return q


def _finish(ctx, job: Job, kind: str, node, outcomes: list[_Outcome]) -> dict:
    our_ae = our_address(ctx)[0]
    completed = sum(o.completed for o in outcomes)
    failed = sum(o.failed for o in outcomes)
    warning = sum(o.warning for o in outcomes)
    # Errors of transfers that failed as a whole (partial failures are listed per instance).
    errors = [o.error for o in outcomes if o.error and not o.completed]
    port = ctx.runtime.listener_port if ctx.runtime is not None else None
    for o in outcomes:
        for uid, why in list(o.failures.items())[:200]:
            job.add_error(f"instance {uid}: {why}")
    verb = "received" if kind == "retrieve" else "sent"
    summary = f"{completed + warning} image(s) {verb}" + (f", {failed} failed" if failed else "")
    if job.cancelled or any(o.cancelled for o in outcomes):
        job.update(status=summary + " (cancelled)")
        return {"completed": completed, "failed": failed}
    if not completed and not warning and (errors or failed):
        job.update(status=summary)
        if errors and (problem_kind(errors[0]) != "other" or not failed):
            friendly = problem_text(errors[0], node, action=kind, our_ae=our_ae, our_port=port)
        elif kind == "retrieve" and getattr(node, "retrieve_method", "") == "move":
            # The PACS took the C-MOVE but its transfers to us failed: it has a wrong address for us.
            friendly = move_problem_text(node.name, f"{our_ae} (this computer{f', port {port}' if port else ''})")
        else:
            friendly = (f"None of the {failed} image(s) could be {verb} "
                        f"({'from' if kind == 'retrieve' else 'to'} \u201c{node.name}\u201d).")
        technical = errors[0] if errors else f"{failed} sub-operation(s) failed"
        raise TransferError(f"{friendly}{DETAILS_SEP}{technical}", technical)
    for e in errors:
        job.add_error(problem_text(e, node, action=kind, our_ae=our_ae, our_port=port) + DETAILS_SEP + e)
    job.update(status=summary, done=max(job.done, completed + failed + warning),
               total=max(job.total, completed + failed + warning))
    return {"completed": completed, "failed": failed}


def _one_transfer(ctx, kind: str, node, t: Transfer, job: Job, base: int, timeout: float) -> _Outcome:
    """Run one retrieve/send (through the runtime's job manager when there is one)."""
    def show(completed, failed, warning, total, rate):
        done = base + completed + failed + warning
        if kind == "retrieve":
            job.update(done=done, total=max(job.total, base + total, done), rate=rate or None)
        else:
            job.update(done=done, rate=rate or None)

    rt = ctx.runtime
    if rt is not None:
        mgr = rt.jobs
        try:
            if kind == "retrieve":
                mj = mgr.submit_retrieve(node, study_uid=t.study_uid, series_uid=t.series_uid)
            else:
                mj = mgr.submit_send(node, study_uid=t.study_uid, series_uid=t.series_uid)
        except RuntimeError as exc:  # shut down
            return _Outcome(error=str(exc))
        cancel_sent = False
        while True:
            cur = mgr.wait(mj.id, 0.1)
            show(cur.completed, cur.failed, cur.warning, cur.total, cur.rate)
            if cur.finished:
                break
            if job.cancelled and not cancel_sent:
                mgr.cancel(mj.id)
                cancel_sent = True
        cur = mgr.get(mj.id)
        return _Outcome(cur.completed, cur.failed, cur.warning, cur.total, cur.state == "cancelled",
                        cur.error if cur.state == "failed" else None,
                        dict(cur.details.get("failures") or {}))
    # No runtime (tests, tools): the client directly.
    from ..net import client
    from ..net.scu import ScuError

    our_ae, port, _ = our_address(ctx)

    def progress(p):
        show(p.completed, p.failed, p.warning, p.total, p.rate)

    try:
        if kind == "retrieve":
            p = client.retrieve(node, ctx.archive, study_uid=t.study_uid, series_uid=t.series_uid,
                                method=node.retrieve_method, calling_ae=our_ae, listener_port=port,
                                timeout=timeout, progress=progress, cancel=job.cancel_event)
        else:
            rows = ctx.archive.find(Level.IMAGE, _send_query(t))
            if not rows:
                return _Outcome(error=f"nothing to send: no local instance matches {_send_query(t)}")
            p = client.send(node, ctx.archive, rows, calling_ae=our_ae, timeout=timeout,
                            progress=progress, cancel=job.cancel_event)
    except ScuError as exc:
        return _Outcome(error=str(exc))
    progress(p)
    err = p.error if (p.error and not p.completed) else None
    return _Outcome(p.completed, p.failed, p.warning, p.total, p.cancelled, err, dict(p.failures))


# --------------------------------------------------------------------------- table model
@dataclass
class _Col:
    title: str
    keyword: str | None  # None: computed ("Local")
    align_right: bool = False


STUDY_COLUMNS = (
    _Col("Patient name", "PatientName"), _Col("Patient ID", "PatientID"),
    _Col("Birth date", "PatientBirthDate"), _Col("Study date", "StudyDate"),
    _Col("Description", "StudyDescription"), _Col("Modality", "ModalitiesInStudy"),
    _Col("Accession", "AccessionNumber"), _Col("Series", "NumberOfStudyRelatedSeries", True),
    _Col("Images", "NumberOfStudyRelatedInstances", True), _Col("Local", None),
)
SERIES_COLUMNS = (
    _Col("#", "SeriesNumber", True), _Col("Modality", "Modality"),
    _Col("Description", "SeriesDescription"), _Col("Date", "SeriesDate"),
    _Col("Images", "NumberOfSeriesRelatedInstances", True), _Col("Local", None),
)

RowRole = Qt.ItemDataRole.UserRole + 1
SortRole = Qt.ItemDataRole.UserRole + 2


class RemoteRowsModel(QAbstractTableModel):
    """Rows of a remote C-FIND (dicts keyed by keyword) and how many of each are here."""

    def __init__(self, columns: Sequence[_Col], uid_key: str, count_key: str, parent=None):
        super().__init__(parent)
        self.columns = tuple(columns)
        self.uid_key = uid_key
        self.count_key = count_key
        self.rows: list[dict] = []
        #: UID -> number of instances in the local archive.
        self.local: dict[str, int] = {}

    def set_rows(self, rows: list[dict], local: dict[str, int] | None = None) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.local = dict(local or {})
        self.endResetModel()

    def set_local(self, local: dict[str, int]) -> None:
        self.local.update(local)
        if self.rows:
            c = len(self.columns) - 1
            self.dataChanged.emit(self.index(0, c), self.index(len(self.rows) - 1, c))

    def row(self, i: int) -> dict | None:
        return self.rows[i] if 0 <= i < len(self.rows) else None

    def uids(self) -> list[str]:
        return [str(r.get(self.uid_key)) for r in self.rows if r.get(self.uid_key)]

    def local_text(self, r: dict) -> str:
        here = self.local.get(str(r.get(self.uid_key)), 0)
        if not here:
            return ""
        remote = r.get(self.count_key)
        if remote is None or here >= int(remote):
            return "\u2714"
        return f"{here}/{remote}"

    def rowCount(self, parent=QModelIndex()) -> int:  # noqa: N802 - Qt API
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.columns)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation != Qt.Orientation.Horizontal:
            return None
        col = self.columns[section]
        if role == Qt.ItemDataRole.DisplayRole:
            return col.title
        if role == Qt.ItemDataRole.ToolTipRole and col.keyword is None:
            return "Images of this row already in the local database (\u2714: all of them)"
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        r = self.rows[index.row()]
        col = self.columns[index.column()]
        if role == RowRole:
            return r
        if role == Qt.ItemDataRole.DisplayRole or role == Qt.ItemDataRole.ToolTipRole:
            if col.keyword is None:
                return self.local_text(r)
            return format_value(find_attribute(col.keyword), r.get(col.keyword))
        if role == SortRole:
            if col.keyword is None:
                return self.local.get(str(r.get(self.uid_key)), 0)
            v = r.get(col.keyword)
            if v is None:
                return "" if not col.align_right else -1
            return v if isinstance(v, int) else str(v).lower()
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if col.align_right:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if col.keyword is None:
                return int(Qt.AlignmentFlag.AlignCenter)
        if role == Qt.ItemDataRole.ForegroundRole and col.keyword is None:
            return QBrush(QColor(30, 130, 60))
        return None


def _local_counts(archive, level: Level, uid_key: str, count_key: str, uids: list[str]) -> dict[str, int]:
    """UID -> instances in the local archive, for the UIDs that are here at all."""
    out: dict[str, int] = {}
    for i in range(0, len(uids), _CHUNK):
        chunk = [u for u in uids[i:i + _CHUNK] if u and "\\" not in u]
        if not chunk:
            continue
        for r in archive.find(level, {uid_key: "\\".join(chunk)}):
            out[str(r[uid_key])] = int(r.get(count_key) or 0)
    return out


def _table(model: RemoteRowsModel, name: str) -> tuple[QTableView, QSortFilterProxyModel]:
    proxy = QSortFilterProxyModel()
    proxy.setSourceModel(model)
    proxy.setSortRole(SortRole)
    view = QTableView()
    view.setObjectName(name)
    view.setModel(proxy)
    view.setSortingEnabled(True)
    view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
    view.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
    view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    view.setAlternatingRowColors(True)
    view.setWordWrap(False)
    view.verticalHeader().hide()
    view.verticalHeader().setDefaultSectionSize(view.fontMetrics().height() + 8)
    view.horizontalHeader().setStretchLastSection(False)
    view.horizontalHeader().setHighlightSections(False)
    view.horizontalHeader().setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
    view.sortByColumn(-1, Qt.SortOrder.AscendingOrder)
    for i, c in enumerate(model.columns):
        if c.keyword in ("StudyDescription", "SeriesDescription"):
            view.horizontalHeader().setSectionResizeMode(i, QHeaderView.ResizeMode.Stretch)
    return view, proxy


# --------------------------------------------------------------------------- window
class QueryRetrieveWindow(QMainWindow):
    """Search a remote location, list its studies and their series, retrieve them."""

    #: The user asked to edit the locations (the browser opens Preferences).
    locationsRequested = Signal()
    #: A search finished: (number of studies, error text or "").
    searchFinished = Signal(int, str)
    #: The series of the current study are listed (number of series, error text or "").
    seriesListed = Signal(int, str)

    def __init__(self, ctx, parent: QWidget | None = None):
        super().__init__(parent)
        self.ctx = ctx
        self.setObjectName("queryRetrieveWindow")
        self.setWindowTitle("osirix-py \u2014 Query & Retrieve")
        if parent is not None:
            self.setWindowFlag(Qt.WindowType.Window, True)
        self._nodes: dict[str, Any] = {}
        self._generation = 0
        self._series_generation = 0
        self._search_cancel: threading.Event | None = None
        self._searching = False
        self._search_started = 0.0
        self._search_node = None
        self._series_cache: dict[str, list[dict]] = {}
        #: Jobs started from this window (its progress bar sums the running ones).
        self.jobs: list[Job] = []
        self._state = QSettings(str(Path(ctx.settings.data_dir) / "gui-state.ini"),
                                QSettings.Format.IniFormat)

        # -- location
        self.location = QComboBox()
        self.location.setObjectName("qrLocation")
        self.location.setMinimumWidth(320)
        self.location.setToolTip("The DICOM location (PACS, modality, workstation) to search")
        self.locations_button = QPushButton("Locations\u2026")
        self.locations_button.setToolTip("Add or edit locations (Preferences \u203a Locations)")
        self.locations_button.clicked.connect(self.locationsRequested.emit)
        top = QHBoxLayout()
        top.addWidget(QLabel("Location:"))
        top.addWidget(self.location, 1)
        top.addWidget(self.locations_button)
        top.addStretch(1)

        # -- search fields
        self.name = QLineEdit(placeholderText="e.g. Doe or Doe^J*")
        self.patient_id = QLineEdit()
        self.accession = QLineEdit()
        self.description = QLineEdit(placeholderText="Study description")
        for w, n in ((self.name, "qrName"), (self.patient_id, "qrPatientId"),
                     (self.accession, "qrAccession"), (self.description, "qrDescription")):
            w.setClearButtonEnabled(True)
            w.setObjectName(n)
            w.returnPressed.connect(self.search)
        self.date = QComboBox()
        self.date.setObjectName("qrDate")
        self.date.addItems(DATE_SHORTCUTS)
        self.date_from = QDateEdit(calendarPopup=True, displayFormat="yyyy-MM-dd")
        self.date_to = QDateEdit(calendarPopup=True, displayFormat="yyyy-MM-dd")
        self.date_from.setDate(QDate.currentDate().addMonths(-1))
        self.date_to.setDate(QDate.currentDate())
        self.date_to_label = QLabel("to")
        self.date.currentTextChanged.connect(self._date_mode)
        self.modality = QComboBox()
        self.modality.setObjectName("qrModality")
        self.modality.setEditable(True)
        self.modality.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.modality.addItems(MODALITIES)
        self.modality.lineEdit().setPlaceholderText("Any")
        self.modality.setMinimumWidth(90)
        self.search_button = QPushButton("Search")
        self.search_button.setObjectName("qrSearch")
        self.search_button.setDefault(True)
        self.search_button.setToolTip("Search the location (Enter); Esc stops a search")
        self.search_button.clicked.connect(self._search_clicked)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setToolTip("Empty the search fields")
        self.clear_button.clicked.connect(self.clear_fields)

        box = QGroupBox("Search")
        g = QGridLayout(box)
        g.setHorizontalSpacing(8)
        g.addWidget(QLabel("Patient name:"), 0, 0)
        g.addWidget(self.name, 0, 1)
        g.addWidget(QLabel("Patient ID:"), 0, 2)
        g.addWidget(self.patient_id, 0, 3)
        g.addWidget(QLabel("Accession:"), 0, 4)
        g.addWidget(self.accession, 0, 5)
        g.addWidget(QLabel("Study date:"), 1, 0)
        dates = QHBoxLayout()
        dates.setSpacing(6)
        dates.addWidget(self.date)
        dates.addWidget(self.date_from)
        dates.addWidget(self.date_to_label)
        dates.addWidget(self.date_to)
        dates.addStretch(1)
        g.addLayout(dates, 1, 1)
        g.addWidget(QLabel("Modality:"), 1, 2)
        g.addWidget(self.modality, 1, 3)
        g.addWidget(QLabel("Description:"), 1, 4)
        g.addWidget(self.description, 1, 5)
        buttons = QVBoxLayout()
        buttons.addWidget(self.search_button)
        buttons.addWidget(self.clear_button)
        g.addLayout(buttons, 0, 6, 2, 1)
        for c in (1, 3, 5):
            g.setColumnStretch(c, 1)

        # -- results
        self.studies = RemoteRowsModel(STUDY_COLUMNS, "StudyInstanceUID", "NumberOfStudyRelatedInstances", self)
        self.series = RemoteRowsModel(SERIES_COLUMNS, "SeriesInstanceUID", "NumberOfSeriesRelatedInstances", self)
        self.study_view, self.study_proxy = _table(self.studies, "qrStudies")
        self.series_view, self.series_proxy = _table(self.series, "qrSeries")
        self.study_view.selectionModel().selectionChanged.connect(self._study_selection_changed)
        self.series_view.selectionModel().selectionChanged.connect(lambda *_: self._update_buttons())
        self.study_view.doubleClicked.connect(lambda *_: self.retrieve_studies())
        self.series_view.doubleClicked.connect(lambda *_: self.retrieve_series())
        self.series_label = QLabel("Series")
        self.series_label.setObjectName("qrSeriesLabel")
        lower = QWidget()
        ll = QVBoxLayout(lower)
        ll.setContentsMargins(0, 4, 0, 0)
        ll.addWidget(self.series_label)
        ll.addWidget(self.series_view)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.study_view)
        split.addWidget(lower)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setChildrenCollapsible(False)

        # -- bottom: message, progress, retrieve
        self.message = QLabel()
        self.message.setObjectName("qrMessage")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.progress = QProgressBar()
        self.progress.setObjectName("qrProgress")
        self.progress.setMaximumWidth(260)
        self.progress.setMinimumWidth(180)
        self.progress.hide()
        self.retrieve_series_button = QPushButton("Retrieve Series")
        self.retrieve_series_button.setObjectName("qrRetrieveSeries")
        self.retrieve_series_button.setToolTip("Copy the selected series into the local database")
        self.retrieve_series_button.clicked.connect(self.retrieve_series)
        self.retrieve_button = QPushButton("Retrieve Study")
        self.retrieve_button.setObjectName("qrRetrieve")
        self.retrieve_button.setToolTip("Copy the selected studies into the local database (Ctrl+R)")
        self.retrieve_button.clicked.connect(self.retrieve_studies)
        bottom = QHBoxLayout()
        bottom.addWidget(self.message, 1)
        bottom.addWidget(self.progress)
        bottom.addWidget(self.retrieve_series_button)
        bottom.addWidget(self.retrieve_button)

        central = QWidget()
        lay = QVBoxLayout(central)
        lay.setContentsMargins(8, 8, 8, 8)
        lay.addLayout(top)
        lay.addWidget(box)
        lay.addWidget(split, 1)
        lay.addLayout(bottom)
        self.setCentralWidget(central)
        self.statusBar().setSizeGripEnabled(True)

        # -- keyboard
        self.act_search = QAction("Search", self)
        self.act_search.setShortcuts([QKeySequence(Qt.Key.Key_Return), QKeySequence(Qt.Key.Key_Enter)])
        self.act_search.triggered.connect(self._enter)
        self.act_escape = QAction("Stop / Close", self)
        self.act_escape.setShortcut(QKeySequence(Qt.Key.Key_Escape))
        self.act_escape.triggered.connect(self._escape)
        self.act_retrieve = QAction("Retrieve", self)
        self.act_retrieve.setShortcut(QKeySequence("Ctrl+R"))
        self.act_retrieve.triggered.connect(self._retrieve_shortcut)
        self.act_find = QAction("Find", self)
        self.act_find.setShortcut(QKeySequence.StandardKey.Find)
        self.act_find.triggered.connect(lambda: (self.name.setFocus(), self.name.selectAll()))
        self.act_close = QAction("Close", self)
        self.act_close.setShortcut(QKeySequence.StandardKey.Close)
        self.act_close.triggered.connect(self.close)
        for a in (self.act_search, self.act_escape, self.act_retrieve, self.act_find, self.act_close):
            a.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
            self.addAction(a)

        ctx.jobs.dataChanged.connect(self._jobs_changed)
        ctx.jobs.finished.connect(self._job_finished)
        ctx.bridge.changed.connect(self._feed_changed)
        self.location.currentIndexChanged.connect(self._location_changed)
        self._date_mode(self.date.currentText())
        self.reload_locations()
        self._update_buttons()
        self.resize(1100, 720)

    # ------------------------------------------------------------ locations
    def reload_locations(self) -> None:
        """Fill the location list from the nodes table; keep (or restore) the choice."""
        current = self.location.currentData() or self._state.value("qr/location", "", str)
        try:
            nodes = self.ctx.nodes.list()
        except Exception as exc:  # noqa: BLE001 - the database went away
            log.warning("cannot list the locations: %s", exc)
            nodes = []
        self._nodes = {n.name: n for n in nodes}
        self.location.blockSignals(True)
        self.location.clear()
        for n in nodes:
            text = f"{n.name} \u2014 {n.ae_title}@{n.host}:{n.port}"
            if n.description:
                text += f"  ({n.description})"
            self.location.addItem(text, n.name)
            self.location.setItemData(self.location.count() - 1,
                                      f"{n}\nRetrieve by C-{n.retrieve_method.upper()}",
                                      Qt.ItemDataRole.ToolTipRole)
        if not nodes:
            self.location.addItem("No locations yet: add one with Locations\u2026", None)
        i = self.location.findData(current) if current else -1
        self.location.setCurrentIndex(max(i, 0))
        self.location.setEnabled(bool(nodes))
        self.location.blockSignals(False)
        self._update_buttons()

    def current_node(self):
        name = self.location.currentData()
        return self._nodes.get(name) if name else None

    def set_location(self, name: str) -> bool:
        i = self.location.findData(name)
        if i < 0:
            return False
        self.location.setCurrentIndex(i)
        return True

    def _location_changed(self, _i: int) -> None:
        name = self.location.currentData()
        if name:
            self._state.setValue("qr/location", name)
            self._state.sync()
        # Results belong to the location they came from.
        if self._search_node is not None and self._search_node.name != name:
            self._cancel_search()
            self.studies.set_rows([])
            self.series.set_rows([])
            self._series_cache.clear()
            self.series_label.setText("Series")
            self.message.clear()
        self._update_buttons()

    # --------------------------------------------------------------- search
    def _date_mode(self, text: str) -> None:
        for w in (self.date_from, self.date_to, self.date_to_label):
            w.setVisible(text == "Range...")

    def query(self) -> dict[str, str]:
        """The C-FIND matching keys of the search fields (empty ones left out)."""
        q: dict[str, str] = {}
        for key, w in (("PatientName", self.name), ("PatientID", self.patient_id),
                       ("AccessionNumber", self.accession), ("StudyDescription", self.description)):
            if v := _contains(w.text()):
                q[key] = v
        rng = selected_dates(self.date, self.date_from, self.date_to)
        if rng is not None:
            q["StudyDate"] = f"{rng[0]:%Y%m%d}" if rng[0] == rng[1] else f"{rng[0]:%Y%m%d}-{rng[1]:%Y%m%d}"
        mod = self.modality.currentText().strip().upper()
        if mod:
            q["ModalitiesInStudy"] = mod
        return q

    def clear_fields(self) -> None:
        for w in (self.name, self.patient_id, self.accession, self.description):
            w.clear()
        self.date.setCurrentIndex(0)
        self.modality.setCurrentIndex(0)
        self.name.setFocus()

    def _search_clicked(self) -> None:
        if self._searching:
            self._cancel_search()
        else:
            self.search()

    def search(self) -> None:
        """C-FIND the chosen location at the study level, on the background pool."""
        node = self.current_node()
        if node is None:
            self._say("Choose a location first (add one with Locations\u2026).", error=True)
            return
        self._cancel_search()
        self._generation += 1
        gen = self._generation
        cancel = threading.Event()
        self._search_cancel = cancel
        self._searching = True
        self._search_node = node
        self._search_started = time.monotonic()
        filters = self.query()
        our_ae, _, timeout = our_address(self.ctx)
        archive = self.ctx.archive
        self._series_cache.clear()
        self.search_button.setText("Stop")
        self._say(f"Searching {node.name}\u2026")

        def work():
            from ..net import client

            rows = client.query(node, Level.STUDY, filters, calling_ae=our_ae, timeout=timeout,
                                limit=MAX_RESULTS, cancel=cancel)
            local = _local_counts(archive, Level.STUDY, "StudyInstanceUID",
                                  "NumberOfStudyRelatedInstances",
                                  [str(r.get("StudyInstanceUID") or "") for r in rows])
            return rows, local

        self.ctx.submit(work, lambda res: self._search_done(gen, node, res, cancel),
                        lambda exc: self._search_failed(gen, node, exc))

    def _end_search(self) -> None:
        self._searching = False
        self.search_button.setText("Search")

    def _search_done(self, gen: int, node, res, cancel: threading.Event) -> None:
        if gen != self._generation:
            return
        self._end_search()
        rows, local = res
        rows.sort(key=lambda r: (str(r.get("StudyDate") or ""), str(r.get("StudyTime") or "")), reverse=True)
        self.studies.set_rows(rows, local)
        self.series.set_rows([])
        self.series_label.setText("Series \u2014 select a study to list its series")
        self._autosize(self.study_view)
        secs = time.monotonic() - self._search_started
        n = len(rows)
        text = f"{n} stud{'y' if n == 1 else 'ies'} found on {node.name} in {secs:.1f} s"
        if cancel.is_set():
            text += " (search stopped)"
        elif n >= MAX_RESULTS:
            text += f" \u2014 only the first {MAX_RESULTS} are listed: narrow the search"
        self._say(text)
        if rows:
            self.study_view.selectRow(0)
        self._update_buttons()
        self.searchFinished.emit(n, "")

    def _search_failed(self, gen: int, node, exc: BaseException) -> None:
        if gen != self._generation:
            return
        self._end_search()
        our_ae, port, _ = our_address(self.ctx)
        text = problem_text(exc, node, action="query", our_ae=our_ae, our_port=port)
        log.info("query of %s failed: %s", node, exc)
        self.studies.set_rows([])
        self.series.set_rows([])
        self._say(text, error=True)
        self._update_buttons()
        notify(WARNING, "Search failed", text, details=str(exc), parent=self if self.isVisible() else None)
        self.searchFinished.emit(0, text)

    def _cancel_search(self) -> None:
        if self._search_cancel is not None:
            self._search_cancel.set()
        if self._searching:
            self._generation += 1  # late results are ignored
            self._end_search()
            self._say("Search stopped.")
            self.searchFinished.emit(len(self.studies.rows), "stopped")

    # --------------------------------------------------------------- series
    def selected_studies(self) -> list[dict]:
        rows = self.study_view.selectionModel().selectedRows()
        return [self.studies.row(self.study_proxy.mapToSource(i).row()) for i in rows]

    def selected_series(self) -> list[dict]:
        rows = self.series_view.selectionModel().selectedRows()
        return [self.series.row(self.series_proxy.mapToSource(i).row()) for i in rows]

    def _study_selection_changed(self, *_):
        self._update_buttons()
        studies = self.selected_studies()
        if len(studies) != 1:
            self._series_generation += 1
            self.series.set_rows([])
            self.series_label.setText("Series \u2014 select one study to list its series")
            return
        self.list_series(studies[0])

    def list_series(self, study: dict) -> None:
        """Series-level C-FIND of *study* (cached per search)."""
        node = self._search_node
        uid = str(study.get("StudyInstanceUID") or "")
        if node is None or not uid:
            return
        self._series_generation += 1
        gen = self._series_generation
        who = format_value(find_attribute("PatientName"), study.get("PatientName")) or "?"
        desc = study.get("StudyDescription") or format_value(find_attribute("StudyDate"), study.get("StudyDate"))
        title = f"Series of {who} \u2014 {desc or 'study'}"
        archive = self.ctx.archive
        cached = self._series_cache.get(uid)
        our_ae, _, timeout = our_address(self.ctx)

        def work():
            from ..net import client

            rows = cached if cached is not None else client.query(
                node, Level.SERIES, {"StudyInstanceUID": uid}, calling_ae=our_ae, timeout=timeout)
            local = _local_counts(archive, Level.SERIES, "SeriesInstanceUID",
                                  "NumberOfSeriesRelatedInstances",
                                  [str(r.get("SeriesInstanceUID") or "") for r in rows])
            return rows, local

        def done(res):
            if gen != self._series_generation:
                return
            rows, local = res
            self._series_cache[uid] = rows
            rows = sorted(rows, key=lambda r: (r.get("SeriesNumber") is None, r.get("SeriesNumber") or 0))
            self.series.set_rows(rows, local)
            self._autosize(self.series_view)
            self.series_label.setText(f"{title}: {len(rows)} series")
            self._update_buttons()
            self.seriesListed.emit(len(rows), "")

        def failed(exc):
            if gen != self._series_generation:
                return
            our_ae2, port, _ = our_address(self.ctx)
            text = problem_text(exc, node, action="query", our_ae=our_ae2, our_port=port)
            log.info("series query of %s failed: %s", node, exc)
            self.series.set_rows([])
            self.series_label.setText(f"{title}: the series could not be listed")
            self._say(text, error=True)
            self.seriesListed.emit(0, text)

        self.series_label.setText(f"{title}: listing\u2026")
        self.ctx.submit(work, done, failed)

    # ------------------------------------------------------------- retrieve
    def retrieve_studies(self) -> list[Job]:
        """Retrieve every selected study (one Activity job each)."""
        node = self._search_node
        if node is None:
            return []
        started = []
        for s in self.selected_studies():
            uid = s.get("StudyInstanceUID")
            if not uid:
                continue
            label = _study_label(s)
            started.append(self._start(node, [Transfer(study_uid=uid, label=label)],
                                       f"Retrieve {label} from {node.name}"))
        return started

    def retrieve_series(self) -> list[Job]:
        """Retrieve the selected series of the current study (one Activity job)."""
        node = self._search_node
        studies = self.selected_studies()
        series = [r for r in self.selected_series() if r.get("SeriesInstanceUID")]
        if node is None or len(studies) != 1 or not series:
            return []
        study_uid = studies[0].get("StudyInstanceUID")
        transfers = [Transfer(study_uid=study_uid, series_uid=r["SeriesInstanceUID"], label=_series_label(r))
                     for r in series]
        what = transfers[0].label if len(transfers) == 1 else f"{len(transfers)} series"
        return [self._start(node, transfers,
                            f"Retrieve {what} of {_study_label(studies[0])} from {node.name}")]

    def _start(self, node, transfers: list[Transfer], title: str) -> Job:
        job = start_transfers(self.ctx, "retrieve", node, transfers, title, on_done=self._retrieved)
        self.jobs.append(job)
        self._say(f"{title}: started (progress in Activity).")
        self._jobs_changed()
        return job

    def _retrieve_shortcut(self) -> None:
        if self.series_view.hasFocus() and self.selected_series():
            self.retrieve_series()
        else:
            self.retrieve_studies()

    def _retrieved(self, job: Job) -> None:
        if job.state == "done":
            self._say(f"{job.title}: {job.status or 'done'}.")
        elif job.state == "cancelled":
            self._say(f"{job.title}: cancelled ({job.status}).")
        else:
            self._say(job.errors[-1].split(DETAILS_SEP)[0] if job.errors else
                      f"{job.title}: failed.", error=True)
        self.refresh_local()

    def refresh_local(self) -> None:
        """Look up again which studies/series are here (after a retrieve, a delete ...)."""
        study_uids = self.studies.uids()
        series_uids = self.series.uids()
        if not study_uids and not series_uids:
            return
        archive = self.ctx.archive

        def work():
            return (_local_counts(archive, Level.STUDY, "StudyInstanceUID", "NumberOfStudyRelatedInstances",
                                  study_uids),
                    _local_counts(archive, Level.SERIES, "SeriesInstanceUID",
                                  "NumberOfSeriesRelatedInstances", series_uids))

        def done(res):
            st, se = res
            if self.studies.uids() == study_uids:
                self.studies.local = {}
                self.studies.set_local(st)
            if self.series.uids() == series_uids:
                self.series.local = {}
                self.series.set_local(se)

        self.ctx.submit(work, done)

    def _feed_changed(self, events) -> None:
        if self.jobs and any(not j.is_finished for j in self.jobs):
            return  # refreshed when the retrieve ends
        if any(getattr(ev, "kind", "") == "deleted" for ev in events):
            self.refresh_local()

    # ------------------------------------------------------------- progress
    def _jobs_changed(self, *_):
        active = [j for j in self.jobs if not j.is_finished]
        if not active:
            self.progress.hide()
            return
        total = sum(j.total for j in active)
        done = sum(j.done for j in active)
        if total <= 0:
            self.progress.setRange(0, 0)  # busy until the PACS says how many
            self.progress.setFormat("")
        else:
            self.progress.setRange(0, total)
            self.progress.setValue(min(done, total))
            rate = sum(j.rate for j in active)
            self.progress.setFormat(f"{done}/{total} images" + (f" \u2022 {rate:.0f}/s" if rate else ""))
        self.progress.setTextVisible(True)
        self.progress.show()

    def _job_finished(self, job: Job) -> None:
        if job in self.jobs:
            self._jobs_changed()

    # ----------------------------------------------------------------- misc
    def _say(self, text: str, *, error: bool = False) -> None:
        self.message.setText(text)
        self.message.setStyleSheet("color: #b00020;" if error else "")

    def _update_buttons(self) -> None:
        studies = self.selected_studies() if self.studies.rows else []
        self.retrieve_button.setEnabled(bool(studies))
        self.retrieve_button.setText("Retrieve Studies" if len(studies) > 1 else "Retrieve Study")
        self.retrieve_series_button.setEnabled(len(studies) == 1 and bool(self.selected_series()))
        self.search_button.setEnabled(self.current_node() is not None or self._searching)

    def _autosize(self, view: QTableView) -> None:
        """Fit the columns to their contents; the description takes the room left."""
        hh = view.horizontalHeader()
        for i in range(hh.count()):
            hh.setSectionResizeMode(i, QHeaderView.ResizeMode.Interactive)
        view.resizeColumnsToContents()
        model = view.model().sourceModel()
        for i in range(hh.count()):
            hh.resizeSection(i, min(max(hh.sectionSize(i) + 12, 48), 320))
            if model.columns[i].keyword in ("StudyDescription", "SeriesDescription"):
                hh.setSectionResizeMode(i, QHeaderView.ResizeMode.Stretch)

    def _enter(self) -> None:
        fw = QApplication.focusWidget()
        if fw is self.study_view and self.selected_studies():
            self.retrieve_studies()
        elif fw is self.series_view and self.selected_series():
            self.retrieve_series()
        else:
            self.search()

    def _escape(self) -> None:
        if self._searching:
            self._cancel_search()
        else:
            self.close()

    def showEvent(self, event):  # noqa: N802 - Qt API
        super().showEvent(event)
        self.reload_locations()
        geom = self._state.value("qr/geometry")
        if geom is not None and not getattr(self, "_geometry_restored", False):
            self._geometry_restored = True
            self.restoreGeometry(geom)

    def closeEvent(self, event):  # noqa: N802
        self._cancel_search()
        self._state.setValue("qr/geometry", self.saveGeometry())
        self._state.sync()
        super().closeEvent(event)


def _study_label(s: dict) -> str:
    who = format_value(find_attribute("PatientName"), s.get("PatientName")) or s.get("PatientID") or "?"
    what = s.get("StudyDescription") or format_value(find_attribute("StudyDate"), s.get("StudyDate")) or "study"
    return f"\u201c{what}\u201d of {who}"


def _series_label(r: dict) -> str:
    num = r.get("SeriesNumber")
    desc = r.get("SeriesDescription") or r.get("Modality") or "series"
    return f"series {num} \u201c{desc}\u201d" if num is not None else f"series \u201c{desc}\u201d"


def show_query_window(ctx, parent=None, existing: QueryRetrieveWindow | None = None) -> QueryRetrieveWindow | None:
    """Open (or raise) the Query & Retrieve window; nothing in server mode."""
    if is_server_mode():
        return existing
    w = existing
    if w is None:
        w = QueryRetrieveWindow(ctx, parent)
    w.show()
    w.raise_()
    w.activateWindow()
    w.name.setFocus()
    return w
