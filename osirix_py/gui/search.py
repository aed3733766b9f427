"""The browser's search bar: name, patient ID, accession, date range, modality.

It produces DICOM matching keys (PS3.4 C.2.2.2: wildcards, date ranges) that
the archive's ``find`` evaluates, exactly as a C-FIND would.
"""

from __future__ import annotations

import datetime as _dt

from PySide6.QtCore import QDate, QTimer, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QDateEdit,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QWidget,
)

DATE_SHORTCUTS = ("All dates", "Today", "Yesterday", "Last week", "Last month", "Last year", "Range...")
MODALITIES = ("", "CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT", "SR", "SEG", "RTSTRUCT")


def selected_dates(shortcut_box, date_from, date_to):
    """The (first, last) day a date shortcut box and its "Range..." editors
    select, or None for any date."""
    shortcut = shortcut_box.currentText()
    if shortcut == "Range...":
        a, b = date_from.date().toPython(), date_to.date().toPython()
        return (min(a, b), max(a, b))
    return date_range(shortcut)


def date_range(shortcut: str, today: _dt.date | None = None) -> tuple[_dt.date, _dt.date] | None:
    """The (first, last) dates of a shortcut; ``None`` for all dates or a custom range."""
    t = today or _dt.date.today()
    if shortcut == "Today":
        return t, t
    if shortcut == "Yesterday":
        y = t - _dt.timedelta(days=1)
        return y, y
    if shortcut == "Last week":
        return t - _dt.timedelta(days=7), t
    if shortcut == "Last month":
        return t - _dt.timedelta(days=31), t
    if shortcut == "Last year":
        return t - _dt.timedelta(days=365), t
    return None


def _contains(text: str) -> str:
    """What the user typed as a matching value: as is with wildcards, else "contains"."""
    t = text.strip()
    if not t:
        return ""
    if "*" in t or "?" in t:
        return t
    return f"*{t}*"


class SearchBar(QWidget):
    """Emits ``queryChanged(dict)`` (debounced) whenever a field changes."""

    queryChanged = Signal(dict)

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(4, 2, 4, 2)
        self.name = QLineEdit(placeholderText="Patient name")
        self.patient_id = QLineEdit(placeholderText="Patient ID")
        self.accession = QLineEdit(placeholderText="Accession")
        for w in (self.name, self.patient_id, self.accession):
            w.setClearButtonEnabled(True)
        self.name.setObjectName("searchName")
        self.date = QComboBox()
        self.date.addItems(DATE_SHORTCUTS)
        self.date.setToolTip("Study date")
        self.date_from = QDateEdit(calendarPopup=True, displayFormat="yyyy-MM-dd")
        self.date_to = QDateEdit(calendarPopup=True, displayFormat="yyyy-MM-dd")
        self.date_from.setDate(QDate.currentDate().addMonths(-1))
        self.date_to.setDate(QDate.currentDate())
        self.modality = QComboBox()
        self.modality.setEditable(True)
        self.modality.addItems(MODALITIES)
        self.modality.setToolTip("Modality (any series of the study)")
        self.modality.lineEdit().setPlaceholderText("Modality")
        self.clear_button = QToolButton(text="Clear")
        self.clear_button.setToolTip("Show every study")
        self.name.setMinimumWidth(160)
        self.modality.setMinimumWidth(90)
        to_label = QLabel("to")
        for w in (QLabel("Search:"), self.name, self.patient_id, self.accession, self.date,
                  self.date_from, to_label, self.date_to, self.modality, self.clear_button):
            lay.addWidget(w)
        self._range_widgets = (self.date_from, self.date_to, to_label)
        lay.addStretch(1)
        self._timer = QTimer(self, singleShot=True, interval=250)
        self._timer.timeout.connect(self._emit)
        for w in (self.name, self.patient_id, self.accession):
            w.textChanged.connect(self._changed)
            w.returnPressed.connect(self._emit)
        self.date.currentTextChanged.connect(self._date_mode)
        self.date_from.dateChanged.connect(self._changed)
        self.date_to.dateChanged.connect(self._changed)
        self.modality.currentTextChanged.connect(self._changed)
        self.clear_button.clicked.connect(self.clear)
        self._date_mode(self.date.currentText())

    def _date_mode(self, text: str) -> None:
        for w in self._range_widgets:
            w.setVisible(text == "Range...")
        self._changed()

    def _changed(self, *_):
        self._timer.start()

    def _emit(self) -> None:
        self._timer.stop()
        self.queryChanged.emit(self.query())

    def query(self) -> dict[str, str]:
        """The DICOM matching keys of the current fields (empty ones left out)."""
        q: dict[str, str] = {}
        if v := _contains(self.name.text()):
            q["PatientName"] = v
        if v := _contains(self.patient_id.text()):
            q["PatientID"] = v
        if v := _contains(self.accession.text()):
            q["AccessionNumber"] = v
        rng = selected_dates(self.date, self.date_from, self.date_to)
        if rng is not None:
            q["StudyDate"] = f"{rng[0]:%Y%m%d}-{rng[1]:%Y%m%d}"
        mod = self.modality.currentText().strip().upper()
        if mod:
            q["ModalitiesInStudy"] = mod
        return q

    def clear(self) -> None:
        for w in (self.name, self.patient_id, self.accession):
            w.blockSignals(True)
            w.clear()
            w.blockSignals(False)
        self.date.blockSignals(True)
        self.date.setCurrentIndex(0)
        self.date.blockSignals(False)
        self.modality.blockSignals(True)
        self.modality.setCurrentIndex(0)
        self.modality.blockSignals(False)
        self._date_mode(self.date.currentText())
        self._emit()
