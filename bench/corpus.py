"""Generate realistic, sparse DICOM corpora for the benchmarks, the sample NAS folder and the tests.

Every file is a complete DICOM Part 10 file (File Meta, Explicit VR Little Endian) whose header holds
more than 100 top-level elements: patient, study, series, equipment, image-plane and image-pixel
attributes, sequences (one of them nested), a vendor-style private block in group 0029 and
modality-specific attributes for CT, MR, CR, US and PT. The 512×512 16-bit PixelData (512 KiB) is a
hole: the header and the PixelData element header are written, then the file is extended to its final
size with ``ftruncate``, so each file takes a few KiB on disk while claiming about 520 KiB.

Speed: the header is encoded once per series with pydicom; per instance only the values that change
(SOP Instance UID in the dataset and in the File Meta, Instance Number, Image Position, Slice Location,
Content Time) are patched in place. Each is padded to a width fixed for the series, so no byte offset
moves. Series are spread over worker processes.

Layout, as a NAS export would have it (spaces and accents allowed in folder names)::

    PATIENTID/STUDYDATE_study description/SERIESNUMBER_series description/IM00001.dcm

The same seed gives the same bytes, whatever the number of worker processes.

Command line::

    python bench/corpus.py OUTDIR --files N [--series-size K] [--seed S] [--sample]
        [--without-series-uid-fraction F] [--workers W] [--broken] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import random
import re
import struct
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

ROWS = COLUMNS = 512
PIXEL_BYTES = ROWS * COLUMNS * 2
DEFAULT_SERIES_SIZE = 50
DEFAULT_SAMPLE_FILES = 300
BIG_HEADER_PRIVATE_BYTES = 80 * 1024

# (7FE0,0010) PixelData, OW, Explicit VR Little Endian: tag, VR, two reserved bytes, 32-bit length.
_PIXEL_DATA_HEADER = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, PIXEL_BYTES)
_FIRST_DATE = date(2019, 1, 1)
_LAST_DATE = date(2025, 12, 31)
_UNSAFE_IN_FOLDER_NAME = re.compile(r'[<>:"/\\|?*\x00-\x1f]')

_SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",
    "MR": "1.2.840.10008.5.1.4.1.1.4",
    "CR": "1.2.840.10008.5.1.4.1.1.1",
    "US": "1.2.840.10008.5.1.4.1.1.6.1",
    "PT": "1.2.840.10008.5.1.4.1.1.128",
}
_STATIONS = {
    "CT": ("ACME Medical", "Helix CT 128", "CT01"),
    "MR": ("ACME Medical", "Magna 3T", "MR02"),
    "CR": ("ACME Medical", "DigiRad DR", "DR01"),
    "US": ("ACME Medical", "SonoView 9", "US03"),
    "PT": ("ACME Medical", "Helix PET/CT", "PETCT1"),
}


class Protocol(NamedTuple):
    """A kind of study: its modality, description, body part, procedure code and typical series."""

    modality: str
    description: str
    body_part: str
    code: str
    series: tuple[tuple[str, str, int], ...]  # (modality, series description, typical image count)


PROTOCOLS: tuple[tuple[Protocol, int], ...] = (  # (protocol, weight)
    (Protocol("CT", "CT THORAX", "CHEST", "CTCHE", (
        ("CT", "Topogram 0.6 T20f", 1), ("CT", "Thorax 1.0 B70f", 120),
        ("CT", "Thorax 3.0 Br40", 60), ("CT", "Coronal MPR Lung", 40))), 4),
    (Protocol("CT", "CT Abdomen/Becken mit KM", "ABDOMEN", "CTABD", (
        ("CT", "Topogram 0.6 T20f", 1), ("CT", "Abdomen venös 3.0 Br40", 80),
        ("CT", "Coronal 3mm", 50))), 3),
    (Protocol("CT", "CT Crâne sans injection", "HEAD", "CTHEA", (
        ("CT", "Topogram 0.6 T20f", 1), ("CT", "Crâne 5mm", 30), ("CT", "Crâne 0.75 Hr40 os", 100))), 3),
    (Protocol("MR", "MR Brain w/wo contrast", "HEAD", "MRBRA", (
        ("MR", "t1_mprage_sag", 60), ("MR", "t2_tse_tra", 24), ("MR", "FLAIR tra", 24),
        ("MR", "DWI b1000 tra", 24), ("MR", "t1_se_tra +C", 24))), 3),
    (Protocol("MR", "IRM Genou droit", "KNEE", "MRKNE", (
        ("MR", "PD FS cor", 20), ("MR", "PD FS sag", 22), ("MR", "T1 tse cor", 20))), 2),
    (Protocol("MR", "MRT LWS", "LSPINE", "MRLSP", (
        ("MR", "t2_tse_sag", 15), ("MR", "t1_tse_sag", 15), ("MR", "t2_tse_tra", 30))), 2),
    (Protocol("CR", "Chest PA/LAT", "CHEST", "CRCHE", (("CR", "PA", 1), ("CR", "LAT", 1))), 4),
    (Protocol("CR", "Röntgen Hand links", "HAND", "CRHAN", (("CR", "Hand dp", 1), ("CR", "Hand schräg", 1))), 2),
    (Protocol("CR", "Radio Bassin face", "PELVIS", "CRPEL", (("CR", "Bassin face", 1),)), 2),
    (Protocol("US", "US Abdomen", "ABDOMEN", "USABD", (("US", "Liver", 8), ("US", "Kidneys", 6))), 2),
    (Protocol("US", "Échographie thyroïdienne", "NECK", "USNEC", (("US", "Thyroïde", 10),)), 1),
    (Protocol("PT", "PET-CT FDG Ganzkörper", "WHOLEBODY", "PTWB", (
        ("CT", "Topogram 0.6 T20f", 1), ("CT", "CT AC 5.0 B30f", 90),
        ("PT", "PET WB AC", 90), ("PT", "PET WB NAC", 90))), 2),
)

# Names: plain ASCII (upper, title or lower case), Latin-1 accents, and names only UTF-8 can hold.
_ASCII_FAMILIES = (
    "SMITH", "JOHNSON", "DOE", "BROWN", "MARTIN", "BERNARD", "DUBOIS", "ROSSI", "BIANCHI", "NOVAK",
    "KOWALSKI", "JANSEN", "DE VRIES", "PETERS", "NGUYEN", "KIM", "SATO", "OKAFOR", "SILVA", "ANDERSEN",
    "O'BRIEN", "VAN DER BERG", "MACDONALD", "SCHMIDT", "WAGNER", "FISCHER", "MOREAU", "LAURENT",
    "COSTA", "HANSEN",
)
_ASCII_GIVENS = (
    "JOHN", "JANE", "MARY", "ANNA", "PETER", "LUCA", "SOPHIE", "THOMAS", "EMMA", "DAVID", "LAURA",
    "MARC", "JULIA", "PAUL", "SARAH", "MICHAEL", "LEA", "NOAH", "CLARA", "HUGO", "ANNA MARIA",
)
_LATIN1_FAMILIES = (
    "Müller", "García Márquez", "Ñúñez", "Lefèvre", "Sørensen", "Åström", "Gonçalves", "Weiß",
    "Brontë", "Pérez", "Jäger", "Çelik", "Ó Súilleabháin", "Hernández",
)
_LATIN1_GIVENS = (
    "Jürgen", "José Luis", "Zoë", "Hélène", "Søren", "Björn", "João", "Günther", "François", "Iñaki",
    "Renée", "Anaïs", "Jörg", "Agnès",
)
_UTF8_FAMILIES = ("Dvořák", "Łukasiewicz", "Şahin", "Nguyễn", "Kovačević", "Wałęsa", "Παπαδόπουλος")
_UTF8_GIVENS = ("Antonín", "Paweł", "Ayşe", "Văn An", "Dušan", "Γιώργος", "Ludmiła", "Zoë")

# Sample mode: eight fixed patients (name, sex, preferred SpecificCharacterSet).
SAMPLE_PATIENTS = (
    ("Müller^Jürgen", "M", "ISO_IR 100"),
    ("García Márquez^José Luis", "M", "ISO_IR 100"),
    ("Ñúñez^Zoë", "F", "ISO_IR 192"),
    ("DOE^JOHN", "M", None),
    ("smith^anna", "F", None),
    ("Dvořák^Antonín", "M", "ISO_IR 192"),
    ("O'BRIEN^SEAN", "M", None),
    ("VAN DER BERG^Anna Maria", "F", "ISO_IR 100"),
)
_INSTITUTIONS = (
    ("General Hospital", "1 Main Street, Springfield"),
    ("Klinikum Nord", "Nordstraße 12, Hamburg"),
    ("Hôpital Saint-Louis", "1 avenue Claude Vellefaux, Paris"),
    ("Clínica San José", "Calle Mayor 5, Madrid"),
)
_PHYSICIANS = ("HOUSE^GREGORY", "Dupont^Marie", "Schäfer^Ulrich", "GREY^MEREDITH", "Rossi^Paolo")


@dataclass(frozen=True)
class Patient:
    """A patient; ``charset`` is the preferred SpecificCharacterSet (None: default repertoire)."""

    patient_id: str
    name: str
    birth_date: date
    sex: str
    charset: str | None


@dataclass(frozen=True)
class Study:
    """A study of one patient; ``folder`` is its path relative to the corpus root."""

    patient: Patient
    uid: str
    study_date: date
    study_seconds: int
    description: str
    body_part: str
    code: str
    accession: str
    study_id: str
    institution: tuple[str, str]
    referring: str
    folder: str


@dataclass(frozen=True)
class Series:
    """A series to write: ``size`` instances in ``folder`` (relative to the corpus root).

    ``uid`` always exists (instance UIDs derive from it); ``has_uid`` False leaves SeriesInstanceUID
    out of the files, which then group by StudyInstanceUID + SeriesNumber.
    """

    index: int
    seed: int
    study: Study
    uid: str
    has_uid: bool
    number: int
    description: str
    modality: str
    size: int
    folder: str

    @property
    def group_key(self) -> str | tuple[str, int]:
        """The key that groups this series' files, by the product's rule."""
        return self.uid if self.has_uid else (self.study.uid, self.number)


def _uid(*parts: object) -> str:
    """A deterministic UID under the 2.25 (UUID) arc, from a name-based UUID of ``parts``."""
    name = "orthanc-nas-corpus/" + "/".join(str(part) for part in parts)
    return f"2.25.{uuid.uuid5(uuid.NAMESPACE_OID, name).int}"


_IMPLEMENTATION_CLASS_UID = _uid("implementation")


def _folder_name(text: str) -> str:
    """``text`` made safe as one folder name on Linux, Windows and SMB."""
    return _UNSAFE_IN_FOLDER_NAME.sub("_", text).strip(" .") or "_"


def _da(day: date) -> str:
    return day.strftime("%Y%m%d")


def _tm(microseconds: int) -> str:
    """A TM value, HHMMSS.FFFFFF (always 13 characters), wrapping at midnight."""
    seconds, micro = divmod(microseconds % 86_400_000_000, 1_000_000)
    hours, rest = divmod(seconds, 3600)
    return f"{hours:02d}{rest // 60:02d}{rest % 60:02d}.{micro:06d}"


def _age(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def _random_date(rng: random.Random, first: date, last: date) -> date:
    return first + timedelta(days=rng.randrange((last - first).days + 1))


def _random_name(rng: random.Random) -> tuple[str, str | None]:
    """A ``FAMILY^GIVEN`` name and its preferred character set."""
    kind = rng.random()
    if kind < 0.50:
        return f"{rng.choice(_ASCII_FAMILIES)}^{rng.choice(_ASCII_GIVENS)}", rng.choice((None, None, "ISO_IR 100"))
    if kind < 0.62:
        name = f"{rng.choice(_ASCII_FAMILIES)}^{rng.choice(_ASCII_GIVENS)}"
        return (name.lower() if rng.random() < 0.5 else name.title()), None
    if kind < 0.85:
        name = f"{rng.choice(_LATIN1_FAMILIES)}^{rng.choice(_LATIN1_GIVENS)}"
        if rng.random() < 0.25:
            name = name.upper()
        return name, rng.choice(("ISO_IR 100", "ISO_IR 100", "ISO_IR 100", "ISO_IR 192"))
    return f"{rng.choice(_UTF8_FAMILIES)}^{rng.choice(_UTF8_GIVENS + _LATIN1_GIVENS)}", "ISO_IR 192"


def _new_patient_id(rng: random.Random, used: set[str]) -> str:
    while True:
        patient_id = str(rng.randrange(10_000_000, 100_000_000))
        if rng.random() < 0.2:
            patient_id = f"PAT-{patient_id[:6]}"
        if patient_id not in used:
            used.add(patient_id)
            return patient_id


def _new_patient(rng: random.Random, used_ids: set[str], name: str, sex: str, charset: str | None) -> Patient:
    birth = _random_date(rng, date(1935, 1, 1), date(2015, 12, 31))
    return Patient(_new_patient_id(rng, used_ids), name, birth, sex, charset)


def _new_study(rng: random.Random, seed: int, index: int, patient: Patient, protocol: Protocol,
               used_folders: set[str]) -> Study:
    study_date = _random_date(rng, _FIRST_DATE, _LAST_DATE)
    folder = f"{_folder_name(patient.patient_id)}/{_da(study_date)}_{_folder_name(protocol.description)}"
    candidate, n = folder, 2
    while candidate in used_folders:
        candidate, n = f"{folder} ({n})", n + 1
    used_folders.add(candidate)
    return Study(
        patient=patient,
        uid=_uid(seed, "study", index),
        study_date=study_date,
        study_seconds=rng.randrange(7 * 3600, 19 * 3600),
        description=protocol.description,
        body_part=protocol.body_part,
        code=protocol.code,
        accession=f"A{rng.randrange(10**9):09d}",
        study_id=str(rng.randrange(1, 100_000)),
        institution=rng.choice(_INSTITUTIONS),
        referring=rng.choice(_PHYSICIANS),
        folder=candidate,
    )


def _series_numbers(rng: random.Random, count: int) -> list[int]:
    """Series numbers unique within a study: 1, 2, 3… with now and then a reformat-style 401."""
    return [position + 1 if rng.random() < 0.85 else 100 * (position + 1) + 1 for position in range(count)]


def _pick_protocol(rng: random.Random) -> Protocol:
    protocols, weights = zip(*PROTOCOLS, strict=True)
    return rng.choices(protocols, weights)[0]


def _random_studies(rng: random.Random, seed: int) -> Iterator[tuple[Study, list[tuple[str, str, int]]]]:
    """Endless studies of random patients, each with a random non-empty subset of its protocol's series."""
    used_ids: set[str] = set()
    study_index = 0
    while True:
        name, charset = _random_name(rng)
        patient = _new_patient(rng, used_ids, name, rng.choice("MFMFO"), charset)
        used_folders: set[str] = set()
        for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
            protocol = _pick_protocol(rng)
            chosen = [series for series in protocol.series if rng.random() < 0.75] or [protocol.series[-1]]
            yield _new_study(rng, seed, study_index, patient, protocol, used_folders), chosen
            study_index += 1


def _make_series(seed: int, index: int, study: Study, number: int, modality: str, description: str,
                 size: int) -> Series:
    return Series(
        index=index, seed=seed, study=study, uid=_uid(seed, "series", index), has_uid=True,
        number=number, description=description, modality=modality, size=size,
        folder=f"{study.folder}/{number}_{_folder_name(description)}",
    )


def _plan_bulk(rng: random.Random, seed: int, files: int, series_size: int) -> list[Series]:
    """Series of ``series_size`` files (the last one shorter) across as many random patients as needed."""
    count = math.ceil(files / series_size)
    plan: list[Series] = []
    studies = _random_studies(rng, seed)
    while len(plan) < count:
        study, chosen = next(studies)
        for number, (modality, description, _) in zip(_series_numbers(rng, len(chosen)), chosen, strict=True):
            if len(plan) == count:
                break
            size = min(series_size, files - len(plan) * series_size)
            plan.append(_make_series(seed, len(plan), study, number, modality, description, size))
    return plan


def _allocate(typical: list[int], files: int) -> list[int]:
    """Split ``files`` among series in proportion to their typical sizes, each at least 1 when possible."""
    if files < len(typical):
        return [1] * files + [0] * (len(typical) - files)
    spare = files - len(typical)
    weights = [size - 1 for size in typical]
    total = sum(weights) or 1
    shares = [spare * weight / total for weight in weights]
    sizes = [1 + int(share) for share in shares]
    by_remainder = sorted(range(len(typical)), key=lambda i: (int(shares[i]) - shares[i], i))
    for i in by_remainder[: files - sum(sizes)]:
        sizes[i] += 1
    return sizes


def _plan_sample(rng: random.Random, seed: int, files: int) -> list[Series]:
    """The fixed sample patients, one to three studies each, series sized like real ones, ``files`` in all."""
    used_ids: set[str] = set()
    drafts: list[tuple[Study, int, str, str, int]] = []
    study_index = 0
    for name, sex, charset in SAMPLE_PATIENTS:
        patient = _new_patient(rng, used_ids, name, sex, charset)
        used_folders: set[str] = set()
        for _ in range(rng.randint(1, 3)):
            protocol = _pick_protocol(rng)
            study = _new_study(rng, seed, study_index, patient, protocol, used_folders)
            study_index += 1
            numbers = _series_numbers(rng, len(protocol.series))
            for number, (modality, description, typical) in zip(numbers, protocol.series, strict=True):
                drafts.append((study, number, modality, description, typical))
    sizes = _allocate([draft[-1] for draft in drafts], files)
    plan: list[Series] = []
    for (study, number, modality, description, _), size in zip(drafts, sizes, strict=True):
        if size:
            plan.append(_make_series(seed, len(plan), study, number, modality, description, size))
    return plan


def plan_corpus(files: int, series_size: int = DEFAULT_SERIES_SIZE, seed: int = 0, sample: bool = False,
                without_series_uid_fraction: float = 0.0) -> list[Series]:
    """The series a corpus of ``files`` files is made of, without writing anything.

    ``without_series_uid_fraction`` of the series (at least one when above 0) lose SeriesInstanceUID.
    """
    if files < 1 or series_size < 1:
        raise ValueError("files and series_size must be at least 1")
    if not 0.0 <= without_series_uid_fraction <= 1.0:
        raise ValueError("without_series_uid_fraction must be between 0 and 1")
    rng = random.Random(seed)
    plan = _plan_sample(rng, seed, files) if sample else _plan_bulk(rng, seed, files, series_size)
    if without_series_uid_fraction > 0:
        count = min(len(plan), max(1, round(without_series_uid_fraction * len(plan))))
        for index in random.Random(f"{seed}:without-series-uid").sample(range(len(plan)), count):
            plan[index] = replace(plan[index], has_uid=False)
    return plan


# --- one series' header ---------------------------------------------------------------------------


def _code_item(value: str, meaning: str, scheme: str = "99ACME") -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _reference_item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


class _Geometry(NamedTuple):
    orientation: tuple[float, ...]
    origin: tuple[float, float, float]
    normal: tuple[float, float, float]
    spacing: float  # between slices, mm
    pixel_spacing: float
    thickness: float


def _geometry(series: Series, rng: random.Random) -> _Geometry:
    """Image plane of a series: axial stacks, sagittal or coronal for MR/reformats, one plane for CR/US."""
    description = series.description.lower()
    if "sag" in description:
        orientation, normal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0), (1.0, 0.0, 0.0)
    elif "cor" in description:
        orientation, normal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), (0.0, 1.0, 0.0)
    else:
        orientation, normal = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.0, 0.0, 1.0)
    pixel_spacing = {"CT": 0.7, "MR": 0.45, "CR": 0.15, "US": 0.2, "PT": 1.4}[series.modality]
    pixel_spacing = round(pixel_spacing * rng.uniform(0.9, 1.1), 4)
    thickness = rng.choice({"CT": (0.75, 1.0, 3.0, 5.0), "MR": (1.0, 3.0, 4.0), "PT": (3.0, 4.0)}.get(
        series.modality, (1.0,)))
    half = pixel_spacing * ROWS / 2
    origin = (-half, -half - rng.uniform(0, 40), rng.uniform(-300.0, 100.0))
    return _Geometry(orientation, origin, normal, -thickness, pixel_spacing, thickness)


def _varying_values(series: Series, geometry: _Geometry) -> dict[int, list[str]]:
    """Per-instance values of the elements patched in place, by tag."""
    digits = max(6, len(str(series.size)) + 1)
    first = 10 ** (digits - 1)
    sop_uids = [f"{series.uid}.{first + i}" for i in range(series.size)]
    start = (series.study.study_seconds + 60 * (series.number % 100)) * 1_000_000
    positions, locations = [], []
    for i in range(series.size):
        offset = i * geometry.spacing
        point = [geometry.origin[axis] + offset * geometry.normal[axis] for axis in range(3)]
        positions.append("\\".join(f"{value:.4f}" for value in point))
        locations.append(f"{sum(p * n for p, n in zip(point, geometry.normal, strict=True)):.4f}")
    return {
        0x00020003: sop_uids,
        0x00080018: sop_uids,
        0x00080033: [_tm(start + i * 250_000) for i in range(series.size)],
        0x00200013: [str(i + 1) for i in range(series.size)],
        0x00200032: positions,
        0x00201041: locations,
    }


def _character_set(preferred: str | None, texts: list[str]) -> str | None:
    """The SpecificCharacterSet for ``texts``: the preferred one, widened until it can encode them all."""
    joined = "".join(texts)
    if preferred is None and joined.isascii():
        return None
    if preferred in (None, "ISO_IR 100"):
        try:
            joined.encode("latin-1")
            return "ISO_IR 100"
        except UnicodeEncodeError:
            pass
    return "ISO_IR 192"


def _add_ct(ds: Dataset, rng: random.Random, geometry: _Geometry, series: Series) -> None:
    kernel = re.search(r"\b[A-Z][a-z]?\d{2}[a-z]?\b", series.description)
    ds.KVP = rng.choice(("100", "120", "140"))
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = f"{geometry.pixel_spacing * ROWS:.1f}"
    ds.DistanceSourceToDetector = "1085.6"
    ds.DistanceSourceToPatient = "595"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = f"{rng.uniform(120, 190):.1f}"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = rng.randrange(80, 400)
    ds.Exposure = rng.randrange(40, 200)
    ds.FilterType = "FLAT"
    ds.GeneratorPower = rng.randrange(20, 80) * 1000
    ds.FocalSpots = "1.2"
    ds.ConvolutionKernel = kernel.group() if kernel else "Br40"
    ds.RevolutionTime = 0.5
    ds.SingleCollimationWidth = 0.6
    ds.TotalCollimationWidth = 38.4
    ds.TableSpeed = 46.0
    ds.SpiralPitchFactor = 1.2
    ds.CTDIvol = round(rng.uniform(2, 30), 2)
    ds.IrradiationEventUID = _uid(series.seed, "irradiation", series.index)


def _add_mr(ds: Dataset, rng: random.Random, geometry: _Geometry) -> None:
    ds.ScanningSequence = ["SE"]
    ds.SequenceVariant = ["SK", "SP"]
    ds.ScanOptions = ["PFP", "FS"]
    ds.MRAcquisitionType = "2D"
    ds.SequenceName = "*tse2d1_15"
    ds.RepetitionTime = str(rng.choice((450, 600, 3000, 4000, 9000)))
    ds.EchoTime = str(rng.choice((9, 12, 85, 98, 110)))
    ds.NumberOfAverages = "1"
    ds.ImagingFrequency = "123.2"
    ds.ImagedNucleus = "1H"
    ds.EchoNumbers = "1"
    ds.MagneticFieldStrength = "3"
    ds.SpacingBetweenSlices = f"{geometry.thickness * 1.1:.2f}"
    ds.NumberOfPhaseEncodingSteps = "256"
    ds.EchoTrainLength = str(rng.choice((1, 15, 17)))
    ds.PercentSampling = "100"
    ds.PercentPhaseFieldOfView = "87.5"
    ds.PixelBandwidth = "200"
    ds.TransmitCoilName = "Body"
    ds.ReceiveCoilName = rng.choice(("Head_32", "Knee_15", "Spine_24"))
    ds.AcquisitionMatrix = [0, 320, 256, 0]
    ds.InPlanePhaseEncodingDirection = "ROW"
    ds.FlipAngle = str(rng.choice((90, 150, 160)))
    ds.VariableFlipAngleFlag = "N"
    ds.SAR = f"{rng.uniform(0.1, 3.0):.3f}"
    ds.dBdt = "0"


def _add_cr(ds: Dataset, rng: random.Random, geometry: _Geometry, view: str) -> None:
    ds.KVP = rng.choice(("70", "90", "125"))
    ds.DistanceSourceToDetector = "1800"
    ds.DistanceSourceToPatient = "1650"
    ds.ExposureTime = str(rng.randrange(5, 40))
    ds.XRayTubeCurrent = rng.randrange(100, 500)
    ds.Exposure = rng.randrange(1, 10)
    ds.ImagerPixelSpacing = [f"{geometry.pixel_spacing}", f"{geometry.pixel_spacing}"]
    ds.ViewPosition = view
    ds.Sensitivity = "200"
    ds.FieldOfViewShape = "RECTANGLE"
    ds.FieldOfViewDimensions = [430, 430]
    ds.Grid = ["FOCUSED", "RECIPROCATING"]
    ds.FocalSpots = "1.2"
    ds.AcquisitionDeviceProcessingDescription = ds.BodyPartExamined
    ds.RelativeXRayExposure = rng.randrange(100, 900)
    ds.PatientOrientation = ["L", "F"]


def _add_us(ds: Dataset, rng: random.Random) -> None:
    ds.TransducerData = ["C5-1", "", ""]
    ds.TransducerType = "CURVED LINEAR"
    ds.ProcessingFunction = "ABDOMEN"
    ds.MechanicalIndex = f"{rng.uniform(0.5, 1.4):.2f}"
    ds.BoneThermalIndex = f"{rng.uniform(0.1, 1.0):.2f}"
    ds.CranialThermalIndex = f"{rng.uniform(0.1, 1.0):.2f}"
    ds.SoftTissueThermalIndex = f"{rng.uniform(0.1, 1.0):.2f}"
    ds.DepthOfScanField = rng.randrange(80, 240)


def _add_pt(ds: Dataset, rng: random.Random, series: Series, attenuation_corrected: bool) -> None:
    ds.Units = "BQML"
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["WHOLE BODY", "IMAGE"]
    ds.DecayCorrection = "START"
    ds.CorrectedImage = ["DECY", "ATTN", "SCAT"] if attenuation_corrected else ["DECY"]
    ds.ReconstructionMethod = "OSEM 3i21s"
    ds.RandomsCorrectionMethod = "DLYD"
    ds.AttenuationCorrectionMethod = "CT" if attenuation_corrected else "NONE"
    ds.ScatterCorrectionMethod = "Model-based"
    ds.DecayFactor = "1.04"
    ds.DoseCalibrationFactor = "1"
    ds.FrameReferenceTime = "0"
    ds.ActualFrameDuration = 120000
    ds.NumberOfSlices = series.size
    radiopharmaceutical = Dataset()
    radiopharmaceutical.Radiopharmaceutical = "Fluorodeoxyglucose"
    radiopharmaceutical.RadiopharmaceuticalStartTime = _tm(series.study.study_seconds * 1_000_000 - 3_600_000_000)
    radiopharmaceutical.RadionuclideTotalDose = f"{rng.uniform(180e6, 350e6):.0f}"
    radiopharmaceutical.RadionuclideHalfLife = "6586.2"
    radiopharmaceutical.RadionuclidePositronFraction = "0.97"
    radiopharmaceutical.RadionuclideCodeSequence = [_code_item("C-111A1", "^18^Fluorine", "SRT")]
    radiopharmaceutical.RadiopharmaceuticalCodeSequence = [_code_item("C-B1031", "Fluorodeoxyglucose F^18^", "SRT")]
    ds.RadiopharmaceuticalInformationSequence = [radiopharmaceutical]


def build_dataset(series: Series, extra: Dataset | None = None) -> tuple[Dataset, dict[int, list[str]]]:
    """The dataset (File Meta included, no PixelData) shared by a series' files, and its varying values.

    The elements patched per instance hold their widest value. ``extra`` elements are added as they
    are (used for the oversized-header file).
    """
    rng = random.Random(f"{series.seed}:{series.index}:header")
    study, patient, modality = series.study, series.study.patient, series.modality
    geometry = _geometry(series, rng)
    varying = _varying_values(series, geometry)
    manufacturer, model, station = _STATIONS["PT" if study.code == "PTWB" else modality]
    series_seconds = study.study_seconds + 60 * (series.number % 100)
    localizer = series.description.startswith("Topogram")
    derived = any(word in series.description for word in ("MPR", "Coronal"))
    sop_class = _SOP_CLASSES[modality]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "ORTHANC_NAS_01"
    meta.SourceApplicationEntityTitle = station

    ds = Dataset()
    ds.file_meta = meta
    if localizer:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    elif derived:
        ds.ImageType = ["DERIVED", "SECONDARY", "MPR"]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if modality in ("CT", "PT") else "OTHER"]
    ds.InstanceCreationDate = _da(study.study_date)
    ds.InstanceCreationTime = _tm(series_seconds * 1_000_000)[:6]
    ds.SOPClassUID = sop_class
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = _da(study.study_date)
    ds.StudyTime = _tm(study.study_seconds * 1_000_000)[:6]
    ds.SeriesTime = ds.AcquisitionTime = _tm(series_seconds * 1_000_000)[:6]
    ds.AccessionNumber = study.accession
    ds.Modality = modality
    ds.Manufacturer = manufacturer
    ds.InstitutionName, ds.InstitutionAddress = study.institution
    ds.ReferringPhysicianName = study.referring
    ds.TimezoneOffsetFromUTC = "+0100"
    ds.StationName = station
    ds.StudyDescription = study.description
    ds.ProcedureCodeSequence = [_code_item(study.code, study.description)]
    ds.SeriesDescription = series.description
    ds.InstitutionalDepartmentName = "Radiology"
    ds.PhysiciansOfRecord = study.referring
    ds.PerformingPhysicianName = rng.choice(_PHYSICIANS)
    ds.NameOfPhysiciansReadingStudy = rng.choice(_PHYSICIANS)
    ds.OperatorsName = rng.choice(("TECH^ONE", "Meyer^Lena", "ROSSI^GIULIA"))
    ds.AdmittingDiagnosesDescription = rng.choice(("Follow-up", "Suspicion of fracture", "Douleur", "Staging"))
    ds.ManufacturerModelName = model
    ds.ReferencedStudySequence = [_reference_item("1.2.840.10008.3.1.2.3.1", study.uid)]
    ds.ReferencedPerformedProcedureStepSequence = [
        _reference_item("1.2.840.10008.3.1.2.3.3", _uid(series.seed, "mpps", study.uid))]
    ds.ReferencedImageSequence = [
        _reference_item(sop_class, _uid(series.seed, "localizer", study.uid, k)) for k in range(rng.randint(1, 3))]
    ds.AnatomicRegionSequence = [_code_item(f"BP-{study.body_part}", study.body_part.title())]

    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "HOSP"
    ds.TypeOfPatientID = "TEXT"
    ds.PatientBirthDate = _da(patient.birth_date)
    ds.PatientSex = patient.sex
    other_id = Dataset()
    other_id.PatientID = f"X{patient.patient_id[-6:]}"
    other_id.IssuerOfPatientID = "REGIONAL"
    other_id.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = [other_id]
    ds.PatientAge = _age(patient.birth_date, study.study_date)
    ds.PatientSize = f"{rng.uniform(1.5, 1.95):.2f}"
    ds.PatientWeight = f"{rng.uniform(45, 110):.1f}"
    ds.MedicalAlerts = "None"
    ds.Allergies = rng.choice(("None known", "Iodine contrast", "Latex"))
    ds.PregnancyStatus = 4
    ds.PatientComments = ""
    ds.PatientIdentityRemoved = "NO"

    ds.ContrastBolusAgent = "Iomeprol 350" if "KM" in study.description or "+C" in series.description else ""
    ds.BodyPartExamined = study.body_part
    ds.SliceThickness = f"{geometry.thickness}"
    ds.DeviceSerialNumber = str(10_000 + rng.randrange(90_000))
    ds.SoftwareVersions = ["VB20A", "4.2.1"]
    ds.ProtocolName = f"{study.description} / {series.description}"
    ds.DateOfLastCalibration = _da(study.study_date - timedelta(days=rng.randrange(1, 60)))
    ds.TimeOfLastCalibration = "063000"
    ds.PatientPosition = "FFS" if study.body_part == "KNEE" else "HFS"

    ds.StudyInstanceUID = study.uid
    if series.has_uid:
        ds.SeriesInstanceUID = series.uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = series.number
    ds.AcquisitionNumber = 1
    ds.ImageOrientationPatient = [f"{value:g}" for value in geometry.orientation]
    ds.FrameOfReferenceUID = _uid(series.seed, "frame", study.uid)
    ds.PositionReferenceIndicator = ""
    ds.ImagesInAcquisition = series.size
    ds.ImageComments = ""
    ds.Laterality = "R" if "droit" in study.description else ("L" if "links" in study.description else "")

    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ROWS, COLUMNS
    ds.PixelSpacing = [f"{geometry.pixel_spacing}", f"{geometry.pixel_spacing}"]
    ds.BitsAllocated = 16
    ds.BitsStored = 12 if modality in ("CT", "MR", "CR") else 16
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.SmallestImagePixelValue = 0
    ds.LargestImagePixelValue = 2**ds.BitsStored - 1
    ds.WindowCenter, ds.WindowWidth = {"CT": ("40", "400"), "PT": ("5000", "10000")}.get(modality, ("600", "1200"))
    ds.WindowCenterWidthExplanation = "DEFAULT"
    ds.RescaleIntercept = "-1024" if modality == "CT" else "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU" if modality == "CT" else "US"
    ds.LossyImageCompression = "00"

    ds.RequestingPhysician = study.referring
    ds.RequestingService = "Emergency" if rng.random() < 0.3 else "Outpatients"
    ds.RequestedProcedureDescription = study.description
    ds.PerformedStationAETitle = station
    ds.PerformedProcedureStepStartDate = _da(study.study_date)
    ds.PerformedProcedureStepStartTime = ds.StudyTime
    ds.PerformedProcedureStepID = f"PPS{study.study_id}"
    ds.PerformedProcedureStepDescription = study.description
    request = Dataset()
    request.RequestedProcedureID = f"RP{study.accession[-6:]}"
    request.ScheduledProcedureStepID = f"SPS{study.accession[-6:]}"
    request.ScheduledProcedureStepDescription = study.description
    request.ScheduledProtocolCodeSequence = [_code_item(study.code, study.description)]
    ds.RequestAttributesSequence = [request]

    csa = ds.private_block(0x0029, "ACME IMAGE HEADER 1.0", create=True)
    csa.add_new(0x08, "CS", "IMAGE NUM 4")
    csa.add_new(0x09, "LO", "20190401")
    csa.add_new(0x10, "OB", rng.randbytes(rng.randrange(512, 6144)))
    csa.add_new(0x18, "CS", "SERIES NUM 4")
    csa.add_new(0x19, "LO", "20190401")
    csa.add_new(0x20, "OB", rng.randbytes(rng.randrange(256, 3072)))
    medcom = ds.private_block(0x0029, "ACME MEDCOM HEADER", create=True)
    medcom.add_new(0x31, "LO", "4.2.1.0")
    medcom.add_new(0x34, "CS", "IMAGE ARCHIVED")

    if modality == "CT":
        _add_ct(ds, rng, geometry, series)
    elif modality == "MR":
        _add_mr(ds, rng, geometry)
    elif modality == "CR":
        _add_cr(ds, rng, geometry, {"PA": "PA", "AP": "AP", "LAT": "LL"}.get(series.description.split()[0], ""))
    elif modality == "US":
        _add_us(ds, rng)
    else:
        _add_pt(ds, rng, series, "NAC" not in series.description)

    if extra is not None:
        ds.update(extra)
    for tag, values in varying.items():
        widest = max(values, key=len)
        setattr(meta if tag >> 16 == 0x0002 else ds, keyword_for_tag(tag), widest)

    texts = [str(elem.value) for elem in ds.iterall() if elem.VR in ("PN", "LO", "SH", "LT", "ST", "UT", "UC")]
    charset = _character_set(patient.charset, texts)
    if charset:
        ds.SpecificCharacterSet = charset
    return ds, varying


def encode_header(ds: Dataset) -> bytes:
    """``ds`` as a DICOM Part 10 file (preamble, File Meta, dataset) followed by a PixelData element header."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue() + _PIXEL_DATA_HEADER


def series_files(series: Series) -> Iterator[tuple[str, bytes]]:
    """(relative path, header bytes up to the PixelData value) for each instance of ``series``."""
    ds, varying = build_dataset(series)
    header = bytearray(encode_header(ds))
    parsed = dcmread(io.BytesIO(header), stop_before_pixels=True)
    slots = []
    for tag, values in varying.items():
        raw = (parsed.file_meta if tag >> 16 == 0x0002 else parsed).get_item(tag)
        pad = b"\0" if raw.VR == "UI" else b" "
        slots.append((raw.value_tell, raw.length, [value.encode("ascii").ljust(raw.length, pad) for value in values]))
    for i in range(series.size):
        for offset, length, values in slots:
            header[offset:offset + length] = values[i]
        yield f"{series.folder}/IM{i + 1:05d}.dcm", bytes(header)


def _write_sparse(path: str, header: bytes, size: int) -> int:
    """Write ``header`` then extend the file to ``size`` bytes with a hole; return the bytes on disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(header)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, size)
        return os.fstat(fd).st_blocks * 512
    finally:
        os.close(fd)


def _write_series(job: tuple[str, Series]) -> tuple[int, int, int]:
    """Write one series; return (files, apparent bytes, bytes on disk)."""
    outdir, series = job
    os.makedirs(os.path.join(outdir, series.folder), exist_ok=True)
    files = apparent = disk = 0
    for relative, header in series_files(series):
        size = len(header) + PIXEL_BYTES
        disk += _write_sparse(os.path.join(outdir, relative), header, size)
        files += 1
        apparent += size
    return files, apparent, disk


def write_corpus(outdir: str | os.PathLike[str], files: int | None = None, series_size: int = DEFAULT_SERIES_SIZE,
                 seed: int = 0, sample: bool = False, without_series_uid_fraction: float = 0.0,
                 workers: int | None = None) -> dict:
    """Write a corpus under ``outdir`` and return its summary.

    ``files`` defaults to 300 in sample mode and is required otherwise. ``sample`` writes the eight
    fixed sample patients with realistically sized series instead of uniform ``series_size`` ones.
    ``workers`` processes write series in parallel (default: one per CPU; 1 writes in this process).
    In sample mode, when ``files`` is below the number of planned series (about 50), the last series
    are left out. Files of the same names are overwritten; anything else in ``outdir`` is left alone.

    The summary: files, series (distinct series groups by the product's rule: SeriesInstanceUID, else
    StudyInstanceUID + SeriesNumber), series_without_uid, files_without_series_uid, studies, patients,
    apparent_bytes, disk_bytes, seconds, files_per_second.
    """
    if files is None:
        if not sample:
            raise ValueError("files is required unless sample is true")
        files = DEFAULT_SAMPLE_FILES
    started = time.perf_counter()
    plan = plan_corpus(files, series_size, seed, sample, without_series_uid_fraction)
    root = os.fspath(outdir)
    os.makedirs(root, exist_ok=True)
    jobs = [(root, series) for series in plan]
    workers = max(1, min(workers or os.cpu_count() or 1, len(plan)))
    if workers == 1:
        results = [_write_series(job) for job in jobs]
    else:
        with multiprocessing.Pool(workers) as pool:
            results = list(pool.imap_unordered(_write_series, jobs, chunksize=1))
    seconds = time.perf_counter() - started
    written = sum(result[0] for result in results)
    return {
        "outdir": root,
        "files": written,
        "series": len({series.group_key for series in plan}),
        "series_without_uid": sum(not series.has_uid for series in plan),
        "files_without_series_uid": sum(series.size for series in plan if not series.has_uid),
        "studies": len({series.study.uid for series in plan}),
        "patients": len({series.study.patient.patient_id for series in plan}),
        "apparent_bytes": sum(result[1] for result in results),
        "disk_bytes": sum(result[2] for result in results),
        "seconds": round(seconds, 3),
        "files_per_second": round(written / seconds, 1) if seconds else None,
    }


# --- broken inputs ----------------------------------------------------------------------------------


def _standalone_series(name: str, patient_id: str, description: str) -> Series:
    """A one-instance CT series of its own patient, for the files of ``write_broken_files``."""
    patient = Patient(patient_id, name, date(1970, 1, 1), "O", None)
    study = Study(
        patient=patient, uid=_uid("standalone", patient_id, "study"), study_date=date(2024, 6, 1),
        study_seconds=9 * 3600, description=description, body_part="CHEST", code="CTCHE",
        accession="A000000001", study_id="1", institution=_INSTITUTIONS[0], referring=_PHYSICIANS[0],
        folder="",
    )
    return Series(index=0, seed=0, study=study, uid=_uid("standalone", patient_id, "series"), has_uid=True,
                  number=1, description="Thorax 1.0 B70f", modality="CT", size=1, folder="")


def write_broken_files(outdir: str | os.PathLike[str]) -> dict[str, str]:
    """Write non-DICOM and damaged inputs for error-path tests; return {file name: 'error' or 'ok'}.

    - ``empty.dcm``: zero bytes.
    - ``notes.txt``: a plain text file.
    - ``error_page.dcm``: an HTML page saved under a DICOM name.
    - ``truncated_header.dcm``: a DICOM file cut inside PatientName; pydicom reads what comes before
      without raising, so a reader must notice that the identifying attributes are missing.
    - ``preamble_only.dcm``: the 128-byte preamble and ``DICM``, nothing else (pydicom returns an
      empty dataset without raising).
    - ``big_header.dcm``: a valid file whose header runs past 64 KiB (an 80 KiB private OB element in
      group 0019, before group 0020), so a reader of a fixed prefix must read more.
    """
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty.dcm").write_bytes(b"")
    (root / "notes.txt").write_text("Exported from the PACS on 2024-06-01.\nDo not delete this folder.\n")
    (root / "error_page.dcm").write_text(
        "<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
        "<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n")
    ds, _ = build_dataset(_standalone_series("TRUNCATED^HEADER", "BROKEN001", "CT THORAX"))
    header = encode_header(ds)
    cut = dcmread(io.BytesIO(header), stop_before_pixels=True).get_item(0x00100010).value_tell + 4
    (root / "truncated_header.dcm").write_bytes(header[:cut])
    (root / "preamble_only.dcm").write_bytes(b"\0" * 128 + b"DICM")
    big = Dataset()
    block = big.private_block(0x0019, "ACME RAW DATA 1.0", create=True)
    block.add_new(0x10, "OB", random.Random("big-header").randbytes(BIG_HEADER_PRIVATE_BYTES))
    ds, _ = build_dataset(_standalone_series("BIG^HEADER", "BIGHDR001", "CT THORAX big header"), extra=big)
    header = encode_header(ds)
    _write_sparse(str(root / "big_header.dcm"), header, len(header) + PIXEL_BYTES)
    return {
        "empty.dcm": "error",
        "notes.txt": "error",
        "error_page.dcm": "error",
        "truncated_header.dcm": "error",
        "preamble_only.dcm": "error",
        "big_header.dcm": "ok",
    }


# --- command line -----------------------------------------------------------------------------------


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: write a corpus (and optionally the broken files) and print its summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", help="folder to write into (created if missing)")
    parser.add_argument("--files", type=int, help=f"number of files (default {DEFAULT_SAMPLE_FILES} with --sample)")
    parser.add_argument("--series-size", type=int, default=DEFAULT_SERIES_SIZE,
                        help=f"files per series, ignored with --sample (default {DEFAULT_SERIES_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes (default 0)")
    parser.add_argument("--sample", action="store_true",
                        help="eight fixed patients, realistic series sizes, for `make run`")
    parser.add_argument("--without-series-uid-fraction", type=float, default=0.0, metavar="F",
                        help="fraction of series written without SeriesInstanceUID (default 0)")
    parser.add_argument("--workers", type=int, help="writer processes (default: one per CPU)")
    parser.add_argument("--broken", action="store_true", help="also write broken inputs into OUTDIR/_broken")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    if args.files is None and not args.sample:
        parser.error("--files is required without --sample")
    try:
        summary = write_corpus(args.outdir, args.files, args.series_size, args.seed, args.sample,
                               args.without_series_uid_fraction, args.workers)
    except ValueError as error:
        parser.error(str(error))
    if args.broken:
        summary["broken"] = write_broken_files(Path(args.outdir) / "_broken")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    files = summary["files"]
    print(f"{files} files, {summary['series']} series ({summary['series_without_uid']} without "
          f"SeriesInstanceUID), {summary['studies']} studies, {summary['patients']} patients in {args.outdir}")
    print(f"{summary['seconds']:.2f} s, {summary['files_per_second']:.0f} files/s")
    print(f"apparent {_size(summary['apparent_bytes'])} ({_size(summary['apparent_bytes'] / files)}/file), "
          f"on disk {_size(summary['disk_bytes'])} ({_size(summary['disk_bytes'] / files)}/file)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
