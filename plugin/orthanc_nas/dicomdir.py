"""The DICOMDIR layout of a share's zip: a DICOM file-set that viewers open as they open a CD.

PS3.10 section 8 and PS3.11 (the general-purpose media profiles): the zip holds
`DICOMDIR` at its root and each file under a File ID of at most 8 components of
at most 8 characters from `A-Z 0-9 _`, here `PT000000/ST000000/SE000000/IM000000`
as pydicom names them (one folder per patient, study and series). The DICOMDIR
holds one PATIENT → STUDY → SERIES → IMAGE record path per file (PS3.3 Annex F),
from what the index knows, without opening a file: SOP class, SOP instance and
transfer syntax per file; patient, study and series attributes per series.

pydicom's `fileset` makes the records and encodes the DICOMDIR (`RecordNode`,
and the file-set's own DICOMDIR writer: see `_encode`). `FileSet.add` itself is
not used: it reads or writes every instance and checks each new one against all
the others, which takes minutes for a few thousand files.

Values the index lacks for a Type 1 key are made up, as dcmmkdir's `--invent`
does: a running StudyID, SeriesNumber or InstanceNumber, a PatientID from the
name, and the stand-ins of `INVENTED` for a study date and time. Every leaf is
an IMAGE record; a non-image object (a structured report, a presentation
state) is still referenced with its own SOP class, which viewers open it by.

Memory: the records of every file are held while the DICOMDIR is encoded (a few
KB per file); the DICOMDIR itself (about 300 bytes per file) is kept while the
zip is sent. The files' bytes stream as in the folders layout.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filebase import DicomFileLike
from pydicom.fileset import FileSet, RecordNode
from pydicom.uid import generate_uid

from .archive import Member, ShareArchive, archive_filename, indexed_series
from .catalog import FILE_ORDER
from .pathnames import escaped, loaded

DICOMDIR_NAME = "DICOMDIR"
FILE_SET_ID = "ORTHANC_NAS"  # (0004,1130) CS, at most 16 characters
#: stand-ins for Type 1 keys the index does not have (PS3.3 F.5.2: StudyDate, StudyTime are Type 1)
INVENTED = {"StudyDate": "19000101", "StudyTime": "000000"}
UTF8 = "ISO_IR 192"


class MissingAttributes(Exception):
    """A file of the share lacks what its DICOMDIR record needs (indexed by an older version)."""


@dataclass(frozen=True, slots=True)
class Instance:
    path: str
    size: int
    mtime_ns: int
    SOPInstanceUID: str | None
    SOPClassUID: str | None
    TransferSyntaxUID: str | None
    InstanceNumber: int | None


def series_instances(catalog, key: str) -> list[Instance]:
    """The readable files of one series with what their IMAGE records need, in `FILE_ORDER`."""
    rows = catalog.reader().execute(
        "SELECT path, size, mtime_ns, SOPInstanceUID, SOPClassUID, TransferSyntaxUID, InstanceNumber FROM files "
        f"WHERE series_key=? AND error IS NULL ORDER BY {FILE_ORDER}", (key,))
    return [Instance(loaded(row[0]), *row[1:]) for row in rows]  # a name that is not UTF-8: as `os` takes it


def _record(kind: str, values: Mapping[str, object]) -> Dataset:
    record = Dataset()
    texts = [v for v in values.values() if isinstance(v, str)]
    if any(not t.isascii() for t in texts):
        record.SpecificCharacterSet = UTF8  # the index holds decoded text; UTF-8 writes any of it
    record.DirectoryRecordType = kind
    for keyword, value in values.items():
        setattr(record, keyword, value)
    return record


def _child(parent: RecordNode, key: str, kind: str, values: Mapping[str, object],
           known: dict[tuple[int, str], RecordNode]) -> RecordNode:
    """The node of `key` under `parent`, made on first use (PS3.3 F.5: one record per patient, study, series)."""
    found = known.get((id(parent), key))
    if found is None:
        found = RecordNode(_record(kind, values))
        found.parent = parent  # appends it to the parent's children, in order
        known[(id(parent), key)] = found
    return found


def _uid_for(text: str) -> str:
    """A UID that stays the same for the same text (for a series the index knows without its UID)."""
    return generate_uid(entropy_srcs=[hashlib.sha256(text.encode()).hexdigest()])


def _file_id(*numbers_and_prefixes: tuple[str, int]) -> list[str]:
    return [f"{prefix}{number:06d}" for prefix, number in numbers_and_prefixes]


def plan_file_set(series: Sequence[Mapping], files: dict[str, list[Instance]]) -> tuple[list[Member], bytes]:
    """The zip's members under their File IDs, and the encoded DICOMDIR that references them.

    `series` are index rows in the share's order; `files[series_key]` their files. Raises
    `MissingAttributes` when a file lacks its SOP class, SOP instance or transfer syntax UID.
    """
    file_set = FileSet()
    file_set.ID = FILE_SET_ID
    root = file_set._tree
    known: dict[tuple[int, str], RecordNode] = {}
    members: list[Member] = []
    for row in series:
        patient_id = row["PatientID"] or f"UNKNOWN_{hashlib.sha256((row['PatientName'] or '').encode()).hexdigest()[:8]}"
        patient = _child(root, patient_id, "PATIENT", {"PatientName": row["PatientName"] or "",
                                                       "PatientID": patient_id}, known)
        study_uid = row["StudyInstanceUID"] or _uid_for("study:" + row["series_key"])
        study = _child(patient, study_uid, "STUDY", {
            "StudyDate": row["StudyDate"] or INVENTED["StudyDate"],
            "StudyTime": _get(row, "StudyTime") or INVENTED["StudyTime"],
            "StudyDescription": row["StudyDescription"] or "", "StudyInstanceUID": study_uid,
            "StudyID": _get(row, "StudyID") or str(len(patient.children) + 1),
            "AccessionNumber": row["AccessionNumber"] or ""}, known)
        series_uid = row["SeriesInstanceUID"] or _uid_for("series:" + row["series_key"])
        values = {"Modality": row["Modality"] or "OT", "SeriesInstanceUID": series_uid,
                  "SeriesNumber": row["SeriesNumber"] if row["SeriesNumber"] is not None else len(study.children) + 1}
        if row["SeriesDescription"]:
            values["SeriesDescription"] = row["SeriesDescription"]  # Type 3: escaped by viewers that list series
        node = _child(study, series_uid, "SERIES", values, known)
        folder = _file_id(("PT", root.children.index(patient)), ("ST", patient.children.index(study)),
                          ("SE", study.children.index(node)))
        for instance in files[row["series_key"]]:
            if not (instance.SOPInstanceUID and instance.SOPClassUID and instance.TransferSyntaxUID):
                raise MissingAttributes(f"{escaped(instance.path)} has no SOP class, SOP instance or transfer syntax UID "
                                        "in the index")
            file_id = [*folder, f"IM{len(node.children):06d}"]
            number = instance.InstanceNumber if instance.InstanceNumber is not None else len(node.children) + 1
            leaf = RecordNode(_record("IMAGE", {
                "ReferencedFileID": file_id, "ReferencedSOPClassUIDInFile": instance.SOPClassUID,
                "ReferencedSOPInstanceUIDInFile": instance.SOPInstanceUID,
                "ReferencedTransferSyntaxUIDInFile": instance.TransferSyntaxUID, "InstanceNumber": number}))
            leaf.parent = node
            members.append(Member(instance.path, instance.size, instance.mtime_ns, "/".join(file_id)))
    return members, _encode(file_set)


def _get(row: Mapping, keyword: str):
    try:
        return row[keyword]
    except (IndexError, KeyError):  # an index made before the column existed
        return None


def _encode(file_set: FileSet) -> bytes:
    """The DICOMDIR of `file_set`'s record tree, encoded by pydicom's own writer (offsets included).

    `_write_dicomdir` is the file-set's internal step of `FileSet.write` that encodes the DICOMDIR
    alone; `tests/unit/test_dicomdir.py` fails if pydicom changes it.
    """
    buffer = io.BytesIO()
    file_set._write_dicomdir(DicomFileLike(buffer))
    return buffer.getvalue()


def file_set_archive(catalog, source, keys: Sequence[str], *, stop: threading.Event | None = None
                     ) -> tuple[ShareArchive, str]:
    """The zip of the given series as a DICOM file-set, and its download file name.

    Raises `NotFound` naming an unknown series, `MissingAttributes` when the index lacks a file's UIDs.
    """
    series = indexed_series(catalog, keys)
    members, dicomdir = plan_file_set(series, {row["series_key"]: series_instances(catalog, row["series_key"])
                                               for row in series})
    return ShareArchive(source, members, stop=stop, leading=[(DICOMDIR_NAME, dicomdir)]), archive_filename(series)
