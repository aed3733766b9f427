"""Send to: a menu of the locations that sends the browser's selected studies/series.

The menu lists the nodes of Preferences > Locations each time it opens.
Choosing one starts ONE Activity job that C-STOREs every selected study or
series (a selected patient: each of its studies) to that location, with
progress, rate, per-instance problems and cancel in Activity; a failure as a
whole gives one clear message (a log line in server mode).  The network side
is :func:`osirix_py.gui.qr.start_transfers` (the runtime's job manager).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QMenu, QWidget

from ..dicom.tags import Level
from .browser_model import Node, format_person_name
from .jobs import Job
from .qr import Transfer, start_transfers

log = logging.getLogger(__name__)


def transfers_for(nodes: Sequence[Node]) -> tuple[list[Transfer], str]:
    """The studies/series to send for the selected browser *nodes*, and a label for people.

    A node whose ancestor is selected too goes with it; a patient stands for
    its studies (those the browser lists).
    """
    chosen = {id(n) for n in nodes}
    top = []
    for n in nodes:
        p, covered = n.parent, False
        while p is not None:
            if id(p) in chosen:
                covered = True
                break
            p = p.parent
        if not covered:
            top.append(n)
    transfers: list[Transfer] = []
    seen: set[tuple] = set()
    for n in top:
        if n.level is Level.PATIENT:
            items = [(c.key, None, _study_label(c)) for c in n.children if c.level is Level.STUDY]
        elif n.level is Level.STUDY:
            items = [(n.key, None, _study_label(n))]
        elif n.level is Level.SERIES:
            study = n.parent.key if n.parent is not None and n.parent.level is Level.STUDY else None
            items = [(study, n.key, _series_label(n))]
        else:
            items = []
        for study, series, label in items:
            if (study, series) not in seen:
                seen.add((study, series))
                transfers.append(Transfer(study_uid=study, series_uid=series, label=label))
    return transfers, _what(top, transfers)


def _study_label(n: Node) -> str:
    r = n.row
    who = format_person_name(str(r.get("PatientName") or "")) if r.get("PatientName") else ""
    if not who and n.parent is not None:
        who = format_person_name(str(n.parent.row.get("PatientName") or "")) or str(
            n.parent.row.get("PatientID") or "")
    what = r.get("StudyDescription") or r.get("StudyDate") or "study"
    return f"study \u201c{what}\u201d" + (f" of {who}" if who else "")


def _series_label(n: Node) -> str:
    r = n.row
    desc = r.get("SeriesDescription") or r.get("Modality") or ""
    num = r.get("SeriesNumber")
    return f"series {num if num is not None else ''} \u201c{desc}\u201d".replace("  ", " ")


def _what(top: Sequence[Node], transfers: Sequence[Transfer]) -> str:
    if len(top) == 1:
        n = top[0]
        if n.level is Level.PATIENT:
            name = format_person_name(str(n.row.get("PatientName") or "")) or str(n.row.get("PatientID") or "")
            return f"patient {name}"
        return transfers[0].label if transfers else "selection"
    studies = sum(1 for t in transfers if not t.series_uid)
    series = len(transfers) - studies
    parts = ([f"{studies} stud{'y' if studies == 1 else 'ies'}"] if studies else []) + (
        [f"{series} series"] if series else [])
    return " and ".join(parts) or "selection"


def start_send(ctx, location, transfers: Sequence[Transfer], what: str, *,
               on_done: Callable[[Job], None] | None = None) -> Job:
    """C-STORE *transfers* to *location* as one Activity job."""
    return start_transfers(ctx, "send", location, transfers, f"Send {what} to {location.name}",
                           on_done=on_done)


class SendToMenu(QMenu):
    """"Send To" > one entry per location (rebuilt each time it opens)."""

    #: A send was started (the Activity job).
    sendStarted = Signal(object)
    #: The user chose "Locations..." (the browser opens Preferences).
    locationsRequested = Signal()

    def __init__(self, ctx, selection: Callable[[], Sequence[Node]], parent: QWidget | None = None):
        super().__init__("Sen&d To", parent)
        self.ctx = ctx
        self.selection = selection
        self.setObjectName("sendToMenu")
        self.setToolTipsVisible(True)
        self.menuAction().setStatusTip("Send the selected studies or series to a DICOM location")
        self.aboutToShow.connect(self.rebuild)
        self.rebuild()

    def rebuild(self) -> None:
        self.clear()
        try:
            nodes = self.ctx.nodes.list()
        except Exception as exc:  # noqa: BLE001 - the database went away
            log.warning("cannot list the locations: %s", exc)
            nodes = []
        has_selection = bool(self.selection())
        for node in nodes:
            a = self.addAction(f"{node.name}  \u2014  {node.ae_title}@{node.host}:{node.port}")
            a.setObjectName(f"sendTo:{node.name}")
            a.setData(node.name)
            a.setToolTip(node.description or str(node))
            a.setEnabled(has_selection)
            a.triggered.connect(lambda _=False, n=node: self.send_to(n))
        if not nodes:
            a = self.addAction("No locations yet")
            a.setEnabled(False)
        self.addSeparator()
        self.addAction("Locations\u2026").triggered.connect(self.locationsRequested.emit)

    def send_to(self, location) -> Job | None:
        """Send the current selection to *location* (None when nothing is selected)."""
        transfers, what = transfers_for(self.selection())
        if not transfers:
            return None
        job = start_send(self.ctx, location, transfers, what)
        self.sendStarted.emit(job)
        return job
