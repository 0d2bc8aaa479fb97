"""A NAS corpus for the DICOM node's tests: several patients (accented names in several character sets),
studies, series and transfer syntaxes, with what each file holds, so tests compute expected answers
themselves (`expected`), independently of the node's SQL."""

from __future__ import annotations

import fnmatch
import shutil
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import ImplicitVRLittleEndian, generate_uid

from tests.support.dicom import write_dicom

PATIENTS = {
    "PAT1": {"PatientName": "Müller^Jürgen", "PatientBirthDate": "19600102", "PatientSex": "M", "charset": "ISO_IR 100"},
    "PAT2": {"PatientName": "DOE^JOHN", "PatientBirthDate": "19751231", "PatientSex": "M", "charset": None},
    "PAT3": {"PatientName": "Dupré^Zoé", "PatientBirthDate": "19880808", "PatientSex": "F", "charset": "ISO_IR 192"},
    "PAT4": {"PatientName": "doe^jane", "PatientBirthDate": "20010101", "PatientSex": "F", "charset": None},
}
# study -> patient, date, time, accession, description, referring physician, institution
STUDIES = {
    "S1": ("PAT1", "20240105", "101500", "ACC1", "CT THORAX", "House^Gregory", "Hôpital Nord"),
    "S2": ("PAT2", "20231120", "083000", "ACC2", "MR KNEE", None, None),
    "S3": ("PAT2", "20240301", "140000", "ACC3", "CT HEAD", None, "Clinic"),
    "S4": ("PAT3", "20220610", "235959", "ACC4", "IRM GENOU", "Lefèvre^Hélène", None),
    "S5": ("PAT4", "20240105", "090000", None, "OT SCAN", None, None),
}
# series -> study, modality, number, body part, files, transfer syntax ("explicit", "implicit", "jpeg2000")
SERIES = {
    "S1.1": ("S1", "CT", 1, "CHEST", 3, "explicit"),
    "S1.2": ("S1", "CT", 2, "CHEST", 2, "implicit"),
    "S2.1": ("S2", "MR", 1, "KNEE", 2, "explicit"),
    "S3.1": ("S3", "CT", 1, "HEAD", 1, "explicit"),
    "S3.2": ("S3", "MR", 2, "HEAD", 1, "implicit"),
    "S4.1": ("S4", "MR", 1, "KNEE", 2, "explicit"),
    "S5.1": ("S5", "OT", 1, None, 1, "jpeg2000"),
}
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_qr_corpus(root: Path) -> list[dict]:
    """Write the corpus under `root` (plus a file that is not DICOM); returns one dict per DICOM file:
    its attributes by keyword, `path` (absolute) and `series` (the name in SERIES)."""
    root = Path(root)
    study_uids = {name: generate_uid() for name in STUDIES}
    rows = []
    for name, (study, modality, number, body_part, count, syntax) in SERIES.items():
        patient_id, date, time, accession, description, referring, institution = STUDIES[study]
        patient = PATIENTS[patient_id]
        series_uid = generate_uid()
        for i in range(1, count + 1):
            attrs = {
                "PatientName": patient["PatientName"], "PatientID": patient_id,
                "PatientBirthDate": patient["PatientBirthDate"], "PatientSex": patient["PatientSex"],
                "StudyInstanceUID": study_uids[study], "StudyDate": date, "StudyTime": time,
                "AccessionNumber": accession, "StudyDescription": description, "StudyID": study,
                "ReferringPhysicianName": referring, "InstitutionName": institution,
                "SeriesInstanceUID": series_uid, "SeriesDescription": "AXIAL" if modality == "CT" else "SAG T1",
                "Modality": modality, "SeriesNumber": number,
                "BodyPartExamined": body_part, "InstanceNumber": i, "SOPInstanceUID": generate_uid(),
                "SOPClassUID": MR_IMAGE if modality == "MR" else "1.2.840.10008.5.1.4.1.1.2",
            }
            path = root / patient_id / study / f"{number:02d}" / f"IM{i:03d}.dcm"
            if syntax == "jpeg2000":
                attrs["SOPClassUID"] = _jpeg2000(path, attrs, patient["charset"])
            else:
                write_dicom(path, charset=patient["charset"], pixel_bytes=2000, **attrs)
                if syntax == "implicit":
                    ds = pydicom.dcmread(path)
                    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
                    ds.save_as(path, implicit_vr=True, little_endian=True)
            rows.append({**attrs, "path": str(path), "series": name})
    (root / "notes.txt").write_text("not an image")
    return rows


def _jpeg2000(path: Path, attrs: dict, charset: str | None) -> str:
    """pydicom's JPEG 2000 test file under new identifiers; returns its SOP class."""
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(get_testdata_file("JPEG2000.dcm"), path)
    ds = pydicom.dcmread(path)
    if charset:
        ds.SpecificCharacterSet = charset
    for keyword, value in attrs.items():
        if keyword == "SOPClassUID":
            continue
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path)
    return str(ds.SOPClassUID)


def rows_of(paths: list[Path], series: str) -> list[dict]:
    """The rows of files written otherwise (e.g. `write_series`), read back with pydicom."""
    keywords = ["PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                "StudyTime", "AccessionNumber", "StudyDescription", "StudyID", "ReferringPhysicianName",
                "InstitutionName", "SeriesInstanceUID", "SeriesDescription", "Modality", "SeriesNumber",
                "BodyPartExamined", "InstanceNumber", "SOPInstanceUID", "SOPClassUID"]
    rows = []
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)  # also files without a meta group
        values = {k: ds.get(k) for k in keywords}
        rows.append({k: (None if v is None or v == "" else v if isinstance(v, int) else str(v))
                     for k, v in values.items()} | {"path": str(path), "series": series})
    return rows


# -- expected answers, computed from the rows without the node ------------------------------
LEVEL_KEYS = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID",
              "IMAGE": "SOPInstanceUID"}
_VR = {"PatientName": "PN", "ReferringPhysicianName": "PN", "StudyDate": "DA", "PatientBirthDate": "DA",
       "StudyTime": "TM", "StudyInstanceUID": "UI", "SeriesInstanceUID": "UI", "SOPInstanceUID": "UI",
       "SOPClassUID": "UI", "SeriesNumber": "IS", "InstanceNumber": "IS"}


def matches(keyword: str, wanted: str, value) -> bool:
    """PS3.4 C.2.2.2 for one key, written plainly: universal, UID list, range, wild cards, single value."""
    if wanted in ("", "*"):
        return True
    if value is None:
        return False
    vr = _VR.get(keyword)
    if vr == "UI":
        return value in wanted.split("\\")
    if vr in ("DA", "TM") and "-" in wanted:
        low, high = wanted.split("-")
        width = 8 if vr == "DA" else 6
        return (not low or value[:width] >= low) and (not high or value[:width] <= high)
    if vr == "IS":
        return int(value) == int(wanted)
    if vr == "PN":
        return fnmatch.fnmatchcase(value.casefold(), wanted.casefold())
    return fnmatch.fnmatchcase(str(value), wanted)


def expected(rows: list[dict], level: str, query: dict) -> set[str]:
    """The unique keys of the entities of `level` that match `query` (ModalitiesInStudy: any series)."""
    found = set()
    for row in rows:
        ok = True
        for keyword, wanted in query.items():
            if keyword == "ModalitiesInStudy":
                study = [r["Modality"] for r in rows if r["StudyInstanceUID"] == row["StudyInstanceUID"]]
                ok = ok and (not wanted or bool(set(wanted.split("\\")) & set(study)))
            else:
                ok = ok and matches(keyword, wanted, row.get(keyword))
        if ok:
            found.add(row[LEVEL_KEYS[level]])
    return found


#: C-FIND identifiers (model, level, matching keys) covering every level and matching rule of the node
QUERIES = [
    ("-S", "STUDY", {}),
    ("-S", "STUDY", {"PatientName": "DOE*"}),  # wild card, case-insensitive for names: DOE^JOHN and doe^jane
    ("-S", "STUDY", {"PatientName": "müller^jürgen"}),  # single value, accents, other case
    ("-S", "STUDY", {"PatientName": "*zo?"}),
    ("-S", "STUDY", {"StudyDate": "20240105"}),
    ("-S", "STUDY", {"StudyDate": "20240101-"}),
    ("-S", "STUDY", {"StudyDate": "-20231231"}),
    ("-S", "STUDY", {"StudyDate": "20231101-20231130"}),
    ("-S", "STUDY", {"StudyTime": "080000-120000"}),
    ("-S", "STUDY", {"AccessionNumber": "ACC?"}),
    ("-S", "STUDY", {"StudyDescription": "CT*"}),
    ("-S", "STUDY", {"StudyDescription": "ct*"}),  # case-sensitive for anything but names
    ("-S", "STUDY", {"PatientID": "PAT2", "StudyDate": "20240101-"}),
    ("-S", "STUDY", {"ModalitiesInStudy": "MR"}),
    ("-S", "STUDY", {"ReferringPhysicianName": "lefèvre*"}),
    ("-S", "STUDY", {"InstitutionName": "H*"}),
    ("-P", "PATIENT", {}),
    ("-P", "PATIENT", {"PatientName": "DOE*"}),
    ("-P", "PATIENT", {"PatientBirthDate": "19700101-19991231"}),
    ("-P", "PATIENT", {"PatientSex": "F"}),
    ("-P", "STUDY", {"PatientID": "PAT2"}),
    ("-S", "SERIES", {"Modality": "MR"}),
    ("-S", "SERIES", {"SeriesNumber": "2"}),
    ("-S", "SERIES", {"BodyPartExamined": "KNEE", "StudyDate": "20220101-"}),
    ("-S", "SERIES", {"SeriesDescription": "AX?AL"}),
]
