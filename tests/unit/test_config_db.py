"""Settings files, the data dir switch, and the database's schema record and modes."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from osirix_py.config import ConfigError, load_settings, to_toml
from osirix_py.db.engine import DatabaseError, open_database
from osirix_py.db.schema import SCHEMA_VERSION, schema_info


def test_defaults_come_from_platform_dirs(tmp_path):
    s = load_settings(environ={})
    assert s.listener.ae_title == "OSIRIXPY"
    assert s.duplicate_policy == "keep"
    assert "osirix-py" in str(s.data_dir)


def test_osirix_py_home_points_everything_at_one_folder(tmp_path):
    s = load_settings(environ={"OSIRIX_PY_HOME": str(tmp_path)})
    assert s.data_dir == tmp_path
    assert s.effective_database_url.endswith(f"{tmp_path}/osirix-py.sqlite")
    assert s.store_dir == tmp_path / "store"


def test_data_dir_option_wins_over_environment(tmp_path):
    other = tmp_path / "other"
    s = load_settings(data_dir=other, environ={"OSIRIX_PY_HOME": str(tmp_path)})
    assert s.data_dir == other


def test_toml_file_is_read_and_round_trips(tmp_path):
    (tmp_path / "config.toml").write_text(
        'duplicate_policy = "replace"\n'
        "[listener]\nae_title = \"MYPACS\"\nport = 4000\nbind_address = \"127.0.0.1\"\n"
        "accept_only_known_nodes = true\n"
        "[http]\nport = 8100\n"
        "[[nodes]]\nname = \"pacs\"\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n"
        "retrieve_method = \"get\"\n"
    )
    s = load_settings(data_dir=tmp_path, environ={})
    assert s.config_file == tmp_path / "config.toml"
    assert (s.listener.ae_title, s.listener.port, s.listener.accept_only_known_nodes) == ("MYPACS", 4000, True)
    assert s.http.port == 8100
    assert s.nodes[0].retrieve_method == "get"
    assert s.duplicate_policy == "replace"
    # What `config show` prints is itself a valid configuration.
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.toml").write_text(to_toml(s))
    again = load_settings(data_dir=tmp_path / "b", environ={})
    assert again.listener == s.listener and again.nodes == s.nodes


@pytest.mark.parametrize("body, message", [
    ("[listener]\nae_tittle = \"X\"\n", "unknown setting"),
    ("[listener]\nport = \"many\"\n", "expected int"),
    ("[listener]\nae_title = \"WAY-TOO-LONG-AE-TITLE\"\n", "invalid AE title"),
    ("duplicate_policy = \"merge\"\n", "duplicate_policy"),
    ("[listener\n", "config.toml"),
])
def test_bad_settings_are_named(tmp_path, body, message):
    (tmp_path / "config.toml").write_text(body)
    with pytest.raises(ConfigError, match=message):
        load_settings(data_dir=tmp_path, environ={})


def test_database_records_its_schema_version_and_uses_wal(tmp_path):
    db = open_database(f"sqlite:///{tmp_path}/a.sqlite")
    assert db.schema_version() == SCHEMA_VERSION
    with db.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert c.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()


def test_a_newer_schema_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path}/a.sqlite"
    db = open_database(url)
    with db.engine.begin() as c:
        c.execute(schema_info.update().values(version=SCHEMA_VERSION + 1))
    db.dispose()
    with pytest.raises(DatabaseError, match="newer"):
        open_database(url)


def test_a_foreign_database_is_not_touched(tmp_path):
    import sqlite3

    p = Path(tmp_path) / "other.sqlite"
    con = sqlite3.connect(p)
    con.execute("create table accounts (id integer)")
    con.commit()
    con.close()
    with pytest.raises(DatabaseError, match="refusing"):
        open_database(f"sqlite:///{p}")


def test_indexed_columns_come_from_the_attribute_table(tmp_path):
    from sqlalchemy import inspect

    from osirix_py.dicom.tags import ATTRIBUTES
    from osirix_py.db.schema import LEVEL_TABLES

    db = open_database(f"sqlite:///{tmp_path}/a.sqlite")
    insp = inspect(db.engine)
    for a in ATTRIBUTES:
        table = LEVEL_TABLES[a.level].name
        cols = {c["name"] for c in insp.get_columns(table)}
        assert a.column in cols, a.keyword
        if not a.derived:
            indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes(table)}
            indexed |= {tuple(u["column_names"]) for u in insp.get_unique_constraints(table)}
            assert (a.column,) in indexed, f"{a.keyword} is not indexed"
    db.dispose()
