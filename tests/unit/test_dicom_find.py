"""C-FIND matching without a network, on both engines (`db_engine`: SQLite and PostgreSQL): the node's SQL
(`dicom.query`) against answers computed from the corpus by the rules of PS3.4 C.2.2.2."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from tests.support.qr_corpus import LEVEL_KEYS, QUERIES, expected, write_qr_corpus
from tests.support.series import record, write

from orthanc_nas import store_dialects
from orthanc_nas.catalog import Catalog
from orthanc_nas.dicom.query import answer, parse, rows, sql
from orthanc_nas.indexer import Indexer
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.status import IndexStatus


def identifier(level: str, **keys) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def find(conn, level: str, *, patient_root: bool = False, **keys) -> list[Dataset]:
    query = parse(identifier(level, **keys), patient_root=patient_root)
    return [answer(query, row, "NAS") for row in rows(conn, query)]


@pytest.fixture
def corpus(tmp_path, db_engine):
    root, data = tmp_path / "nas", str(tmp_path / "data")
    corpus_rows = write_qr_corpus(root)
    catalog = Catalog(data)
    source = LocalSource(str(root))
    Indexer(catalog, IndexStatus(data), lambda: source, workers=2, parse_processes=0).run()
    return catalog.reader(), corpus_rows


def test_every_matching_rule_answers_as_the_standard_says(corpus, db_engine):
    conn, corpus_rows = corpus
    assert store_dialects.dialect(conn).name == db_engine
    for model, level, keys in QUERIES:
        unique = LEVEL_KEYS[level]
        answers = find(conn, level, patient_root=model == "-P", **{unique: "", **keys})
        assert {str(a[unique].value) for a in answers} == expected(corpus_rows, level, keys), (level, keys)


def test_computed_keys_and_the_order_of_instances(corpus):
    conn, corpus_rows = corpus
    study = next(r for r in corpus_rows if r["series"] == "S3.1")["StudyInstanceUID"]
    [found] = find(conn, "STUDY", StudyInstanceUID=study, ModalitiesInStudy="", NumberOfStudyRelatedSeries="",
                   NumberOfStudyRelatedInstances="", PatientName="")
    assert list(found.ModalitiesInStudy) == ["CT", "MR"]
    files = [r for r in corpus_rows if r["StudyInstanceUID"] == study]
    assert (found.NumberOfStudyRelatedSeries, found.NumberOfStudyRelatedInstances) == \
        (len({r["SeriesInstanceUID"] for r in files}), len(files))
    assert str(found.PatientName) == files[0]["PatientName"]
    [patient] = find(conn, "PATIENT", patient_root=True, PatientID="PAT2", NumberOfPatientRelatedStudies="",
                     NumberOfPatientRelatedInstances="")
    assert (patient.NumberOfPatientRelatedStudies, patient.NumberOfPatientRelatedInstances) == \
        (len({r["StudyInstanceUID"] for r in corpus_rows if r["PatientID"] == "PAT2"}),
         len([r for r in corpus_rows if r["PatientID"] == "PAT2"]))
    series = files[0]["SeriesInstanceUID"]
    instances = find(conn, "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=series, SOPInstanceUID="",
                     InstanceNumber="")
    assert [a.InstanceNumber for a in instances] == sorted(r["InstanceNumber"] for r in files
                                                           if r["SeriesInstanceUID"] == series)


@pytest.fixture
def odd_names(tmp_path, db_engine):
    """Names holding the wild cards of SQL (`%`, `_`) and of SQLite's GLOB (`[`), which must stay literal."""
    catalog = Catalog(str(tmp_path))
    names = ["A_B%C^X", "AXBYC^X", "A[1]^Y", "a1^y"]
    write(catalog, [(f"s{n}/1", record(PatientID=f"P{n}", PatientName=name, StudyInstanceUID=f"1.{n}",
                                       SeriesInstanceUID=f"2.{n}", SOPInstanceUID=f"3.{n}", StudyTime=time))
                    for n, (name, time) in enumerate(zip(names, ["0930", "10:15:00", "101500.5", None],
                                                         strict=True))])
    return catalog.reader()


@pytest.mark.parametrize("keys, names", [
    ({"PatientName": "A_B*"}, {"A_B%C^X"}),
    ({"PatientName": "a_b%c^x"}, {"A_B%C^X"}),
    ({"PatientName": "A?B?C*"}, {"A_B%C^X", "AXBYC^X"}),
    ({"PatientName": "*%*"}, {"A_B%C^X"}),
    ({"PatientName": "A[1]*"}, {"A[1]^Y"}),
    ({"PatientName": "A?1?^Y"}, {"A[1]^Y"}),
    ({"StudyTime": "1000-"}, {"AXBYC^X", "A[1]^Y"}),  # 10:15:00 (the legacy form) and 101500.5
    ({"StudyTime": "-101500"}, {"A_B%C^X", "AXBYC^X"}),
    ({"StudyTime": "101500.5"}, {"A[1]^Y"}),
])
def test_wild_cards_of_sql_are_plain_characters_and_times_compare_as_times(odd_names, keys, names):
    answers = find(odd_names, "STUDY", StudyInstanceUID="", **{"PatientName": "", **keys})
    assert {str(a.PatientName) for a in answers} == names


def test_the_sql_of_each_engine_is_its_own(odd_names):
    query = parse(identifier("STUDY", PatientName="A_B*", StudyTime="1000-", ModalitiesInStudy=""),
                  patient_root=False)
    text, args = sql(query, store_dialects.dialect(odd_names))
    if store_dialects.dialect(odd_names) is store_dialects.SQLITE_DIALECT:
        assert "GLOB" in text and "nas_tm(" in text and "group_concat(" in text and "a_b*" in args
    else:
        assert "LIKE" in text and "nas_" not in text and "string_agg(" in text and "a\\_b%" in args
