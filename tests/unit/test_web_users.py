"""Users of the web server: password hashing, the users table (+ its upgrade), the CLI, config."""

from __future__ import annotations

import io
import json
import sqlite3

import pytest
from sqlalchemy import inspect

from osirix_py import cli
from osirix_py.config import ConfigError, HttpConfig, is_loopback, validate_http
from osirix_py.db.engine import open_database, sqlite_url
from osirix_py.db.schema import SCHEMA_VERSION
from osirix_py.web import users as users_mod
from osirix_py.web.auth import parse_basic, safe_next
from osirix_py.web.users import UserError, UserStore, hash_password, needs_rehash, verify_password


def test_password_hash_is_salted_scrypt_and_never_plaintext():
    a, b = hash_password("correct horse"), hash_password("correct horse")
    assert a != b and a.startswith("scrypt$32768$8$1$") and "correct horse" not in a
    assert verify_password("correct horse", a)
    assert not verify_password("correct horsE", a)
    assert not verify_password("correct horse", "plaintext")  # malformed: still False
    assert not verify_password("x", "scrypt$1$1$1$AAAA$AAAA")
    assert not needs_rehash(a)
    assert needs_rehash(hash_password("pw", n=1 << 10))


@pytest.fixture
def store(tmp_path):
    db = open_database(sqlite_url(tmp_path / "u.sqlite"))
    yield UserStore(db)
    db.dispose()


def test_user_store(store):
    u = store.add("alice", "alice-password", "admin")
    assert u.is_admin and u.name == "alice" and "alice-password" not in repr(u)
    store.add("bob", "bob-password-1")
    assert [(x.name, x.role) for x in store.list()] == [("alice", "admin"), ("bob", "readonly")]
    assert store.authenticate("alice", "alice-password").name == "alice"
    assert store.authenticate("alice", "wrong") is None
    assert store.authenticate("nobody", "alice-password") is None
    assert store.authenticate("../etc", "x") is None
    store.set_password("bob", "new-password-2")
    assert store.authenticate("bob", "bob-password-1") is None
    assert store.authenticate("bob", "new-password-2").role == "readonly"
    store.set_role("bob", "admin")
    assert store.get("bob").is_admin
    token = store.new_token("bob")
    assert store.by_token(token).name == "bob"
    assert token not in store.get("bob").token_hash and len(store.get("bob").token_hash) == 64
    assert store.by_token(token + "x") is None and store.by_token("nope") is None
    token2 = store.new_token("bob")
    assert store.by_token(token) is None and store.by_token(token2).name == "bob"
    store.revoke_token("bob")
    assert store.by_token(token2) is None
    store.remove("bob")
    assert store.get("bob") is None
    for bad in (lambda: store.add("alice", "another-pass"), lambda: store.add("x y", "long-enough"),
                lambda: store.add("carol", "short"), lambda: store.add("carol", "long-enough", "root"),
                lambda: store.remove("nobody"), lambda: store.set_password("nobody", "long-enough")):
        with pytest.raises(UserError):
            bad()


def test_old_cost_is_rehashed_at_login(store, monkeypatch):
    monkeypatch.setattr(users_mod, "SCRYPT_N", 1 << 12)
    store.add("dave", "dave-password")
    assert store.get("dave").password_hash.startswith("scrypt$4096$")
    monkeypatch.setattr(users_mod, "SCRYPT_N", 1 << 13)
    assert store.authenticate("dave", "dave-password") is not None
    assert store.get("dave").password_hash.startswith("scrypt$8192$")


def test_schema_1_database_is_upgraded_with_a_users_table(tmp_path):
    path = tmp_path / "old.sqlite"
    db = open_database(sqlite_url(path))
    db.dispose()
    con = sqlite3.connect(path)
    con.execute("DROP TABLE users")
    con.execute("UPDATE schema_info SET version = 1")
    con.commit()
    con.close()
    db = open_database(sqlite_url(path))
    try:
        assert db.schema_version() == SCHEMA_VERSION == 2
        assert "users" in inspect(db.engine).get_table_names()
        UserStore(db).add("erin", "erin-password")
    finally:
        db.dispose()


def _cli(monkeypatch, capsys, data_dir, *args, stdin: str = ""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = cli.main(["--data-dir", str(data_dir), "users", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_users(tmp_path, monkeypatch, capsys):
    d = tmp_path / "home"
    code, out, _ = _cli(monkeypatch, capsys, d, "add", "frank", "--role", "admin",
                        "--password-stdin", stdin="frank-password\n")
    assert code == 0 and "frank added (admin)" in out
    code, _, err = _cli(monkeypatch, capsys, d, "add", "gina", "--password-stdin", stdin="short\n")
    assert code == 2 and "at least 8" in err
    code, _, err = _cli(monkeypatch, capsys, d, "add", "gina")  # no terminal, no --password-stdin
    assert code == 2 and "--password-stdin" in err
    code, out, _ = _cli(monkeypatch, capsys, d, "token", "frank")
    token = out.strip()
    assert code == 0 and token.startswith("oxp_")
    code, out, _ = _cli(monkeypatch, capsys, d, "list", "--json")
    assert json.loads(out) == [{"name": "frank", "role": "admin", "api_token": True}]
    code, out, _ = _cli(monkeypatch, capsys, d, "passwd", "frank", "--role", "readonly",
                        "--password-stdin", stdin="frank-password-2\n")
    assert code == 0
    db = open_database(sqlite_url(d / "osirix-py.sqlite"))
    try:
        s = UserStore(db)
        assert s.authenticate("frank", "frank-password-2").role == "readonly"
        assert s.by_token(token).name == "frank"
        raw = "".join(str(v) for u in s.list() for v in (u.password_hash, u.token_hash))
        assert "frank-password" not in raw and token not in raw
    finally:
        db.dispose()
    assert _cli(monkeypatch, capsys, d, "token", "frank", "--revoke")[0] == 0
    assert _cli(monkeypatch, capsys, d, "remove", "frank")[0] == 0
    code, _, err = _cli(monkeypatch, capsys, d, "remove", "frank")
    assert code == 2 and "no user" in err
    code, out, _ = _cli(monkeypatch, capsys, d, "list")
    assert "no users" in out


def test_auth_off_needs_a_loopback_bind():
    for a in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"):
        assert is_loopback(a), a
    for a in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(a), a
    validate_http(HttpConfig(auth=False, bind_address="127.0.0.1"))
    validate_http(HttpConfig(auth=True, bind_address="0.0.0.0"))
    validate_http(HttpConfig(auth=False, bind_address="0.0.0.0", enabled=False))
    with pytest.raises(ConfigError, match="loopback"):
        validate_http(HttpConfig(auth=False, bind_address="0.0.0.0"))
    with pytest.raises(ConfigError, match="both"):
        validate_http(HttpConfig(ssl_certfile="/x.pem"))


def test_login_redirect_targets_and_basic_parsing():
    assert safe_next("/#/study/1.2") == "/#/study/1.2"
    assert safe_next("/api/studies?x=1") == "/api/studies?x=1"
    for bad in ("//evil.example", "/\\evil", "https://evil.example", "", None, "/login?next=/",
                "/ x", "evil"):
        assert safe_next(bad) == "/", bad
    assert parse_basic("YTpiOmM=") == ("a", "b:c")
    assert parse_basic("!!") is None and parse_basic("bm9jb2xvbg==") is None
