"""The Activity panel: jobs with progress bars, rates, errors and Cancel."""

from __future__ import annotations

from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QHBoxLayout,
    QHeaderView,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from .jobs import Job, JobModel


class ProgressDelegate(QStyledItemDelegate):
    """Draws the Progress column as a progress bar (busy indicator while the total is unknown)."""

    def paint(self, painter, option, index):
        job: Job = index.data(Qt.ItemDataRole.UserRole)
        if job is None:
            return super().paint(painter, option, index)
        opt = QStyleOptionProgressBar()
        opt.rect = option.rect.adjusted(2, 3, -2, -3)
        opt.minimum, opt.maximum = 0, 1000
        frac = job.fraction
        opt.progress = int((frac if frac is not None else 0) * 1000)
        opt.text = index.data(Qt.ItemDataRole.DisplayRole) or ""
        opt.textVisible = True
        opt.state = option.state | QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal
        style = option.widget.style() if option.widget is not None else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, opt, painter, option.widget)


class ActivityPanel(QWidget):
    def __init__(self, jobs: JobModel, parent: QWidget | None = None):
        super().__init__(parent)
        self.jobs = jobs
        self.table = QTableView()
        self.table.setObjectName("activityTable")
        self.table.setModel(jobs)
        self.table.setItemDelegateForColumn(JobModel.PROGRESS_COLUMN, ProgressDelegate(self.table))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        hh = self.table.horizontalHeader()
        hh.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        hh.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        hh.setSectionResizeMode(JobModel.PROGRESS_COLUMN, QHeaderView.ResizeMode.Fixed)
        hh.resizeSection(JobModel.PROGRESS_COLUMN, 200)
        self.errors = QPlainTextEdit(readOnly=True)
        self.errors.setPlaceholderText("The summary and the problems of the selected job appear here.")
        self.errors.setMaximumBlockCount(5000)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the selected job (files already stored stay)")
        self.clear_button = QPushButton("Clear Finished")
        buttons = QHBoxLayout()
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.clear_button)
        buttons.addStretch(1)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.table)
        split.addWidget(self.errors)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(2, 2, 2, 2)
        lay.addWidget(split)
        lay.addLayout(buttons)
        self.cancel_button.clicked.connect(self.cancel_selected)
        self.clear_button.clicked.connect(jobs.clear_finished)
        self.table.selectionModel().currentRowChanged.connect(self._show_errors)
        jobs.dataChanged.connect(self._update)
        jobs.rowsInserted.connect(self._inserted)
        jobs.modelReset.connect(self._update)
        self._update()

    def selected_job(self) -> Job | None:
        idx = self.table.currentIndex()
        return self.jobs.job(idx.row()) if idx.isValid() else None

    def cancel_selected(self) -> None:
        job = self.selected_job()
        if job is not None and not job.is_finished:
            job.cancel()

    def _inserted(self, parent: QModelIndex, first: int, last: int) -> None:
        self.table.selectRow(0)
        self._update()

    def _show_errors(self, *_):
        self._shown = None
        self._update()

    def _update(self, *_):
        job = self.selected_job()
        self.cancel_button.setEnabled(job is not None and not job.is_finished and not job.cancelled)
        shown = (job.id, job.state, job.status, len(job.errors)) if job is not None else None
        if shown != getattr(self, "_shown", None):
            self._shown = shown
            self.errors.setPlainText(self.describe(job) if job is not None else "")

    @staticmethod
    def describe(job: Job) -> str:
        with job.lock:
            lines = [f"{job.title}: {job.state}"]
            if job.status:
                lines.append(job.status)
            if job.errors:
                lines += ["", f"{len(job.errors)} problem(s):"] + job.errors
        return "\n".join(lines)
