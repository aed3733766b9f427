"""Users of the web server: Basic, Bearer tokens, the viewer's session cookie, rights, HTTPS."""

from __future__ import annotations

import base64
import io
import logging
import shutil
import ssl
import subprocess
import uuid
from dataclasses import replace

import httpx
import pytest
from nethelpers import make_settings
from pydicom.uid import generate_uid

from osirix_py.config import ConfigError, load_settings
from osirix_py.dicom import synthetic
from osirix_py.server.runtime import Runtime, RuntimeStartError
from osirix_py.web import auth as auth_mod
from osirix_py.web.users import UserStore

ADMIN = ("admin-user", "admin-password-1")
READER = ("reader", "reader-password-1")


@pytest.fixture(scope="module")
def web(tmp_path_factory, synthetic_dir):
    d = tmp_path_factory.mktemp("webauth")
    rt = Runtime(make_settings(d, http=True))
    rep = rt.archive.import_paths([synthetic_dir])
    assert rep.imported == 120, rep.summary()
    store = UserStore(rt.archive.db)
    store.add(*ADMIN, role="admin")
    store.add(*READER, role="readonly")
    rt.start()
    yield rt
    rt.stop(timeout=2.0)


@pytest.fixture(scope="module")
def base(web):
    return f"http://127.0.0.1:{web.http_port}"


@pytest.fixture
def anon(base):
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def _part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _stow_body(name: str):
    (ds,) = synthetic.make_ct_series(patient_name=name, patient_id=name, slices=1, rows=16,
                                     columns=16, study_uid=generate_uid(), seed=3)
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + _part10(ds)
            + f"\r\n--{boundary}--\r\n".encode())
    return body, {"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def test_everything_but_testdbalive_needs_a_user(anon):
    r = anon.get("/testdbalive")
    assert r.status_code == 200 and r.text.startswith("OK")
    for path in ("/api/studies", "/dicomweb/studies", "/openapi.json", "/static/viewer.js",
                 "/wado?requestType=WADO", "/api/statistics"):
        r = anon.get(path)
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"].startswith('Basic realm="osirix-py"')
    # The viewer's own fetches get a plain 401 (no browser Basic dialog) ...
    r = anon.get("/api/studies", headers={"X-Requested-With": "osirix-py"})
    assert r.status_code == 401 and "www-authenticate" not in r.headers
    # ... and a browser asking for a page goes to the login page.
    r = anon.get("/", headers={"Accept": "text/html"})
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
    r = anon.get("/login")
    assert r.status_code == 200 and "<form" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert anon.get("/static/login.js").status_code == 200


def test_basic_auth(base):
    with httpx.Client(base_url=base, auth=ADMIN) as c:
        assert c.get("/api/studies").status_code == 200
        assert c.get("/api/me").json() == {"user": ADMIN[0], "role": "admin", "auth": "basic"}
    for bad in ((ADMIN[0], "wrong-password"), ("nobody", "whatever-pw"), (ADMIN[0], "")):
        with httpx.Client(base_url=base, auth=bad) as c:
            r = c.get("/api/studies")
            assert r.status_code == 401 and r.json()["error"] == "invalid credentials", bad
    r = httpx.get(base + "/api/studies", headers={"Authorization": "Basic !!!notbase64"})
    assert r.status_code == 401
    r = httpx.get(base + "/api/studies", headers={"Authorization": "Digest x=1"})
    assert r.status_code == 401 and "scheme" in r.json()["error"]


def test_api_token(web, base):
    store = UserStore(web.archive.db)
    token = store.new_token(READER[0])
    assert token.startswith("oxp_") and token not in repr(store.get(READER[0]))
    h = {"Authorization": f"Bearer {token}"}
    r = httpx.get(base + "/api/me", headers=h)
    assert r.json() == {"user": READER[0], "role": "readonly", "auth": "token"}
    assert httpx.get(base + "/api/studies", headers=h).status_code == 200
    assert httpx.get(base + "/api/studies",
                     headers={"Authorization": "Bearer oxp_" + "A" * 43}).status_code == 401
    store.revoke_token(READER[0])
    web.http.app.state.auth.forget()
    assert httpx.get(base + "/api/studies", headers=h).status_code == 401


def test_readonly_user_cannot_delete_or_store(base):
    body, headers = _stow_body("Ro^Stow")
    with httpx.Client(base_url=base, auth=READER) as c:
        st = c.get("/api/studies", params={"limit": 1}).json()[0]["StudyInstanceUID"]
        r = c.delete(f"/api/studies/{st}")
        assert r.status_code == 403 and "read-only" in r.json()["error"]
        assert c.get(f"/api/studies/{st}").status_code == 200
        r = c.post("/dicomweb/studies", content=body, headers=headers)
        assert r.status_code == 403
    with httpx.Client(base_url=base, auth=ADMIN) as c:
        assert c.post("/dicomweb/studies", content=body, headers=headers).status_code == 200


def test_session_cookie_login_and_logout(base):
    with httpx.Client(base_url=base, follow_redirects=False) as c:
        r = c.post("/login", data={"username": ADMIN[0], "password": "wrong-password",
                                   "next": "/"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?error=1")
        assert auth_mod.COOKIE not in c.cookies
        r = c.post("/login", data={"username": ADMIN[0], "password": ADMIN[1],
                                   "next": "/#/study/1.2.3"})
        assert r.status_code == 303 and r.headers["location"] == "/#/study/1.2.3"
        cookie = r.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert ADMIN[1] not in cookie
        r = c.get("/", headers={"Accept": "text/html"})
        assert r.status_code == 200 and "/static/viewer.js" in r.text
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert c.get("/api/me").json()["auth"] == "session"
        # A cookie alone does not change data: a foreign page could send it.
        st = c.get("/api/studies", params={"limit": 1}).json()[0]["StudyInstanceUID"]
        r = c.delete(f"/api/instances/1.2.3")
        assert r.status_code == 403 and "X-Requested-With" in r.json()["error"]
        r = c.delete("/api/instances/1.2.3", headers={"X-Requested-With": "osirix-py"})
        assert r.status_code == 404  # authorised, the instance just does not exist
        assert c.get(f"/api/studies/{st}").status_code == 200
        r = c.post("/logout", headers={"Accept": "application/json"})
        assert r.status_code == 200
        c.cookies.clear()
        c.cookies.set(auth_mod.COOKIE, cookie.split(";")[0].split("=", 1)[1])
        assert c.get("/api/studies").status_code == 401  # the old session is gone


def test_login_json_and_open_redirects(base):
    r = httpx.post(base + "/login", json={"username": READER[0], "password": READER[1]})
    assert r.status_code == 200 and r.json() == {"user": READER[0], "role": "readonly",
                                                 "auth": "session"}
    r = httpx.post(base + "/login", json={"username": READER[0], "password": "nope-nope"})
    assert r.status_code == 401
    assert httpx.post(base + "/login", content=b"[1,2]",
                      headers={"Content-Type": "application/json"}).status_code == 400
    for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:x"):
        r = httpx.post(base + "/login", data={"username": READER[0], "password": READER[1],
                                              "next": evil})
        assert r.status_code == 303 and r.headers["location"] == "/", evil


def test_password_change_and_removal_take_effect(web, base, monkeypatch):
    monkeypatch.setattr(auth_mod, "USER_TTL", 0.0)
    store = UserStore(web.archive.db)
    store.add("temp-user", "temp-password-1", role="admin")
    with httpx.Client(base_url=base, auth=("temp-user", "temp-password-1")) as c:
        assert c.get("/api/me").status_code == 200
        assert c.get("/api/me").status_code == 200  # from the credential cache
        store.set_password("temp-user", "temp-password-2")
        assert c.get("/api/me").status_code == 401
    with httpx.Client(base_url=base, auth=("temp-user", "temp-password-2")) as c:
        assert c.get("/api/me").status_code == 200
        store.set_role("temp-user", "readonly")
        assert c.get("/api/me").json()["role"] == "readonly"
        store.remove("temp-user")
        assert c.get("/api/me").status_code == 401


def test_no_password_in_logs(base, caplog):
    secret = "Very-Secret-Passw0rd"
    with caplog.at_level(logging.DEBUG):
        httpx.get(base + "/api/studies", auth=(ADMIN[0], secret))
        httpx.post(base + "/login", data={"username": ADMIN[0], "password": secret})
        httpx.get(base + "/api/studies", auth=ADMIN)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "authentication failed" in text
    assert secret not in text and ADMIN[1] not in text
    assert base64.b64encode(f"{ADMIN[0]}:{secret}".encode()).decode() not in text


def test_failed_logins_are_throttled(web, base, monkeypatch):
    monkeypatch.setattr(auth_mod, "MAX_FAILURES", 3)
    a = web.http.app.state.auth
    a._failures.clear()
    try:
        for _ in range(3):
            assert httpx.get(base + "/api/me", auth=("x-user", "bad-password")).status_code == 401
        r = httpx.get(base + "/api/me", auth=ADMIN)
        assert r.status_code == 429 and "retry-after" in r.headers
    finally:
        a._failures.clear()
    assert httpx.get(base + "/api/me", auth=ADMIN).status_code == 200


# --------------------------------------------------------------------------- auth off
def test_auth_off_only_on_loopback(tmp_path):
    s = make_settings(tmp_path / "a", http=True)
    rt = Runtime(replace(s, http=replace(s.http, auth=False)))
    try:
        rt.start()
        r = httpx.get(f"http://127.0.0.1:{rt.http_port}/api/me")
        assert r.status_code == 200 and r.json()["auth"] == "off"
        assert httpx.get(f"http://127.0.0.1:{rt.http_port}/api/studies").status_code == 200
    finally:
        rt.stop(timeout=2.0)
    rt = Runtime(replace(s, data_dir=tmp_path / "b",
                         http=replace(s.http, auth=False, bind_address="0.0.0.0")))
    try:
        with pytest.raises(RuntimeStartError, match="only allowed on a loopback"):
            rt.start()
        assert rt.http is None
    finally:
        rt.stop(timeout=2.0)
    home = tmp_path / "c"
    home.mkdir()
    (home / "config.toml").write_text('[http]\nauth = false\nbind_address = "192.0.2.1"\n')
    with pytest.raises(ConfigError, match="loopback"):
        load_settings(data_dir=home)
    (home / "config.toml").write_text('[http]\nauth = false\nbind_address = "::1"\n')
    assert load_settings(data_dir=home).http.auth is False


# --------------------------------------------------------------------------- HTTPS
def _self_signed(tmp_path):
    openssl = shutil.which("openssl")
    assert openssl, "the openssl command is needed to make the test certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=120)
    return cert, key


def test_https_with_a_configured_certificate(tmp_path):
    cert, key = _self_signed(tmp_path)
    s = make_settings(tmp_path / "tls", http=True)
    rt = Runtime(replace(s, http=replace(s.http, ssl_certfile=str(cert), ssl_keyfile=str(key))))
    UserStore(rt.archive.db).add(*ADMIN, role="admin")
    try:
        rt.start()
        base = f"https://127.0.0.1:{rt.http_port}"
        ctx = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=base, verify=ctx) as c:
            assert c.get("/testdbalive").status_code == 200
            assert c.get("/api/studies").status_code == 401
            r = c.post("/login", json={"username": ADMIN[0], "password": ADMIN[1]})
            assert r.status_code == 200
            assert "secure" in r.headers["set-cookie"].lower()
            assert c.get("/api/me").json()["auth"] == "session"
        # Plain HTTP on the HTTPS port gets nothing useful.
        try:
            r = httpx.get(f"http://127.0.0.1:{rt.http_port}/testdbalive", timeout=5)
            assert r.status_code != 200
        except httpx.HTTPError:
            pass
    finally:
        rt.stop(timeout=2.0)
    bad = Runtime(replace(s, data_dir=tmp_path / "tls2",
                          http=replace(s.http, ssl_certfile=str(tmp_path / "missing.pem"),
                                       ssl_keyfile=str(key))))
    try:
        with pytest.raises(RuntimeStartError, match="certificate"):
            bad.start()
    finally:
        bad.stop(timeout=2.0)


def test_first_start_creates_an_admin_with_a_private_password_once(tmp_path, caplog):
    d = tmp_path / "first"
    rt = Runtime(make_settings(d, http=True))
    with caplog.at_level("WARNING"):
        rt.start()
    try:
        pw_file = d / "initial-admin-password.txt"
        password = pw_file.read_text().strip()
        assert len(password) >= 16
        assert oct(pw_file.stat().st_mode & 0o777) == "0o600"
        assert password not in caplog.text and str(pw_file) in caplog.text
        base = f"http://127.0.0.1:{rt.http_port}"
        assert httpx.get(base + "/api/me", auth=("admin", password)).json()["role"] == "admin"
        assert httpx.get(base + "/api/me", auth=("admin", "wrong-password")).status_code == 401
        UserStore(rt.archive.db).remove("admin")
    finally:
        rt.stop(timeout=2.0)
    # The admin removed every user on purpose: a restart does not bring one back.
    rt = Runtime(make_settings(d, http=True))
    rt.start()
    try:
        assert UserStore(rt.archive.db).count() == 0
        assert pw_file.read_text().strip() == password
    finally:
        rt.stop(timeout=2.0)
