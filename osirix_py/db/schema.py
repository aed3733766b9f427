"""Database schema: Patient -> Study -> Series -> Instance, built from ``dicom.tags``.

SQLAlchemy Core tables; the indexed DICOM columns of each level are generated
from the one attribute table so that schema, matching and responses cannot
drift apart.  Person-name columns get a case-folded shadow column
(``<column>_norm``) so that case-insensitive matching uses an index.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from ..dicom.tags import Attribute, Level, attributes_at

#: Bump when the schema changes; ``db.engine.open_database`` refuses a database
#: with a newer version and upgrades an older one explicitly.
SCHEMA_VERSION = 2  # 2: the users table of the web server

metadata = MetaData()


def _dicom_columns(level: Level) -> list:
    cols: list = []
    for a in attributes_at(level):
        cols.extend(_columns_for(a))
    return cols


def _columns_for(a: Attribute) -> list:
    if a.derived:
        if a.keyword == "ModalitiesInStudy":
            return [Column(a.column, String(256), nullable=False, default="")]
        return [Column(a.column, Integer, nullable=False, default=0)]
    # UID columns get their index from the level's unique constraint; PatientID
    # is not unique on its own (the issuer is part of the key), so it gets one.
    index = not a.unique or a.level is Level.PATIENT
    if a.is_int:
        return [Column(a.column, Integer, nullable=True, index=index)]
    col = Column(a.column, String(a.length if a.vr != "PN" else 324), nullable=True,
                 index=index)
    if a.is_person_name:
        return [col, Column(f"{a.column}_norm", String(324), nullable=True, index=True)]
    return [col]


schema_info = Table(
    "schema_info",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("upgraded_at", DateTime(timezone=True), nullable=True),
)

patients = Table(
    "patients",
    metadata,
    Column("id", Integer, primary_key=True),
    # PatientID + IssuerOfPatientID identify a patient; when PatientID is empty,
    # name + birth date do (as OsiriX does), so that anonymous data still groups.
    Column("patient_key", String(512), nullable=False, unique=True),
    *_dicom_columns(Level.PATIENT),
    Column("character_set", String(128), nullable=True),
)

studies = Table(
    "studies",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("patient_pk", Integer, ForeignKey("patients.id", ondelete="CASCADE"),
           nullable=False, index=True),
    *_dicom_columns(Level.STUDY),
    Column("character_set", String(128), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=True, index=True),
    UniqueConstraint("study_instance_uid", name="uq_study_uid"),
)

series = Table(
    "series",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("studies.id", ondelete="CASCADE"),
           nullable=False, index=True),
    *_dicom_columns(Level.SERIES),
    UniqueConstraint("series_instance_uid", name="uq_series_uid"),
)

instances = Table(
    "instances",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.id", ondelete="CASCADE"),
           nullable=False, index=True),
    *_dicom_columns(Level.IMAGE),
    # Where the bytes are: relative to the store root, or absolute for files
    # indexed in place.
    Column("file_path", String(1024), nullable=False),
    Column("in_place", Boolean, nullable=False, default=False),
    Column("file_size", BigInteger, nullable=False),
    Column("checksum", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, index=True),
    # "path:/some/dir/file.dcm" for imports, "aet:MODALITY1" for C-STORE.
    Column("origin", String(1100), nullable=False),
    UniqueConstraint("sop_instance_uid", name="uq_sop_uid"),
)

nodes = Table(
    "nodes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("ae_title", String(16), nullable=False),
    Column("host", String(255), nullable=False),
    Column("port", Integer, nullable=False),
    Column("retrieve_method", String(8), nullable=False, default="move"),
    Column("tls", Boolean, nullable=False, default=False),
    Column("description", String(255), nullable=True),
)

rois = Table(
    "rois",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("instance_pk", Integer, ForeignKey("instances.id", ondelete="CASCADE"),
           nullable=False, index=True),
    Column("sop_instance_uid", String(64), nullable=False, index=True),
    Column("frame", Integer, nullable=False, default=0),
    Column("kind", String(32), nullable=False),
    Column("name", String(255), nullable=True),
    Column("data", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("description", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("total", Integer, nullable=False, default=0),
    Column("completed", Integer, nullable=False, default=0),
    Column("failed", Integer, nullable=False, default=0),
    Column("warning", Integer, nullable=False, default=0),
    Column("bytes", BigInteger, nullable=False, default=0),
    Column("rate", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("details", JSON, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=True),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

#: Users of the web server (schema 2).  Passwords are stored only as a salted
#: scrypt hash (``scrypt$N$r$p$salt$hash``) and API tokens only as the SHA-256
#: of the token; see :mod:`osirix_py.web.users`.
users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("password_hash", String(255), nullable=False),
    Column("role", String(16), nullable=False, default="readonly"),
    Column("token_hash", String(64), nullable=True, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=True),
)

Index("ix_studies_date_time", studies.c.study_date, studies.c.study_time)

LEVEL_TABLES: dict[Level, Table] = {
    Level.PATIENT: patients,
    Level.STUDY: studies,
    Level.SERIES: series,
    Level.IMAGE: instances,
}

#: Foreign key of each child level to its parent's primary key.
PARENT_FK: dict[Level, str] = {
    Level.STUDY: "patient_pk",
    Level.SERIES: "study_pk",
    Level.IMAGE: "series_pk",
}
