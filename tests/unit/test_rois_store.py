"""ROIs are stored with their instance and survive a restart."""

from __future__ import annotations

import pytest

from osirix_py.db.engine import open_database
from osirix_py.dicom import synthetic
from osirix_py.services.archive import Archive
from osirix_py.services.rois import RoiError, RoiRepository
from osirix_py.storage import FileStore


def test_rois_survive_reopen_and_go_with_their_instance(tmp_path):
    files = synthetic.write_series(synthetic.make_ct_series(slices=2, rows=16, columns=16), tmp_path / "s")
    url = f"sqlite:///{tmp_path}/db.sqlite"
    db = open_database(url)
    a = Archive(db, FileStore(tmp_path / "store"))
    a.import_paths(files)
    sop = a.find("instance")[0]["SOPInstanceUID"]
    study = a.find("study")[0]["StudyInstanceUID"]
    roi = {"kind": "ellipse", "version": 1, "center": [0.0, 0.0, 0.0], "radii": [10.0, 5.0]}
    rid = RoiRepository(db).save(sop, roi, name="liver")
    with pytest.raises(RoiError, match="no instance"):
        RoiRepository(db).save("1.2.3.4", roi)
    a.close()
    db.dispose()

    db = open_database(url)
    repo = RoiRepository(db)
    (stored,) = repo.for_instance(sop)
    assert (stored.id, stored.kind, stored.name, stored.data) == (rid, "ellipse", "liver", roi)
    assert [r.id for r in repo.for_study(study)] == [rid]
    a = Archive(db, FileStore(tmp_path / "store"))
    a.delete("instance", sop)
    assert repo.for_instance(sop) == []
    a.close()
    db.dispose()
