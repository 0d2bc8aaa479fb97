"""The DICOM corpus generator (bench/corpus.py): valid, sparse, varied and reproducible files."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from bench import corpus
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

REPO = Path(__file__).resolve().parents[2]
LAYOUT = re.compile(r"^[^/]+/\d{8}_[^/]+/\d+_[^/]+/IM\d{5}\.dcm$")


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    """A small sample-mode corpus with a few series lacking SeriesInstanceUID, and its summary."""
    root = tmp_path_factory.mktemp("sample")
    summary = corpus.write_corpus(root, files=150, sample=True, seed=7, without_series_uid_fraction=0.1, workers=1)
    return root, summary


def _dicom_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.dcm"))


def _read_all(root: Path):
    return {path: dcmread(path, stop_before_pixels=True) for path in _dicom_files(root)}


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in _dicom_files(root):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_sample_layout_and_summary(sample):
    root, summary = sample
    headers = _read_all(root)
    assert len(headers) == summary["files"] == 150
    for path in headers:
        assert LAYOUT.match(path.relative_to(root).as_posix()), path
    groups = {ds.get("SeriesInstanceUID") or (ds.StudyInstanceUID, ds.SeriesNumber) for ds in headers.values()}
    assert summary["series"] == len(groups)
    assert summary["patients"] == len({ds.PatientID for ds in headers.values()}) == 8
    assert summary["studies"] == len({ds.StudyInstanceUID for ds in headers.values()})
    lacking = [ds for ds in headers.values() if "SeriesInstanceUID" not in ds]
    assert summary["series_without_uid"] >= 1
    assert len(lacking) == summary["files_without_series_uid"] > 0
    assert summary["apparent_bytes"] == sum(path.stat().st_size for path in headers)


def test_files_are_complete_dicom(sample):
    root, _ = sample
    for path, ds in _read_all(root).items():
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert len(ds) >= 100, path
        assert ds.Modality in {"CT", "MR", "CR", "US", "PT"}
        assert "2019" <= ds.StudyDate[:4] <= "2025"
        assert ds.Rows == ds.Columns == 512 and ds.BitsAllocated == 16
        assert len(ds.ReferencedImageSequence) >= 1 and ds.ProcedureCodeSequence[0].CodeValue
        assert ds.RequestAttributesSequence[0].ScheduledProtocolCodeSequence[0].CodeValue
        private = ds.private_block(0x0029, "ACME IMAGE HEADER 1.0")
        assert private[0x10].VR == "OB" and len(private[0x10].value) >= 512
    full = dcmread(_dicom_files(root)[0])
    assert full["PixelData"].VR == "OW" and len(full.PixelData) == corpus.PIXEL_BYTES
    assert full.PixelData == bytes(corpus.PIXEL_BYTES)


def test_instances_of_a_series_differ_where_they_should(sample):
    root, _ = sample
    by_series: dict[Path, list] = {}
    for path, ds in _read_all(root).items():
        by_series.setdefault(path.parent, []).append(ds)
    folder, instances = max(by_series.items(), key=lambda item: len(item[1]))
    assert len(instances) >= 5, folder
    assert sorted(ds.InstanceNumber for ds in instances) == list(range(1, len(instances) + 1))
    assert len({ds.SOPInstanceUID for ds in instances}) == len(instances)
    assert len({tuple(ds.ImagePositionPatient) for ds in instances}) == len(instances)
    assert len({ds.SliceLocation for ds in instances}) == len(instances)
    assert len({ds.get("SeriesInstanceUID") for ds in instances}) == 1
    assert len({ds.ContentTime for ds in instances}) == len(instances)


def test_files_are_sparse(sample):
    root, summary = sample
    for path in _dicom_files(root):
        stat = path.stat()
        assert stat.st_size > corpus.PIXEL_BYTES
        assert stat.st_blocks * 512 < stat.st_size / 10, path
    assert summary["disk_bytes"] < summary["apparent_bytes"] / 10


def test_names_use_the_declared_character_set(sample):
    root, _ = sample
    seen = {}
    for path, ds in _read_all(root).items():
        raw = dcmread(path, stop_before_pixels=True, specific_tags=["PatientName"])
        seen[str(ds.PatientName)] = (ds.get("SpecificCharacterSet"), raw.get_item(0x00100010).value)
    assert set(seen) == {name for name, _, _ in corpus.SAMPLE_PATIENTS}
    charset, raw = seen["Müller^Jürgen"]
    assert charset == "ISO_IR 100" and raw.rstrip(b" ") == "Müller^Jürgen".encode("latin-1")
    charset, raw = seen["Ñúñez^Zoë"]
    assert charset == "ISO_IR 192" and raw.rstrip(b" ") == "Ñúñez^Zoë".encode()
    assert seen["Dvořák^Antonín"][0] == "ISO_IR 192"


@pytest.mark.skipif(shutil.which("dcmdump") is None, reason="dcmtk's dcmdump is not installed")
def test_dcmdump_agrees_with_pydicom(sample):
    root, _ = sample
    path, ds = next((path, ds) for path, ds in _read_all(root).items()
                    if str(ds.PatientName) == "García Márquez^José Luis" and "SeriesInstanceUID" in ds)
    done = subprocess.run(["dcmdump", "+U8", "+P", "0010,0010", "+P", "0020,000e", str(path)],
                          capture_output=True, text=True, check=True)
    assert not re.search(r"^[EW]:", done.stderr, re.MULTILINE), done.stderr
    values = dict(re.findall(r"^\((\w{4},\w{4})\) \w\w \[(.*?)\]", done.stdout, re.MULTILINE))
    assert values == {"0010,0010": str(ds.PatientName), "0020,000e": ds.SeriesInstanceUID}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path):
    one = corpus.write_corpus(tmp_path / "one", files=24, series_size=7, seed=3, workers=1)
    two = corpus.write_corpus(tmp_path / "two", files=24, series_size=7, seed=3, workers=2)
    corpus.write_corpus(tmp_path / "other", files=24, series_size=7, seed=4, workers=1)
    assert one["files"] == two["files"] == 24 and one["series"] == 4
    assert _digest(tmp_path / "one") == _digest(tmp_path / "two")
    assert _digest(tmp_path / "one") != _digest(tmp_path / "other")


def test_bulk_plan_is_varied():
    plan = corpus.plan_corpus(20_000, series_size=50, seed=1, without_series_uid_fraction=0.02)
    assert len(plan) == 400 and sum(series.size for series in plan) == 20_000
    assert {series.modality for series in plan} == {"CT", "MR", "CR", "US", "PT"}
    patients = {series.study.patient for series in plan}
    assert len(patients) > 50
    assert {patient.charset for patient in patients} == {None, "ISO_IR 100", "ISO_IR 192"}
    assert any(patient.name != patient.name.upper() for patient in patients)
    assert {series.study.study_date.year for series in plan} == set(range(2019, 2026))
    assert sum(not series.has_uid for series in plan) == 8


def test_broken_files(tmp_path):
    outcomes = corpus.write_broken_files(tmp_path)
    assert sorted(outcomes) == sorted(path.name for path in tmp_path.iterdir())
    assert outcomes.pop("big_header.dcm") == "ok" and set(outcomes.values()) == {"error"}
    assert (tmp_path / "empty.dcm").stat().st_size == 0
    for name in ("notes.txt", "error_page.dcm", "empty.dcm"):
        with pytest.raises(InvalidDicomError):
            dcmread(tmp_path / name)
    assert len(dcmread(tmp_path / "preamble_only.dcm")) == 0
    truncated = dcmread(tmp_path / "truncated_header.dcm", stop_before_pixels=True)
    assert "SOPInstanceUID" in truncated and "StudyInstanceUID" not in truncated
    big = dcmread(tmp_path / "big_header.dcm", stop_before_pixels=True)
    assert big.get_item(0x0020000D).value_tell > 64 * 1024
    assert big.PatientName == "BIG^HEADER" and len(big) >= 100
    stat = (tmp_path / "big_header.dcm").stat()
    assert stat.st_blocks * 512 < stat.st_size / 4


def test_command_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "corpus.py"), str(tmp_path), "--files", "12", "--series-size", "5",
         "--workers", "1", "--json"],
        capture_output=True, text=True, check=True)
    summary = json.loads(done.stdout)
    assert summary["files"] == 12 and summary["series"] == 3
    assert len(_dicom_files(tmp_path)) == 12


def test_files_required_unless_sample(tmp_path):
    with pytest.raises(ValueError):
        corpus.write_corpus(tmp_path)
