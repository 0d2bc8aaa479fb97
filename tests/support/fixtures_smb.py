"""Pytest fixtures for a real Samba share holding a small DICOM corpus.

Use them from a test module with `from tests.support.fixtures_smb import *` (or list
this module in the root conftest's `pytest_plugins`). The server is started once
per session; tests that stop or freeze it must leave it running again.

Fixtures:
    smb_share_dir   session  folder served as the share: nested folders, spaces, Unicode names
    smbd            session  the running `SambaServer` (pause/resume/kill/restart)
    smb_connection  function `Connection(Type="smb", ...)` for it (nasuser/secret)
    smb_source      function an `SmbSource` on it, closed after the test
"""

from __future__ import annotations

import os
import shutil

import pytest

from tests.support.smbd import SambaServer, make_share_dir

__all__ = ["smb_connection", "smb_share_dir", "smb_source", "smbd", "write_dicom_corpus"]

# folder -> number of instances; the names exercise spaces, accents and non-Latin scripts
CORPUS_SERIES = {
    "DOE^JOHN/CT thorax 2024": 6,
    "DOE^JOHN/CT thorax 2024/Série 2 (bone)": 4,
    "MÜLLER^JÜRGEN/MR Kopf/T1 ä ö ü": 5,
    "李^小龙/检查 一": 4,
    "O'BRIEN^ANNE/Études/IRM genou": 5,
    "flat": 8,
}


def write_dicom_corpus(root: str) -> list[str]:
    """Write small, valid DICOM files (with 8x8 pixel data) under `root`; returns their relative paths."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    paths = []
    for s, (folder, count) in enumerate(CORPUS_SERIES.items()):
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        patient = folder.split("/")[0] if "^" in folder else "FLAT^TEST"
        study_uid, series_uid = generate_uid(), generate_uid()
        for i in range(count):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CTImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
            ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the names above are not Latin-1
            ds.PatientName, ds.PatientID = patient, f"ID{s:03d}"
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.StudyDate, ds.Modality = "20240115", "CT"
            ds.StudyDescription, ds.SeriesDescription = folder.split("/")[-1], f"series {s}"
            ds.SeriesNumber, ds.InstanceNumber = s + 1, i + 1
            ds.Rows = ds.Columns = 8
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
            ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
            ds.PixelData = bytes(range(128))
            rel = f"{folder}/IM {i + 1:04d}.dcm"
            ds.save_as(os.path.join(root, rel), enforce_file_format=True)
            paths.append(rel)
    with open(os.path.join(root, "flat", "README not dicom.txt"), "w", encoding="utf-8") as fh:
        fh.write("not a DICOM file\n")
    paths.append("flat/README not dicom.txt")
    return paths


@pytest.fixture(scope="session")
def smb_share_dir():
    root = make_share_dir("nas-test-share-")
    write_dicom_corpus(root)
    for folder, _dirs, files in os.walk(root):  # smbd reads as nasuser: everything world-readable
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def smbd(smb_share_dir):
    server = SambaServer(smb_share_dir).start()
    yield server
    server.cleanup()


@pytest.fixture
def smb_connection(smbd):
    smbd.ensure_answering()
    return smbd.connection()


@pytest.fixture
def smb_source(smb_connection):
    from orthanc_nas.sources.smb import SmbSource

    source = SmbSource(smb_connection)
    yield source
    source.close()
