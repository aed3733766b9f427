"""ROIs stored with their instance, so that measurements survive a restart.

The geometry and statistics live in :mod:`osirix_py.imaging.roi`; this module
only persists the JSON form of an ROI (its ``to_dict``/``to_json``) in the
``rois`` table, keyed by the instance's SOP Instance UID and frame.  Deleting
an instance deletes its ROIs.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass

from sqlalchemy import delete, select, update

from ..db.engine import Database
from ..db.schema import instances, rois, series, studies


class RoiError(LookupError):
    pass


@dataclass(frozen=True)
class StoredRoi:
    id: int
    sop_instance_uid: str
    frame: int
    kind: str
    name: str | None
    data: dict


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _as_dict(data) -> dict:
    if isinstance(data, str):
        data = json.loads(data)
    if not isinstance(data, dict):
        raise TypeError("an ROI is stored as a JSON object")
    return data


class RoiRepository:
    def __init__(self, db: Database):
        self.db = db

    def save(self, sop_instance_uid: str, data, *, frame: int = 0, name: str | None = None,
             roi_id: int | None = None) -> int:
        """Insert (or, with *roi_id*, update) an ROI; returns its id."""
        d = _as_dict(data)
        kind = str(d.get("kind") or d.get("type") or "roi")
        with self.db.engine.begin() as conn:
            pk = conn.execute(select(instances.c.id)
                              .where(instances.c.sop_instance_uid == sop_instance_uid)).scalar()
            if pk is None:
                raise RoiError(f"no instance {sop_instance_uid} in the database")
            if roi_id is not None:
                n = conn.execute(update(rois).where(rois.c.id == roi_id).values(
                    data=d, kind=kind, name=name, frame=frame, updated_at=_now())).rowcount
                if not n:
                    raise RoiError(f"no ROI with id {roi_id}")
                return roi_id
            return conn.execute(rois.insert().values(
                instance_pk=pk, sop_instance_uid=sop_instance_uid, frame=frame, kind=kind,
                name=name, data=d, created_at=_now())).inserted_primary_key[0]

    def for_instance(self, sop_instance_uid: str) -> list[StoredRoi]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(rois).where(rois.c.sop_instance_uid == sop_instance_uid)
                                .order_by(rois.c.id)).all()
        return [self._row(r) for r in rows]

    def for_study(self, study_instance_uid: str) -> list[StoredRoi]:
        q = (select(rois).join(instances, instances.c.id == rois.c.instance_pk)
             .join(series, series.c.id == instances.c.series_pk)
             .join(studies, studies.c.id == series.c.study_pk)
             .where(studies.c.study_instance_uid == study_instance_uid).order_by(rois.c.id))
        with self.db.engine.connect() as conn:
            return [self._row(r) for r in conn.execute(q)]

    def delete(self, roi_id: int) -> None:
        with self.db.engine.begin() as conn:
            if not conn.execute(delete(rois).where(rois.c.id == roi_id)).rowcount:
                raise RoiError(f"no ROI with id {roi_id}")

    @staticmethod
    def _row(r) -> StoredRoi:
        return StoredRoi(id=r.id, sop_instance_uid=r.sop_instance_uid, frame=r.frame, kind=r.kind,
                         name=r.name, data=r.data)
