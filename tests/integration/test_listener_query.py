"""C-FIND SCP: every level and matching kind, both models, with pynetdicom and findscu.

The archive is the synthetic one (``loaded_runtime``): patients PAT001
Doe^John (M, 1960-03-12), PAT002 Müller^Jürgen (M, 1955-11-24, ISO_IR 100),
PAT003 Smith^Jane (F, 1982-06-07); two studies each, dated 2024-01-15 + 7 days
per study (CT, MR, CT, MR, CT, MR), at 08:00 (first) and 09:00 (second);
accession ACC<patient><study>; two series of 10 instances per study.
"""

from __future__ import annotations

import time

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind as PFIND,
)
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind as SFIND,
)

from osirix_py.dicom import status as st

AET = "OSIRIXPY"


def _ds(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def cfind(scu, port: int, model: str, ds: Dataset) -> tuple[list[Dataset], list[int], Dataset]:
    """(identifiers of the pending responses, their statuses, the final status)."""
    with scu(port, [model]) as assoc:
        found, statuses, final = [], [], None
        for status, ident in assoc.send_c_find(ds, model):
            assert status is not None and "Status" in status, "no C-FIND response"
            if status.Status in (st.PENDING, st.PENDING_WARNING):
                found.append(ident)
                statuses.append(status.Status)
            else:
                final = status
        return found, statuses, final


@pytest.fixture(scope="module")
def uids(loaded_runtime):
    studies = {r["AccessionNumber"]: r["StudyInstanceUID"] for r in loaded_runtime.archive.find("study")}
    series = {}
    for r in loaded_runtime.archive.find("series"):
        series[(r["AccessionNumber"], r["SeriesNumber"])] = r["SeriesInstanceUID"]
    return studies, series


# --------------------------------------------------------------------------- matching
MATRIX = [
    # Patient Root, PATIENT level
    (PFIND, "PATIENT", {"PatientID": "PAT002"}, 1),
    (PFIND, "PATIENT", {"PatientName": "doe^john"}, 1),  # names: case-insensitive
    (PFIND, "PATIENT", {"PatientName": "DOE"}, 1),  # a family name matches the full name
    (PFIND, "PATIENT", {"PatientName": "*"}, 3),
    (PFIND, "PATIENT", {"PatientName": "M?ller*"}, 1),  # ? matches one (non-ASCII) character
    (PFIND, "PATIENT", {"PatientName": "", "PatientID": ""}, 3),  # universal
    (PFIND, "PATIENT", {"PatientSex": "F"}, 1),
    (PFIND, "PATIENT", {"PatientBirthDate": "19500101-19651231"}, 2),  # date range
    (PFIND, "PATIENT", {"PatientID": "PAT001\\PAT003"}, 2),  # value list
    (PFIND, "PATIENT", {"PatientID": "pat001"}, 0),  # not a name: case-sensitive
    # Study Root, STUDY level
    (SFIND, "STUDY", {"StudyInstanceUID": ""}, 6),
    (SFIND, "STUDY", {"StudyDate": "20240122-20240205"}, 3),
    (SFIND, "STUDY", {"StudyDate": "20240212-"}, 2),
    (SFIND, "STUDY", {"StudyDate": "-20240115"}, 1),
    (SFIND, "STUDY", {"StudyDate": "20240129"}, 1),
    (SFIND, "STUDY", {"StudyTime": "0800-0830"}, 3),  # time range
    (SFIND, "STUDY", {"AccessionNumber": "ACC00102"}, 1),
    (SFIND, "STUDY", {"AccessionNumber": "ACC001*"}, 2),
    (SFIND, "STUDY", {"ModalitiesInStudy": "MR"}, 3),
    (SFIND, "STUDY", {"ModalitiesInStudy": "CT\\PT"}, 3),
    (SFIND, "STUDY", {"PatientName": "SMITH*"}, 2),
    (SFIND, "STUDY", {"StudyDescription": "*CT*"}, 3),
    (SFIND, "STUDY", {"StudyDescription": "*ct*"}, 0),  # LO: case-sensitive
    (SFIND, "STUDY", {"PatientName": "smith*", "StudyDate": "20240219"}, 1),
    (SFIND, "STUDY", {"SeriesDescription": "MR series 2"}, 3),  # key below the level
    # Patient Root, STUDY level (needs the Patient ID)
    (PFIND, "STUDY", {"PatientID": "PAT001"}, 2),
    (PFIND, "STUDY", {"PatientID": "PAT001", "StudyDate": "20240122"}, 1),
]


@pytest.mark.parametrize("model,level,keys,expected", MATRIX,
                         ids=[f"{lv}-{'-'.join(f'{k}={v}' for k, v in keys.items())}"
                              for _, lv, keys, _ in MATRIX])
def test_find_matching(loaded_runtime, scu, model, level, keys, expected):
    ds = _ds(level, **keys)
    ds.SpecificCharacterSet = "ISO_IR 192"
    found, _, final = cfind(scu, loaded_runtime.listener_port, model, ds)
    assert final.Status == st.SUCCESS
    assert len(found) == expected


def test_find_series_and_image_levels(loaded_runtime, scu, uids):
    studies, series = uids
    port = loaded_runtime.listener_port
    st1 = studies["ACC00101"]
    cases = [
        (SFIND, _ds("SERIES", StudyInstanceUID=st1, SeriesInstanceUID=""), 2),
        (SFIND, _ds("SERIES", StudyInstanceUID=st1, Modality="CT"), 2),
        (SFIND, _ds("SERIES", StudyInstanceUID=st1, Modality="MR"), 0),
        (SFIND, _ds("SERIES", StudyInstanceUID=st1, SeriesNumber="2"), 1),
        (SFIND, _ds("SERIES", StudyInstanceUID=st1, SeriesDescription="CT series 1"), 1),
        (PFIND, _ds("SERIES", PatientID="PAT001", StudyInstanceUID=st1, SeriesInstanceUID=""), 2),
        (SFIND, _ds("IMAGE", StudyInstanceUID=st1, SeriesInstanceUID=series[("ACC00101", 1)],
                    SOPInstanceUID=""), 10),
        (SFIND, _ds("IMAGE", StudyInstanceUID=st1, SeriesInstanceUID=series[("ACC00101", 1)],
                    InstanceNumber="3"), 1),
        (PFIND, _ds("IMAGE", PatientID="PAT001", StudyInstanceUID=st1,
                    SeriesInstanceUID=series[("ACC00101", 2)], SOPInstanceUID=""), 10),
    ]
    for model, ds, expected in cases:
        found, _, final = cfind(scu, port, model, ds)
        assert final.Status == st.SUCCESS, ds
        assert len(found) == expected, ds
    # A list of SOP Instance UIDs at IMAGE level.
    ser = series[("ACC00101", 1)]
    found, _, _ = cfind(scu, port, SFIND, _ds("IMAGE", StudyInstanceUID=st1, SeriesInstanceUID=ser,
                                              SOPInstanceUID=""))
    two = [f.SOPInstanceUID for f in found[:2]]
    found, _, _ = cfind(scu, port, SFIND, _ds("IMAGE", StudyInstanceUID=st1, SeriesInstanceUID=ser,
                                              SOPInstanceUID="\\".join(two), InstanceNumber=""))
    assert sorted(f.SOPInstanceUID for f in found) == sorted(two)
    assert all(f.QueryRetrieveLevel == "IMAGE" and f.RetrieveAETitle == AET for f in found)


# --------------------------------------------------------------------------- responses
def test_responses_carry_the_requested_keys_only(loaded_runtime, scu):
    ds = _ds("STUDY", PatientName="Doe*", StudyInstanceUID="", NumberOfStudyRelatedInstances="",
             PatientComments="")
    found, statuses, final = cfind(scu, loaded_runtime.listener_port, SFIND, ds)
    assert final.Status == st.SUCCESS and len(found) == 2
    assert set(statuses) == {st.PENDING}
    for r in found:
        keys = {e.keyword for e in r}
        assert keys - {"SpecificCharacterSet"} == {
            "QueryRetrieveLevel", "RetrieveAETitle", "PatientName", "StudyInstanceUID",
            "NumberOfStudyRelatedInstances", "PatientComments"}
        assert r.NumberOfStudyRelatedInstances == 20
        assert r.PatientComments in ("", None)  # requested, no value: empty
        assert str(r.PatientName) == "Doe^John"
        assert r.QueryRetrieveLevel == "STUDY" and r.RetrieveAETitle == AET
    # The derived counts and modalities appear when asked for.
    ds = _ds("STUDY", AccessionNumber="ACC00101", ModalitiesInStudy="", NumberOfStudyRelatedSeries="")
    (r,), _, _ = cfind(scu, loaded_runtime.listener_port, SFIND, ds)
    assert r.ModalitiesInStudy == "CT" and r.NumberOfStudyRelatedSeries == 2
    assert "NumberOfStudyRelatedInstances" not in r


def test_unsupported_matching_key_gives_pending_warning(loaded_runtime, scu):
    ds = _ds("STUDY", AccessionNumber="ACC00101", PatientComments="something")
    found, statuses, final = cfind(scu, loaded_runtime.listener_port, SFIND, ds)
    assert final.Status == st.SUCCESS and len(found) == 1
    assert statuses == [st.PENDING_WARNING]
    assert found[0].PatientComments in ("", None)


def test_character_sets_of_responses(loaded_runtime, scu, uids):
    port = loaded_runtime.listener_port
    ds = _ds("STUDY", PatientName="müller*", StudyInstanceUID="", AccessionNumber="")
    ds.SpecificCharacterSet = "ISO_IR 192"
    found, _, _ = cfind(scu, port, SFIND, ds)
    assert len(found) == 2
    for r in found:
        assert r.SpecificCharacterSet == "ISO_IR 100"  # the stored one can encode it
        assert str(r.PatientName) == "Müller^Jürgen"
    studies, _ = uids
    ds = _ds("SERIES", StudyInstanceUID=studies["ACC00201"], PatientName="", SeriesInstanceUID="")
    found, _, _ = cfind(scu, port, SFIND, ds)
    assert len(found) == 2
    for r in found:
        assert r.SpecificCharacterSet == "ISO_IR 192"
        assert str(r.PatientName) == "Müller^Jürgen"
    ds = _ds("SERIES", StudyInstanceUID=studies["ACC00101"], PatientName="", SeriesInstanceUID="")
    found, _, _ = cfind(scu, port, SFIND, ds)
    assert all("SpecificCharacterSet" not in r for r in found)  # ASCII only


# --------------------------------------------------------------------------- refusals
REFUSED = [
    ("study root SERIES without Study UID", SFIND, dict(level="SERIES", SeriesInstanceUID="")),
    ("study root SERIES with wildcard Study UID", SFIND,
     dict(level="SERIES", StudyInstanceUID="2.25.*", SeriesInstanceUID="")),
    ("study root SERIES with a Study UID list", SFIND,
     dict(level="SERIES", StudyInstanceUID="1.2.3\\1.2.4", SeriesInstanceUID="")),
    ("study root IMAGE without Series UID", SFIND,
     dict(level="IMAGE", StudyInstanceUID="1.2.3", SOPInstanceUID="")),
    ("study root PATIENT level", SFIND, dict(level="PATIENT", PatientName="")),
    ("patient root STUDY without Patient ID", PFIND, dict(level="STUDY", StudyInstanceUID="")),
    ("unknown level", SFIND, dict(level="FRAME", StudyInstanceUID="")),
    ("bad date", SFIND, dict(level="STUDY", StudyDate="2024-13-45x")),
    ("derived key below the level", PFIND, dict(level="PATIENT", NumberOfStudyRelatedInstances="5")),
]


@pytest.mark.filterwarnings("ignore:Invalid value for VR")
@pytest.mark.parametrize("name,model,keys", REFUSED, ids=[r[0] for r in REFUSED])
def test_find_refusals_are_a900_with_a_comment(loaded_runtime, scu, name, model, keys):
    keys = dict(keys)
    ds = _ds(keys.pop("level"), **keys)
    found, _, final = cfind(scu, loaded_runtime.listener_port, model, ds)
    assert found == []
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH, name
    assert final.ErrorComment


def test_missing_level_is_a900(loaded_runtime, scu):
    ds = Dataset()
    ds.PatientName = "*"
    found, _, final = cfind(scu, loaded_runtime.listener_port, SFIND, ds)
    assert final.Status == st.IDENTIFIER_DOES_NOT_MATCH
    assert "QueryRetrieveLevel" in final.ErrorComment


# --------------------------------------------------------------------------- C-CANCEL
def test_c_cancel_stops_a_running_find(loaded_runtime, scu, monkeypatch):
    archive = loaded_runtime.archive
    real = archive.iter_find

    def slow(*a, **kw):
        for row in real(*a, **kw):
            time.sleep(0.15)
            yield row

    monkeypatch.setattr(archive, "iter_find", slow)
    with scu(loaded_runtime.listener_port, [SFIND]) as assoc:
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == SFIND)
        responses = assoc.send_c_find(_ds("STUDY", StudyInstanceUID=""), SFIND, msg_id=7)
        pending = 0
        final = None
        for status, _ in responses:
            if status.Status == st.PENDING:
                pending += 1
                if pending == 1:
                    assoc.send_c_cancel(7, cx.context_id)
            else:
                final = status.Status
        assert final == st.CANCEL
        assert pending < 6
        assert assoc.is_established


# --------------------------------------------------------------------------- findscu
@pytest.mark.peers
def test_findscu_study_patient_and_image_levels(loaded_runtime, dcmtk, tmp_path, uids):
    port = loaded_runtime.listener_port
    out_dir = tmp_path / "rsp"
    out_dir.mkdir()
    out = dcmtk("findscu", "-S", "-X", "-od", out_dir, "-aec", AET, "127.0.0.1", port,
                "-k", "QueryRetrieveLevel=STUDY", "-k", "PatientName=doe*", "-k", "StudyInstanceUID",
                "-k", "StudyDate", "-k", "NumberOfStudyRelatedInstances", "-k", "ModalitiesInStudy",
                timeout=30)
    assert out.returncode == 0, out.stdout
    rsp = [pydicom.dcmread(p) for p in sorted(out_dir.iterdir())]
    assert len(rsp) == 2
    assert sorted(r.StudyDate for r in rsp) == ["20240115", "20240122"]
    assert sorted(r.ModalitiesInStudy for r in rsp) == ["CT", "MR"]
    assert {r.NumberOfStudyRelatedInstances for r in rsp} == {20}

    out = dcmtk("findscu", "-v", "-P", "-aec", AET, "127.0.0.1", port, "-k", "QueryRetrieveLevel=PATIENT",
                "-k", "PatientName", "-k", "PatientID", "-k", "NumberOfPatientRelatedStudies", timeout=30)
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("(Pending)") == 3
    assert "Received Final Find Response (Success)" in out.stdout

    studies, series = uids
    out = dcmtk("findscu", "-v", "-S", "-aec", AET, "127.0.0.1", port, "-k", "QueryRetrieveLevel=IMAGE",
                "-k", f"StudyInstanceUID={studies['ACC00302']}",
                "-k", f"SeriesInstanceUID={series[('ACC00302', 2)]}", "-k", "SOPInstanceUID",
                "-k", "InstanceNumber", timeout=30)
    assert out.returncode == 0, out.stdout
    assert out.stdout.count("(Pending)") == 10

    # A hierarchy violation: findscu reports the failure with our comment.
    out = dcmtk("findscu", "-d", "-S", "-aec", AET, "127.0.0.1", port, "-k", "QueryRetrieveLevel=SERIES",
                "-k", "SeriesInstanceUID", timeout=30)
    assert "0xa900" in out.stdout.lower(), out.stdout[-2000:]
    assert "StudyInstanceUID must be one value" in out.stdout
