"""add_instances (the index writer's bulk path) against add_instance one record at a time."""

from __future__ import annotations

import dataclasses
import datetime as dt
import random
import re

import pytest
from sqlalchemy import event
from sqlalchemy.dialects import postgresql

from osirix_py.db import repository as repo
from osirix_py.db.engine import open_database
from osirix_py.db.repository import InstanceRecord
from osirix_py.dicom.tags import Level

NOW = dt.datetime(2024, 1, 15, 9, 30, tzinfo=dt.timezone.utc)


def rec(i: int, series: int = 0, study: int | None = None, *, pid: str = "PID1",
        modality: str = "CT", path_suffix: str = "") -> InstanceRecord:
    study = series // 2 if study is None else study
    v = {"PatientName": "Doe^John", "PatientID": pid, "IssuerOfPatientID": None,
         "PatientBirthDate": "19700101", "PatientSex": "M", "StudyInstanceUID": f"1.2.{study}",
         "StudyDate": "20240101", "StudyTime": "1200", "AccessionNumber": "A1", "StudyID": "1",
         "StudyDescription": "desc", "ReferringPhysicianName": "Ref^Doc", "InstitutionName": "H",
         "SeriesInstanceUID": f"1.2.3.{series}", "Modality": modality, "SeriesNumber": series,
         "SeriesDescription": "s", "BodyPartExamined": "HEAD", "SeriesDate": "20240101",
         "SeriesTime": "1200", "ProtocolName": "p", "SOPInstanceUID": f"1.2.3.{series}.{i}",
         "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "InstanceNumber": i, "NumberOfFrames": None,
         "Rows": 512, "Columns": 512, "TransferSyntaxUID": "1.2.840.10008.1.2.1"}
    return InstanceRecord(values=v, file_path=f"ab/{series}/{i}{path_suffix}", in_place=False,
                          file_size=1000 + i, checksum="x", origin="test",
                          character_set="ISO_IR 100", received_at=NOW)


@pytest.fixture
def conns(tmp_path):
    dbs = [open_database(f"sqlite:///{tmp_path}/{n}.sqlite") for n in ("bulk", "single")]
    cs = [db.engine.connect() for db in dbs]
    for c in cs:
        c.exec_driver_sql("PRAGMA synchronous=OFF")  # no fsync per test commit
        c.commit()
    yield cs
    for c in cs:
        c.close()
    for db in dbs:
        db.dispose()


def _state(conn) -> dict:
    out = {}
    for level in Level:
        out[level] = [{k: v for k, v in r.items() if k != "_pk"} for r in repo.find(conn, level)]
    conn.rollback()
    return out


def _result(r: repo.AddResult) -> tuple:
    return dataclasses.astuple(dataclasses.replace(r, instance_pk=0))


def test_one_instance_of_a_known_series_takes_five_statements(conns):
    conn = conns[0]
    with conn.begin():
        first = repo.add_instances(conn, [rec(0)])
    assert (first[0].new_patient, first[0].new_study, first[0].new_series) == (True, True, True)
    statements = []
    # Counted where SQLite runs them (some go past SQLAlchemy, on the driver's
    # cursor); the driver's own BEGIN / COMMIT are not statements of ours.
    conn.connection.driver_connection.set_trace_callback(
        lambda sql: None if sql.split()[0].upper() in ("BEGIN", "COMMIT") else statements.append(sql))
    with conn.begin():
        res = repo.add_instances(conn, [rec(1)])
    assert len(statements) == 5, statements
    assert _result(res[0]) == _result(repo.AddResult("stored", 0, study_uid="1.2.0",
                                                      series_uid="1.2.3.0"))
    statements.clear()
    with conn.begin():
        res = repo.add_instances(conn, [rec(2), rec(3)])
    # The two rows go through one prepared INSERT (run once per row).
    inserts = [q for q in statements if q.startswith("INSERT")]
    assert len(inserts) == 2 and len(statements) - len(inserts) == 4, statements
    # A known SOP: duplicate, nothing written.
    with conn.begin():
        assert repo.add_instances(conn, [rec(1)])[0].status == "duplicate"
    series = repo.find(conn, Level.SERIES)
    study = repo.find(conn, Level.STUDY)
    patient = repo.find(conn, Level.PATIENT)
    assert series[0]["NumberOfSeriesRelatedInstances"] == 4
    assert study[0]["NumberOfStudyRelatedInstances"] == 4
    assert study[0]["NumberOfStudyRelatedSeries"] == 1 and study[0]["ModalitiesInStudy"] == "CT"
    p = patient[0]
    assert (p["NumberOfPatientRelatedInstances"], p["NumberOfPatientRelatedSeries"],
            p["NumberOfPatientRelatedStudies"]) == (4, 1, 1)


@pytest.mark.parametrize("seed", range(2))
def test_batches_match_one_by_one(conns, seed):
    rng = random.Random(seed)
    bulk, single = conns
    for _ in range(30):
        size = rng.choice([1, 1, 1, 2, 3, 9, 33, 40])
        used: set = set()
        recs = []
        for _ in range(size):
            se, i = rng.randrange(6), rng.randrange(30)
            if (se, i) in used:
                continue  # a SOP twice in one batch is not this test's business
            used.add((se, i))
            # One patient per study (PatientID, or none: keyed by name and birth date).
            recs.append(rec(i, se, pid=f"P{se // 2}" if se // 2 else "",
                            modality=rng.choice(["CT", "MR", ""]),
                            path_suffix=rng.choice(["", "", "b"])))
        replace = rng.random() < 0.25
        with bulk.begin():
            got = [_result(r) for r in repo.add_instances(bulk, recs, replace=replace)]
        with single.begin():
            want = [_result(repo.add_instance(single, r, replace=replace)) for r in recs]
        assert got == want
        assert _state(bulk) == _state(single)
        assert _stored(bulk) == _stored(single)


def _stored(conn) -> tuple:
    """What SQLite holds, read past SQLAlchemy: the instance rows as stored
    (booleans, timestamps as the driver wrote them) and the shape of each
    study's update time (its value is the clock's)."""
    raw = conn.connection.driver_connection
    rows = raw.execute("SELECT sop_instance_uid, file_path, in_place, file_size, checksum, "
                       "received_at, origin, instance_number FROM instances "
                       "ORDER BY sop_instance_uid").fetchall()
    shapes = {re.sub(r"\d", "9", u or "") for (u,) in raw.execute("SELECT updated_at FROM studies")}
    conn.rollback()
    return rows, shapes


def test_probe_statements_compile_for_postgresql():
    for n_sops in sorted({1, 2, 3, repo._SMALL_BATCH}):
        for n_series in sorted({1, 2, n_sops}):
            sql = str(repo._probe_stmt(n_sops, n_series).compile(dialect=postgresql.dialect()))
            assert sql.count("%(so") == n_sops and sql.count("%(se") == n_series
            assert "UNION ALL" in sql


@pytest.mark.parametrize("path", ["single", "bulk-1", "bulk-mixed"])
def test_a_known_series_keeps_its_study_when_an_instance_names_another(conns, path, caplog):
    """Series 1.2.3.0 is filed under study 1.2.0; a later instance of that
    series claims study 1.2.9.  It is filed under 1.2.0 (a series belongs to one
    study), no empty study 1.2.9 appears, every count stays equal to the rows
    under it, and the log says what happened."""
    conn = conns[0]
    repo.add_instances(conn, [rec(1, series=0, study=0)])
    stray = rec(2, series=0, study=9)
    with caplog.at_level("WARNING", logger="osirix_py.db.repository"):
        if path == "single":
            res = [repo.add_instance(conn, stray)]
        elif path == "bulk-1":
            res = repo.add_instances(conn, [stray])
        else:  # with a record of a new series: the general path
            res = repo.add_instances(conn, [stray, rec(1, series=5, study=7)])
    assert res[0].status == "stored" and res[0].study_uid == "1.2.0"
    assert "filed there" in caplog.text
    studies = {r["StudyInstanceUID"]: r for r in repo.find(conn, Level.STUDY)}
    assert "1.2.9" not in studies
    assert studies["1.2.0"]["NumberOfStudyRelatedInstances"] == 2
    assert studies["1.2.0"]["NumberOfStudyRelatedSeries"] == 1
    for uid, row in studies.items():
        n = len(repo.find(conn, Level.IMAGE, {"StudyInstanceUID": uid}))
        assert row["NumberOfStudyRelatedInstances"] == n
    conn.rollback()
