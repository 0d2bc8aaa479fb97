"""The DICOMDIR layout: real DICOM files indexed, zipped as a file-set, unpacked, read back by pydicom."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.fileset import FileSet
from tests.support.dicom import write_dicom, write_series

from orthanc_nas.catalog import Catalog
from orthanc_nas.catalog_writer import CatalogWriter
from orthanc_nas.dicomdir import DICOMDIR_NAME, Instance, MissingAttributes, file_set_archive, plan_file_set
from orthanc_nas.errors import NotFound
from orthanc_nas.headers import parse_head
from orthanc_nas.sources import FileEntry
from orthanc_nas.sources.local import LocalSource

SR = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: not an image, still referenced with its own SOP class


def index(root: Path, data: Path) -> Catalog:
    """Index every file under `root` with the real header parser."""
    catalog = Catalog(str(data))
    writer = CatalogWriter(catalog)
    writer.begin_run()
    results = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        results.append((FileEntry(path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns),
                        parse_head(path.read_bytes(), True), None))
    writer.write(results)
    writer.close()
    return catalog


@pytest.fixture
def nas(tmp_path) -> dict:
    root = tmp_path / "nas"
    study = {"StudyInstanceUID": "2.25.100", "PatientName": "Müller^Jürgen", "PatientID": "DE-1",
             "charset": "ISO_IR 192", "StudyDate": "20240315", "StudyDescription": "MRT Knie", "Modality": "MR"}
    files = {
        "t1": write_series(root / "knee" / "t1", 3, SeriesInstanceUID="2.25.101", SeriesNumber=1,
                           SeriesDescription="T1 sagittal", **study),
        "pd": write_series(root / "knee" / "pd", 2, SeriesInstanceUID="2.25.102", SeriesNumber=2, **study),
        "other": [write_dicom(root / "ct" / f"x{n}.dcm", SeriesInstanceUID="2.25.201", StudyInstanceUID="2.25.200",
                              PatientID="US-9", PatientName="DOE^JOHN", SeriesNumber=None, InstanceNumber=None)
                  for n in range(2)],
        "sr": [write_dicom(root / "sr" / "report.dcm", SOPClassUID=SR, SeriesInstanceUID="2.25.301",
                           StudyInstanceUID="2.25.200", PatientID="US-9", Modality="SR", PatientName="DOE^JOHN")],
    }
    catalog = index(root, tmp_path / "data")
    keys = {name: catalog.reader().execute("SELECT series_key FROM files WHERE path LIKE ?",
                                           (paths[0].relative_to(root).parent.as_posix() + "/%",)).fetchone()[0]
            for name, paths in files.items()}
    return {"root": root, "catalog": catalog, "files": files, "keys": keys}


def unpack(archive, target: Path) -> dict[str, bytes]:
    data = b"".join(archive)
    assert len(data) == len(archive)  # the size announced before the first byte
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
        zf.extractall(target)
        return {name: zf.read(name) for name in zf.namelist()}


def test_the_zip_is_a_file_set_pydicom_loads_with_every_file_byte_for_byte(nas, tmp_path):
    keys = nas["keys"]
    archive, filename = file_set_archive(nas["catalog"], LocalSource(str(nas["root"])),
                                         [keys["t1"], keys["pd"], keys["other"], keys["sr"]])
    assert filename == "Muller_Jurgen_20240315_4_series.zip" or filename.endswith("_4_series.zip")
    names = unpack(archive, tmp_path / "out")
    assert next(iter(names)) == DICOMDIR_NAME
    assert sorted(n for n in names if n != DICOMDIR_NAME) == sorted(
        ["PT000000/ST000000/SE000000/IM000000", "PT000000/ST000000/SE000000/IM000001",
         "PT000000/ST000000/SE000000/IM000002", "PT000000/ST000000/SE000001/IM000000",
         "PT000000/ST000000/SE000001/IM000001", "PT000001/ST000000/SE000000/IM000000",
         "PT000001/ST000000/SE000000/IM000001", "PT000001/ST000000/SE000001/IM000000"])

    fs = FileSet(tmp_path / "out" / DICOMDIR_NAME)
    originals = {}
    for paths in nas["files"].values():
        for path in paths:
            originals[parse_head(path.read_bytes(), True)["SOPInstanceUID"]] = path.read_bytes()
    assert len(fs) == len(originals) == 8
    for instance in fs:
        assert Path(instance.path).read_bytes() == originals[instance.SOPInstanceUID]
    assert {str(p) for p in fs.find_values("PatientID")} == {"DE-1", "US-9"}
    assert [str(v) for v in fs.find_values("PatientName")] == ["Müller^Jürgen", "DOE^JOHN"]
    knee = fs.find(PatientID="DE-1")
    assert {i.SOPClassUID for i in knee} == {"1.2.840.10008.5.1.4.1.1.2"}
    assert [i.TransferSyntaxUID for i in knee] == ["1.2.840.10008.1.2.1"] * 5
    (report,) = fs.find(SOPClassUID=SR)
    assert report.FileID == "PT000001/ST000000/SE000001/IM000000"
    series = {node._record.SeriesInstanceUID: node._record for node in fs._tree if node.record_type == "SERIES"}
    assert series["2.25.101"].SeriesNumber == 1 and series["2.25.101"].SeriesDescription == "T1 sagittal"
    assert series["2.25.201"].SeriesNumber == 1  # none in the files: a running number, as dcmmkdir invents


def test_unknown_series_and_files_indexed_without_uids(nas):
    with pytest.raises(NotFound):
        file_set_archive(nas["catalog"], LocalSource(str(nas["root"])), [nas["keys"]["t1"], "nope"])
    row = nas["catalog"].series_rows([nas["keys"]["t1"]])[nas["keys"]["t1"]]
    with pytest.raises(MissingAttributes, match="a.dcm has no SOP class"):
        plan_file_set([row], {row["series_key"]: [Instance("a.dcm", 1, 1, "1.2.3", None, None, 1)]})


def test_pydicoms_dicomdir_writer_is_still_what_the_file_set_uses():
    """`dicomdir._encode` relies on FileSet._tree and FileSet._write_dicomdir: fail loudly if they change."""
    fs = FileSet()
    assert hasattr(fs, "_tree") and fs._tree.is_root and callable(fs._write_dicomdir)


def test_thousands_of_files_plan_without_reading_them(tmp_path):
    """The records come from the index alone: 2,000 files, none opened (the rows are made up)."""
    row = {"series_key": "k", "PatientID": "P", "PatientName": "A^B", "StudyInstanceUID": "1.2", "StudyDate": None,
           "StudyDescription": None, "AccessionNumber": None, "SeriesInstanceUID": "1.2.3", "SeriesNumber": 4,
           "SeriesDescription": None, "Modality": "CT", "StudyTime": None, "StudyID": None}
    files = [Instance(f"f{n}", 10, 1, f"1.2.3.{n}", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1", n)
             for n in range(2000)]
    members, dicomdir = plan_file_set([row], {"k": files})
    assert len(members) == 2000 and members[-1].name == "PT000000/ST000000/SE000000/IM001999"
    ds = dcmread(io.BytesIO(dicomdir))
    assert ds.FileSetID == "ORTHANC_NAS" and ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.1.3.10"
    images = [r for r in ds.DirectoryRecordSequence if r.DirectoryRecordType == "IMAGE"]
    assert len(images) == 2000 and [r.InstanceNumber for r in images[:3]] == [0, 1, 2]
    assert list(images[-1].ReferencedFileID) == ["PT000000", "ST000000", "SE000000", "IM001999"]
