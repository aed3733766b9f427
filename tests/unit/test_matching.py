"""DICOM matching (PS3.4 C.2.2.2) against a real SQLite index."""

from __future__ import annotations

import datetime as dt

import pytest

from osirix_py.db import repository as repo
from osirix_py.db.engine import open_database
from osirix_py.db.matching import QueryError, normalise_person_name
from osirix_py.dicom.tags import Level

STUDIES = [
    # name, pid, date, time, accession, modality, description
    ("Doe^John", "P1", "20240110", "083000", "A1", "CT", "CT HEAD"),
    ("DOE^JANE", "P2", "20240115", "101500.25", "A2", "MR", "MR KNEE"),
    ("Smith^Anna", "P3", "20231231", "235959", "A3", "CT", "ct chest"),
    ("Müller^Jürgen", "P4", "20240201", "120000", "A%_4", "PT", "PET/CT"),
    ("van Doe^Pieter", "P5", "", "", "A5", "US", ""),
]


@pytest.fixture(scope="module")
def conn(tmp_path_factory):
    db = open_database(f"sqlite:///{tmp_path_factory.mktemp('m')}/t.sqlite")
    with db.engine.begin() as c:
        for i, (name, pid, date, time, acc, mod, desc) in enumerate(STUDIES):
            for s in range(2 if mod == "PT" else 1):
                smod = mod if s == 0 else "CT"
                values = {
                    "PatientName": name, "PatientID": pid, "StudyInstanceUID": f"1.2.3.{i}",
                    "StudyDate": date or None, "StudyTime": time or None, "AccessionNumber": acc,
                    "StudyDescription": desc or None, "SeriesInstanceUID": f"1.2.3.{i}.{s}",
                    "Modality": smod, "SeriesNumber": s + 1, "SOPInstanceUID": f"1.2.3.{i}.{s}.1",
                    "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2", "InstanceNumber": 1,
                }
                repo.add_instance(c, repo.InstanceRecord(
                    values=values, file_path=f"x/{i}{s}", in_place=False, file_size=1, checksum="0",
                    origin="test", received_at=dt.datetime.now(dt.timezone.utc)))
    with db.engine.connect() as c:
        yield c
    db.dispose()


def names(conn, query, level=Level.STUDY, **kw):
    return sorted(r["PatientName"] for r in repo.find(conn, level, query, **kw))


def test_universal_matching_returns_everything(conn):
    assert len(repo.find(conn, Level.STUDY, {"PatientName": ""})) == 5
    assert len(repo.find(conn, Level.STUDY, {"PatientName": "*"})) == 5


def test_person_names_match_case_insensitively_by_default(conn):
    assert names(conn, {"PatientName": "doe^john"}) == ["Doe^John"]
    assert names(conn, {"PatientName": "DOE^J*"}) == ["DOE^JANE", "Doe^John"]
    assert names(conn, {"PatientName": "müller*"}) == ["Müller^Jürgen"]


def test_exact_names_option_is_case_sensitive(conn):
    assert names(conn, {"PatientName": "doe^john"}, fuzzy_names=False) == []
    assert names(conn, {"PatientName": "Doe^John"}, fuzzy_names=False) == ["Doe^John"]


def test_wildcards_star_and_question_mark(conn):
    assert names(conn, {"PatientName": "*doe*"}) == ["DOE^JANE", "Doe^John", "van Doe^Pieter"]
    assert names(conn, {"PatientID": "P?"}) == sorted(s[0] for s in STUDIES)
    # Non-PN values are case-sensitive.
    assert names(conn, {"StudyDescription": "CT*"}) == ["Doe^John"]
    assert names(conn, {"StudyDescription": "*chest"}) == ["Smith^Anna"]


def test_like_metacharacters_are_literal(conn):
    assert names(conn, {"AccessionNumber": "A%_4"}) == ["Müller^Jürgen"]
    assert names(conn, {"AccessionNumber": "A%*"}) == ["Müller^Jürgen"]
    assert names(conn, {"AccessionNumber": "A_"}) == []


def test_date_ranges(conn):
    assert names(conn, {"StudyDate": "20240101-20240131"}) == ["DOE^JANE", "Doe^John"]
    assert names(conn, {"StudyDate": "20240115-"}) == ["DOE^JANE", "Müller^Jürgen"]
    assert names(conn, {"StudyDate": "-20231231"}) == ["Smith^Anna"]
    assert names(conn, {"StudyDate": "20240110"}) == ["Doe^John"]


def test_time_ranges_and_prefix(conn):
    assert names(conn, {"StudyTime": "080000-110000"}) == ["DOE^JANE", "Doe^John"]
    assert names(conn, {"StudyTime": "-1015"}) == ["DOE^JANE", "Doe^John"]
    assert names(conn, {"StudyTime": "1015"}) == ["DOE^JANE"]


def test_uid_list_matching(conn):
    assert names(conn, {"StudyInstanceUID": "1.2.3.0\\1.2.3.2"}) == ["Doe^John", "Smith^Anna"]


def test_modality_at_study_level_matches_any_series(conn):
    assert names(conn, {"ModalitiesInStudy": "CT"}) == ["Doe^John", "Müller^Jürgen", "Smith^Anna"]
    assert names(conn, {"Modality": "PT"}) == ["Müller^Jürgen"]
    assert names(conn, {"ModalitiesInStudy": "MR\\US"}) == ["DOE^JANE", "van Doe^Pieter"]


def test_keys_below_the_level_filter_through_children(conn):
    rows = repo.find(conn, Level.PATIENT, {"SeriesNumber": "2"})
    assert [r["PatientID"] for r in rows] == ["P4"]


def test_derived_counts(conn):
    (row,) = repo.find(conn, Level.STUDY, {"PatientID": "P4"})
    assert row["NumberOfStudyRelatedSeries"] == 2
    assert row["NumberOfStudyRelatedInstances"] == 2
    assert row["ModalitiesInStudy"] == "CT\\PT"


def test_bad_values_raise_query_error(conn):
    with pytest.raises(QueryError, match="StudyDate"):
        repo.find(conn, Level.STUDY, {"StudyDate": "2024-01-01-2024-02-01"})
    with pytest.raises(QueryError, match="SeriesNumber"):
        repo.find(conn, Level.SERIES, {"SeriesNumber": "two"})
    with pytest.raises(KeyError, match="Unknown|unknown"):
        repo.find(conn, Level.STUDY, {"NoSuchKey": "x"})


def test_normalised_person_name():
    assert normalise_person_name("Doe^John^^^") == "doe^john"
    assert normalise_person_name("Yamada^Tarou=山田^太郎=") == "yamada^tarou=山田^太郎"


@pytest.mark.parametrize("level,query", [
    (Level.STUDY, {"PatientID": "P2"}),
    (Level.STUDY, {"PatientID": " P4 ", "AccessionNumber": "A%_4"}),
    (Level.STUDY, {"AccessionNumber": "A3", "PatientName": "", "StudyDate": "*"}),
    (Level.STUDY, {"PatientID": "P1", "StudyInstanceUID": "1.2.3.0"}),
    (Level.STUDY, {"PatientID": "p1"}),  # IDs match case-sensitively
    (Level.STUDY, {"PatientID": "NOPE"}),
    (Level.STUDY, {}),
    (Level.PATIENT, {"PatientID": "P3"}),
    (Level.SERIES, {"StudyInstanceUID": "1.2.3.3", "SeriesInstanceUID": ""}),
    (Level.SERIES, {"StudyInstanceUID": "1.2.3.3", "SeriesInstanceUID": "1.2.3.3.1"}),
])
def test_exact_match_fast_path_answers_as_the_general_path(conn, level, query):
    """An exact-match query (IDs, codes, UIDs) runs on a statement compiled
    once per set of keys: same rows, same order, same values and types."""
    fast = repo._exact_rows(conn, level, query)
    assert fast is not None
    fast_rows = list(fast)
    q = repo._base_select(level).where(*repo.build_conditions(level, query)).order_by(
        *repo._ORDER[level]())
    slow_rows = [dict(r._mapping) for r in conn.execute(q)]
    assert fast_rows == slow_rows
    assert [{k: type(v) for k, v in r.items()} for r in fast_rows] == \
        [{k: type(v) for k, v in r.items()} for r in slow_rows]
    assert list(repo.iter_find(conn, level, query)) == slow_rows
    if query.get("PatientID") == "P2":
        assert [r["PatientName"] for r in fast_rows] == ["DOE^JANE"]


@pytest.mark.parametrize("level,query", [
    (Level.STUDY, {"PatientName": "DOE^JANE"}),  # person names: normalised matching
    (Level.STUDY, {"PatientID": "P*"}),
    (Level.STUDY, {"StudyInstanceUID": "1.2.3.1\\1.2.3.2"}),
    (Level.STUDY, {"StudyDate": "20240110"}),
    (Level.STUDY, {"Modality": "CT"}),  # ModalitiesInStudy at study level
    (Level.STUDY, {"SeriesInstanceUID": "1.2.3.0.0"}),  # a key below the level
    (Level.SERIES, {"SeriesNumber": "1"}),
    (Level.IMAGE, {"SOPInstanceUID": "1.2.3.0.0.1"}),  # typed columns (dates, flags)
])
def test_other_queries_take_the_general_path(conn, level, query):
    assert repo._exact_rows(conn, level, query) is None
