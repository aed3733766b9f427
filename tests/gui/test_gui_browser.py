"""The database browser: tree from archive.find, search, live updates, import, delete, thumbnails."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QMimeData, QPoint, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QApplication

from osirix_py.dicom import synthetic
from osirix_py.dicom.tags import ATTRIBUTES, Level
from osirix_py.gui.browser import BrowserWindow
from osirix_py.gui.browser_model import TREE_LEVELS, LevelRole, browser_columns
from osirix_py.gui.jobs import CANCELLED, DONE
from osirix_py.gui.search import date_range


@pytest.fixture
def browser(qtbot, ctx):
    w = BrowserWindow(ctx)
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model.generation > 0, timeout=10000)
    return w


def _labels(model, level):
    return sorted(model.data(model.createIndex(n.pos, 0, n)) for n in model.iter_nodes() if n.level is level)


def test_browser_shows_the_demo_patient_study_and_series(browser):
    m = browser.model
    assert m.counts() == {Level.PATIENT: 1, Level.STUDY: 1, Level.SERIES: 2}
    assert _labels(m, Level.PATIENT) == ["Demo, Patient"]
    assert _labels(m, Level.STUDY) == ["Demo phantom study"]
    assert _labels(m, Level.SERIES) == ["CT phantom 1.5 mm", "MR phantom T1 SE"]
    titles = [m.headerData(i, Qt.Orientation.Horizontal) for i in range(m.columnCount())]
    # Columns come from the attribute table: every browser attribute of the tree levels is shown.
    shown = {a.keyword for c in browser_columns() for a in c.by_level.values()}
    assert shown == {a.keyword for a in ATTRIBUTES if a.browser and a.level in TREE_LEVELS}
    assert titles[0] == "Name" and "Patient ID" in titles and "Modality" in titles
    pid_col = titles.index("Patient ID")
    patient = m.index(0, pid_col)
    assert m.data(patient) == "DEMO-001"
    assert m.data(patient, LevelRole) is Level.PATIENT
    study = m.index(0, titles.index("Date"), m.index(0, 0))
    assert m.data(study) == "2024-03-01"
    # Instances of a study and of a series share one merged column.
    inst = titles.index("Instances")
    assert m.data(m.index(0, inst, m.index(0, 0))) == "84"


def test_sorting_by_a_column_keeps_missing_values_last(browser):
    m = browser.model
    titles = [m.headerData(i, Qt.Orientation.Horizontal) for i in range(m.columnCount())]
    study = m.index(0, 0, m.index(0, 0))
    browser.tree.sortByColumn(titles.index("Series Number"), Qt.SortOrder.DescendingOrder)
    assert [m.data(m.index(r, 0, study)) for r in range(2)] == ["MR phantom T1 SE", "CT phantom 1.5 mm"]
    browser.tree.sortByColumn(titles.index("Series Number"), Qt.SortOrder.AscendingOrder)
    assert [m.data(m.index(r, 0, study)) for r in range(2)] == ["CT phantom 1.5 mm", "MR phantom T1 SE"]


def test_search_runs_dicom_matching(qtbot, browser):
    bar, m = browser.search, browser.model

    def search(**fields):
        bar.clear()
        qtbot.waitUntil(lambda: not m._busy, timeout=5000)
        for k, v in fields.items():
            w = getattr(bar, k)
            if k in ("date", "modality"):
                w.setCurrentText(v)
            else:
                w.setText(v)
        gen = m.generation
        bar._emit()
        qtbot.waitUntil(lambda: m.generation > gen and not m._busy, timeout=5000)
        return m.counts()[Level.STUDY]

    assert search(name="demo") == 1
    assert m.query == {"PatientName": "*demo*"}
    assert search(name="nobody") == 0
    assert search(patient_id="DEMO-0*") == 1
    assert search(accession="DEMO0001") == 1
    assert search(modality="MR") == 1
    assert search(modality="PT") == 0
    assert search(date="Today") == 0
    assert search(date="All dates") == 1
    bar.date.setCurrentText("Range...")
    bar.date_from.setDate(bar.date_from.date().fromString("2024-02-01", "yyyy-MM-dd"))
    bar.date_to.setDate(bar.date_to.date().fromString("2024-03-31", "yyyy-MM-dd"))
    assert bar.query()["StudyDate"] == "20240201-20240331"


def test_date_shortcuts():
    import datetime as dt

    t = dt.date(2024, 3, 10)
    assert date_range("Today", t) == (t, t)
    assert date_range("Yesterday", t) == (dt.date(2024, 3, 9),) * 2
    assert date_range("Last week", t) == (dt.date(2024, 3, 3), t)
    assert date_range("All dates", t) is None


def test_live_update_through_the_feed_is_coalesced(qtbot, empty_ctx):
    w = BrowserWindow(empty_ctx)
    qtbot.addWidget(w)
    qtbot.waitUntil(lambda: w.model.generation > 0, timeout=5000)
    start_gen = w.model.generation
    datasets = synthetic.make_ct_series(slices=12, rows=32, columns=32, patient_name="Live^Arrival",
                                        patient_id="LIVE-1")
    import io

    def arrive():  # like C-STORE handlers on association threads
        for ds in datasets:
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            empty_ctx.archive.store_bytes(buf.getvalue(), origin="test")
            time.sleep(0.01)

    t = threading.Thread(target=arrive)
    t.start()
    qtbot.waitUntil(lambda: w.model.counts()[Level.SERIES] == 1
                    and w.model.root.children
                    and w.model.root.children[0].children[0].children[0].row.get(
                        "NumberOfSeriesRelatedInstances") == 12, timeout=10000)
    t.join()
    # 12 instances (+ patient/study/series events) -> a few coalesced refreshes, not one per event.
    assert w.model.generation - start_gen <= 5
    assert _labels(w.model, Level.PATIENT) == ["Live, Arrival"]


def _drop(widget, paths):
    from PySide6.QtGui import QDragEnterEvent

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(p)) for p in paths])
    center = widget.rect().center()
    # QDragEnterEvent takes a QPoint (QDragMoveEvent's signature); QDropEvent a QPointF.
    enter = QDragEnterEvent(center, Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                            Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    ev = QDropEvent(center.toPointF(), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                    Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, ev)


def test_drop_imports_in_the_background_with_progress(qtbot, empty_ctx, tmp_path, dialogs):
    files = synthetic.write_series(synthetic.make_ct_series(slices=6, rows=32, columns=32), tmp_path / "in")
    w = BrowserWindow(empty_ctx)
    qtbot.addWidget(w)
    w.show()
    _drop(w, [tmp_path / "in"])
    jobs = empty_ctx.jobs.jobs()
    assert len(jobs) == 1 and jobs[0].kind == "import"
    assert w.activity_dock.isVisible()
    qtbot.waitUntil(lambda: jobs[0].is_finished, timeout=10000)
    assert jobs[0].state == DONE and jobs[0].done == jobs[0].total == len(files)
    qtbot.waitUntil(lambda: w.model.counts()[Level.SERIES] == 1, timeout=5000)
    assert dialogs.boxes == []  # nothing went wrong: no message
    # The activity table shows the finished job with its progress text.
    model = empty_ctx.jobs
    assert model.data(model.index(0, 2)) == f"{len(files)}/{len(files)}"


def test_import_can_be_cancelled(qtbot, empty_ctx, demo_files):
    from osirix_py.gui.importing import start_import

    gate = threading.Event()
    real = empty_ctx.archive.submit_bytes

    def slow(*a, **kw):  # hold the import until the cancel has been requested
        gate.wait(5)
        return real(*a, **kw)

    empty_ctx.archive.submit_bytes = slow
    job = start_import(empty_ctx, [demo_files])
    job.cancel()
    gate.set()
    qtbot.waitUntil(lambda: job.is_finished, timeout=20000)
    assert job.state == CANCELLED
    assert job.result.cancelled and job.result.done < 84


def test_import_with_bad_files_shows_one_clear_message(qtbot, empty_ctx, tmp_path, dialogs):
    from osirix_py.gui.importing import start_import

    folder = tmp_path / "mixed"
    files = synthetic.write_series(synthetic.make_ct_series(slices=2, rows=16, columns=16), folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.dcm").write_bytes(files[0].read_bytes()[:300])
    job = start_import(empty_ctx, [folder])
    qtbot.waitUntil(lambda: job.is_finished and bool(dialogs.boxes), timeout=10000)
    qtbot.wait(50)
    assert len(dialogs.boxes) == 1
    icon, title, text = dialogs.boxes[0]
    assert title == "Some files could not be imported"
    assert "2 of 4 file(s) were not imported" in text and "2 file(s) were imported" in text
    assert "notes.txt: not a DICOM file" in text and "broken.dcm" in text
    assert len(job.errors) == 2


def test_delete_asks_and_removes(qtbot, browser, dialogs):
    m = browser.model
    mr = next(n for n in m.iter_nodes() if n.level is Level.SERIES and n.row["Modality"] == "MR")
    viewer = browser.open_series(mr.key)
    assert browser.ctx.viewers == [viewer]
    browser.tree.selectionModel().select(
        m.createIndex(mr.pos, 0, mr),
        browser.tree.selectionModel().SelectionFlag.ClearAndSelect | browser.tree.selectionModel().SelectionFlag.Rows)
    assert browser.act_delete.isEnabled()
    browser.act_delete.trigger()
    assert dialogs.boxes and dialogs.boxes[0][1] == "Delete"
    assert "24 image(s)" in dialogs.boxes[0][2]
    qtbot.waitUntil(lambda: m.counts()[Level.SERIES] == 1, timeout=10000)
    assert browser.ctx.archive.count(Level.SERIES) == 1
    qtbot.waitUntil(lambda: browser.ctx.viewers == [], timeout=5000)  # its viewer closed


def test_thumbnails_are_rendered_off_thread_and_cached(qtbot, ctx):
    uid = ctx.archive.find(Level.SERIES, {"Modality": "CT"})[0]["SeriesInstanceUID"]
    cache = ctx.thumbnails
    main = threading.current_thread()
    seen_threads = []
    import osirix_py.gui.thumbnails as th

    real = th.render_thumbnail

    def spy(*a, **kw):
        seen_threads.append(threading.current_thread())
        return real(*a, **kw)

    th.render_thumbnail = spy
    try:
        with qtbot.waitSignal(cache.ready, timeout=10000):
            assert cache.get(uid, 60) is None
    finally:
        th.render_thumbnail = real
    img = cache.get(uid, 60)
    assert img is not None and not img.isNull() and max(img.width(), img.height()) == 128
    assert seen_threads and all(t is not main for t in seen_threads)
    assert list((ctx.cache_dir / "thumbnails").glob("*-60.png"))
    # The phantom's middle slice: water in the centre is mid-grey, air in the corner black.
    c = img.pixelColor(img.width() // 2, img.height() // 2).red()
    assert 60 < c < 200 and img.pixelColor(2, 2).red() < 10


def test_double_click_on_a_series_opens_the_viewer(qtbot, browser):
    m = browser.model
    ct = next(n for n in m.iter_nodes() if n.level is Level.SERIES and n.row["Modality"] == "CT")
    browser.tree.doubleClicked.emit(m.createIndex(ct.pos, 0, ct))
    assert len(browser.ctx.viewers) == 1
    v = browser.ctx.viewers[0]
    assert v.series_uid == ct.key and v.isVisible()
    # Opening it again raises the same window.
    browser.open_series(ct.key)
    assert len(browser.ctx.viewers) == 1


def test_every_menu_action_is_connected(browser):
    for menu_action in browser.menuBar().actions():
        for a in menu_action.menu().actions():
            if a.isSeparator() or a.menu() is not None:
                continue
            assert a.receivers("2triggered(bool)") > 0 or a is browser.act_activity, a.text()


def test_drag_enter_accepts_local_files_only(browser, tmp_path):
    from PySide6.QtGui import QDragEnterEvent

    mime = QMimeData()
    mime.setText("hello")
    ev = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                         Qt.KeyboardModifier.NoModifier)
    browser.dragEnterEvent(ev)
    assert not ev.isAccepted()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path))])
    ev = QDragEnterEvent(QPoint(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                         Qt.KeyboardModifier.NoModifier)
    browser.dragEnterEvent(ev)
    assert ev.isAccepted()


def test_activity_panel_shows_problems_and_cancels(qtbot, empty_ctx, tmp_path, dialogs):
    from osirix_py.gui.activity import ActivityPanel
    from osirix_py.gui.jobs import RUNNING, Job

    panel = ActivityPanel(empty_ctx.jobs)
    qtbot.addWidget(panel)
    release = threading.Event()

    def work(job):
        job.update(total=10, done=3, status="3 of 10")
        job.add_error("file7.dcm: unreadable")
        while not job.cancelled and not release.is_set():
            time.sleep(0.01)
        return None

    job = empty_ctx.jobs.start(Job("retrieve", "Retrieve from PACS"), work)
    qtbot.waitUntil(lambda: job.state == RUNNING and bool(job.errors), timeout=5000)
    qtbot.waitUntil(lambda: "file7.dcm: unreadable" in panel.errors.toPlainText(), timeout=5000)
    assert panel.selected_job() is job and panel.cancel_button.isEnabled()
    assert empty_ctx.jobs.data(empty_ctx.jobs.index(0, 4)) == "1"
    assert job.fraction == pytest.approx(0.3)
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: job.is_finished, timeout=5000)
    assert job.state == CANCELLED and not panel.cancel_button.isEnabled()
    panel.clear_button.click()
    assert empty_ctx.jobs.rowCount() == 0


def test_return_in_the_search_bar_does_not_open_a_viewer(qtbot, browser):
    from guihelpers import key

    m = browser.model
    ct = next(n for n in m.iter_nodes() if n.level is Level.SERIES)
    browser.tree.setCurrentIndex(m.createIndex(ct.pos, 0, ct))
    browser.search.name.setFocus()
    key(qtbot, browser.search.name, Qt.Key.Key_Return)
    assert browser.ctx.viewers == []
    browser.tree.setFocus()
    key(qtbot, browser.tree, Qt.Key.Key_Return)
    assert len(browser.ctx.viewers) == 1
