"""The HTML5 viewer in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright).

Logs in through the login page, loads the study list, opens a series, drags
W/L (the canvas pixels change), scrolls, zooms, and checks that a patient
name holding ``<script>`` is shown as text and never runs.  Saves
docs/screenshots/web-studies.png and web-viewer.png.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import pytest
from nethelpers import make_settings
from playwright import sync_api  # the test extra; never skipped

from osirix_py.dicom import synthetic
from osirix_py.server.runtime import Runtime
from osirix_py.web.users import UserStore

CHROMIUM = os.environ.get("OSIRIX_PY_CHROMIUM", "/usr/bin/chromium")
#: Screenshots go to OSIRIX_PY_SCREENSHOTS (docs/screenshots to refresh the docs), else a temp dir.
SHOTS = Path(os.environ.get("OSIRIX_PY_SCREENSHOTS") or tempfile.mkdtemp(prefix="osirix-web-shots-"))
USER = ("viewer-admin", "viewer-password-1")
#: Markup in a person name (no "=": that separates the PN component groups) and in a
#: description; an alert() that ran would be caught by the page's dialog handler.
EVIL = "<script>alert(1)</script><b>Evil</b>^Mallory"
EVIL_DESC = "<img src=x onerror=alert(2)>"
#: Flags for Chromium as root on a machine without network (see the env notes).
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]



def _part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    d = tmp_path_factory.mktemp("webviewer")
    rt = Runtime(make_settings(d, http=True))
    # A 512x512 CT series worth looking at, a second series in the same study,
    # and a patient whose name is markup.
    for ds in synthetic.make_ct_series(patient_name="Doe^Jane", patient_id="PID-0042", slices=24,
                                       rows=512, columns=512, seed=1, accession="ACC-7781",
                                       study_description="CT Chest Abdomen",
                                       series_description="Axial 2.5 mm", patient_sex="F",
                                       patient_birth_date="19620314", institution="osirix-py Hospital"):
        rt.archive.store_bytes(_part10(ds), origin="test")
    study = rt.archive.find("STUDY", {"PatientID": "PID-0042"})[0]["StudyInstanceUID"]
    for ds in synthetic.make_ct_series(patient_name="Doe^Jane", patient_id="PID-0042", slices=8,
                                       rows=256, columns=256, seed=2, study_uid=study,
                                       series_number=2, series_description="Scout low dose",
                                       slice_spacing=10.0, accession="ACC-7781",
                                       study_description="CT Chest Abdomen"):
        rt.archive.store_bytes(_part10(ds), origin="test")
    for ds in synthetic.make_ct_series(patient_name=EVIL, patient_id="EVIL-1", slices=3, rows=64,
                                       columns=64, seed=3, accession="EVIL",
                                       study_description=EVIL_DESC, character_set="ISO_IR 192"):
        rt.archive.store_bytes(_part10(ds), origin="test")
    UserStore(rt.archive.db).add(*USER, role="admin")
    rt.start()
    yield rt
    rt.stop(timeout=2.0)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh installs Debian's chromium")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, web):
    ctx = browser.new_context(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
    p = ctx.new_page()
    p.set_default_timeout(30_000)
    errors: list[str] = []
    p.on("pageerror", lambda exc: errors.append(str(exc)))
    p.on("dialog", lambda d: (errors.append("dialog: " + d.message), d.dismiss()))
    p.errors = errors
    yield p
    ctx.close()


def _login(page, base):
    page.goto(base + "/")
    page.wait_for_url("**/login?next=*")
    page.fill("input[name=username]", USER[0])
    page.fill("input[name=password]", "wrong-password")
    page.click("button[type=submit]")
    page.wait_for_selector("#login-error:not([hidden])")
    page.fill("input[name=username]", USER[0])
    page.fill("input[name=password]", USER[1])
    page.click("button[type=submit]")
    page.wait_for_selector("#study-rows tr")


def _canvas_stats(page) -> dict:
    return page.evaluate("""() => {
        const c = document.getElementById('canvas');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let sum = 0, nonzero = 0, h = 0;
        for (let i = 0; i < d.length; i += 4) { sum += d[i]; if (d[i]) nonzero++; h = (h * 31 + d[i]) >>> 0; }
        return {sum, nonzero, hash: h, w: c.width, h: c.height};
    }""")


def _wait(page, js: str, arg=None, timeout: float = 30.0):
    """Poll *js* (a function) with page.evaluate until it is truthy.

    Not page.wait_for_function: that evals its predicate inside the page, which
    the viewer's Content-Security-Policy (script-src 'self') rightly refuses.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js} (arg {arg!r})")
        time.sleep(0.05)


def _wait_rendered(page, previous: str | None = None) -> str:
    return _wait(page, "(prev) => { const r = document.getElementById('canvas').dataset.rendered;"
                       " return r && r !== prev ? r : null; }", previous)


def _wait_js(page, expr: str, arg=None):
    return _wait(page, "(arg) => " + expr, arg)


def test_study_list_series_viewer_and_wl_drag(page, web):
    base = f"http://127.0.0.1:{web.http_port}"
    _login(page, base)
    rows = page.locator("#study-rows tr")
    assert rows.count() == 2
    assert "2 studies" in page.text_content("#status")
    # Search narrows the list (the name gets a trailing * unless it has one).
    page.fill("#search input[name=PatientName]", "doe")
    page.press("#search input[name=PatientName]", "Enter")
    _wait_js(page, "document.querySelectorAll('#study-rows tr').length === 1")
    assert page.text_content("#study-rows tr td") == "Doe Jane"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.fill("#search input[name=PatientName]", "")
    page.press("#search input[name=PatientName]", "Enter")
    _wait_js(page, "document.querySelectorAll('#study-rows tr').length === 2")
    page.click("#study-rows tr:has-text('Doe Jane')")
    page.screenshot(path=str(SHOTS / "web-studies.png"))

    # Open the study: the first series shows, with its thumbnails and the overlay.
    page.dblclick("#study-rows tr:has-text('Doe Jane')")
    first = _wait_rendered(page)
    assert page.locator("#thumbs .thumb").count() == 2
    assert page.text_content("#slice-label") == "13 / 24"
    assert "Doe Jane" in page.text_content("#ov-tl")
    assert "PID-0042" in page.text_content("#ov-tl")
    assert "WL: 40  WW: 400" in page.text_content("#ov-br")
    before = _canvas_stats(page)
    assert before["nonzero"] > 1000, before

    # W/L by drag changes the pixels (and the overlay's numbers).
    box = page.locator("#stage").bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 120, cy - 80, steps=8)
    page.mouse.up()
    after_wl = _wait_rendered(page, first)
    after = _canvas_stats(page)
    assert after["hash"] != before["hash"] and after["sum"] != before["sum"]
    assert "WL: 40  WW: 400" not in page.text_content("#ov-br")

    # A preset from the keyboard, then scrolling with the wheel and the keys.
    page.keyboard.press("4")  # CT Lung
    lung = _wait_rendered(page, after_wl)
    assert lung.endswith("|-600|1500|0")
    page.mouse.move(cx, cy)
    page.mouse.wheel(0, 120)
    scrolled = _wait_rendered(page, lung)
    assert page.text_content("#slice-label") == "14 / 24" and scrolled != lung
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")
    _wait_rendered(page, scrolled)
    _wait_js(page, "document.getElementById('slice-label').textContent === '12 / 24'")
    page.keyboard.press("1")  # back to the file's window for the screenshot
    _wait_js(page, "document.getElementById('canvas').dataset.rendered.endsWith('|40|400|0')")

    # Zoom (ctrl + wheel) changes the drawing but not the window.
    z0 = _canvas_stats(page)
    ov = page.text_content("#ov-br")
    page.keyboard.down("Control")
    page.mouse.wheel(0, -300)
    page.keyboard.up("Control")
    _wait(page, "(t) => document.getElementById('ov-br').textContent !== t", ov)
    assert _canvas_stats(page)["hash"] != z0["hash"]
    page.keyboard.press("f")

    # The slider scrolls too; the Pan tool moves the image without touching the window.
    page.locator("#slice").fill("3")
    _wait_js(page, "document.getElementById('slice-label').textContent === '4 / 24'")
    page.click("[data-tool=pan]")
    p0 = _canvas_stats(page)
    rendered = page.get_attribute("#canvas", "data-rendered")
    page.mouse.move(cx, cy)
    page.mouse.down()
    page.mouse.move(cx + 150, cy + 60, steps=5)
    page.mouse.up()
    _wait(page, "(h) => { const c = document.getElementById('canvas');"
                " const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
                " let x = 0; for (let i = 0; i < d.length; i += 4) x = (x * 31 + d[i]) >>> 0;"
                " return x !== h; }", p0["hash"])
    assert page.get_attribute("#canvas", "data-rendered") == rendered  # same slice and W/L
    page.keyboard.press("f")
    page.click("[data-tool=wl]")
    page.locator("#slice").fill("12")

    # The second series opens from its thumbnail.
    page.click("#thumbs .thumb >> nth=1")
    _wait_js(page, "document.getElementById('slice-label').textContent.endsWith('/ 8')")
    page.click("#thumbs .thumb >> nth=0")
    _wait_js(page, "document.getElementById('slice-label').textContent.endsWith('/ 24')")
    _wait_js(page, "document.getElementById('canvas').dataset.rendered.endsWith('|40|400|0')")
    page.wait_for_timeout(300)  # let the thumbnails finish loading
    page.screenshot(path=str(SHOTS / "web-viewer.png"))
    assert page.errors == []


def test_markup_in_a_patient_name_is_shown_as_text(page, web):
    base = f"http://127.0.0.1:{web.http_port}"
    _login(page, base)
    evil_row = page.locator("#study-rows tr", has_text="Evil")
    assert evil_row.count() == 1
    shown = evil_row.locator("td").first.text_content()
    assert shown == EVIL.replace("^", " ").strip()
    assert evil_row.locator("td.desc").text_content() == EVIL_DESC
    assert page.locator("#study-rows script, #study-rows img, #study-rows b").count() == 0
    evil_row.dblclick()
    _wait_rendered(page)
    assert EVIL.split("^")[0] in page.text_content("#ov-tl")
    assert page.locator("#ov-tl script, #ov-tl img, #viewer-title img").count() == 0
    assert "<script>" in page.text_content("#viewer-title")
    page.wait_for_timeout(300)
    assert page.errors == []


def test_logout_ends_the_session(page, web):
    base = f"http://127.0.0.1:{web.http_port}"
    _login(page, base)
    page.click("#logout")
    page.wait_for_url("**/login")
    page.wait_for_selector("form#login")
    page.screenshot(path=str(SHOTS / "web-login.png"))
    r = page.request.get(base + "/api/studies")
    assert r.status == 401
