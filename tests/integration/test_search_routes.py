"""`GET /nas/search` and `GET /nas/series/{key}` through a real Orthanc, on a NAS folder of real DICOM files.

The corpus mixes character sets: files written here with pydicom in Latin-1,
UTF-8, Greek and Cyrillic, and pydicom's own `charset_files` (ISO 2022
Japanese and Korean, GB18030, Hebrew, Arabic…), names in upper and lower case,
files without SeriesInstanceUID, several studies per patient, and more than a
page of series.
"""

import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from pydicom.data import get_charset_files
from tests.support.dicom import write_dicom
from tests.support.orthanc import REPO, OrthancServer

pytestmark = pytest.mark.integration

ROOT = "1.2.826.0.1.3680043.2.1125.77"
FILLERS = 105  # one-file series, so that everything does not fit the default page of 100


# (folder, charset, patient, id, study n, date, study description, modality, [(series n, number, description, files)])
PATIENTS = [
    ("muller", "ISO_IR 100", "Müller^Hans", "DE-1001", [
        (1, "20240315", "CT Thorax ärztlich", "CT", [(1, 1, "Topogramm", 2), (2, 3, "Lunge axial", 3)]),
        (2, "20220110", "MRT Knie", "MR", [(1, 1, "T1 sagittal", 1)]),
    ]),
    ("muller-lower", "ISO_IR 100", "müller^anna", "de-1002", [
        (3, "20240315", "ct thorax", "CT", [(1, 1, "lunge", 1)]),
    ]),
    ("garcia", "ISO_IR 192", "García Márquez^José Luis", "ES-77", [
        (4, "20231201", "TC CRÁNEO", "CT", [(1, 2, "Axial cerebro", 2)]),
    ]),
    ("doe", None, "DOE^JOHN", "US-0042", [
        (5, "20240316", "CHEST", "CR", [(1, 1, "PA", 1)]),
        (6, "20240101", "ABDOMEN", "CT", [(1, 1, "Portal", 1)]),
    ]),
    ("greek", "ISO_IR 126", "Παπαδόπουλος^Γιώργος", "GR-5", [
        (7, "20210505", "Αξονική θώρακος", "CT", [(1, 1, "Σειρά", 1)]),
    ]),
    ("russian", "ISO_IR 144", "Иванов^Пётр", "RU-9", [
        (8, "20200202", "Рентген грудной клетки", "CR", [(1, 1, "Прямая", 1)]),
    ]),
]


def build_corpus(root: Path) -> None:
    for folder, charset, name, pid, studies in PATIENTS:
        for study, date, study_desc, modality, series in studies:
            for series_n, number, series_desc, files in series:
                for instance in range(files, 0, -1):
                    write_dicom(root / folder / f"st{study}" / f"se{series_n}" / f"{instance}.dcm",
                                charset=charset, PatientName=name, PatientID=pid, StudyInstanceUID=f"{ROOT}.{study}",
                                StudyDate=date, StudyDescription=study_desc, Modality=modality, SeriesNumber=number,
                                SeriesInstanceUID=f"{ROOT}.{study}.{series_n}", SeriesDescription=series_desc,
                                SOPInstanceUID=f"{ROOT}.{study}.{series_n}.{instance}", InstanceNumber=instance)
    no_uid = dict(PatientName="Lefèvre^Zoé", PatientID="FR-3", StudyInstanceUID=f"{ROOT}.9", StudyDate="20190909",
                  Modality="US", SeriesInstanceUID=None, StudyDescription=None, SeriesDescription=None)
    for instance in (1, 2):  # no SeriesInstanceUID: grouped by study + SeriesNumber 5
        write_dicom(root / "nouid" / f"{instance}.dcm", charset="ISO_IR 100", SeriesNumber=5,
                    SOPInstanceUID=f"{ROOT}.9.5.{instance}", InstanceNumber=instance, **no_uid)
    write_dicom(root / "nouid" / "other.dcm", charset="ISO_IR 100", SeriesNumber=6, SOPInstanceUID=f"{ROOT}.9.6.1",
                InstanceNumber=1, **no_uid)
    for n in range(FILLERS):
        write_dicom(root / "filler" / f"{n}.dcm", PatientName=f"FILLER^{n:03d}", PatientID=f"F{n:03d}",
                    StudyInstanceUID=f"{ROOT}.100.{n}", SeriesInstanceUID=f"{ROOT}.100.{n}.1", StudyDate="20000101",
                    Modality="OT", StudyDescription=None, SeriesDescription=None, SOPInstanceUID=f"{ROOT}.100.{n}.1.1")
    (root / "charset").mkdir()
    for charset_file in get_charset_files("chr*.dcm"):  # 13 series; the two chrSQEncoding files are no images
        shutil.copy(charset_file, root / "charset")


@pytest.fixture(scope="module")
def nas(tmp_path_factory):
    root = tmp_path_factory.mktemp("nas")
    build_corpus(root)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"),
                           nas={"Connection": {"Type": "local", "Path": str(root)}}).start()
    try:
        server.before_indexing = server.get("/nas/search", params={"q": "doe"})
        status = server.index()
        assert status["phase"] == "done", status
        server.nas_root = root
        yield server
    finally:
        server.stop()


def search(nas, **params) -> requests.Response:
    answer = nas.get("/nas/search", params=params)
    assert answer.status_code == 200, answer.text
    return answer


def names(nas, **params) -> list[str]:
    return [s["PatientName"] for s in search(nas, **params).json()]


def test_no_index_is_404_with_a_hint(nas):
    answer = nas.before_indexing
    assert answer.status_code == 404
    assert answer.json()["kind"] == "not_found" and "index" in answer.json()["hint"].lower()


@pytest.mark.parametrize("q, expected", [
    ("john doe", {"DOE^JOHN"}),
    ("DOE john", {"DOE^JOHN"}),
    ("muller", {"Müller^Hans", "müller^anna"}),             # Latin-1, upper and lower case
    ("MÜLLER HANS", {"Müller^Hans"}),
    ("garcia jose", {"García Márquez^José Luis"}),           # UTF-8
    ("márquez^luis", {"García Márquez^José Luis"}),
    ("παπαδοπουλος", {"Παπαδόπουλος^Γιώργος"}),              # Greek, accents and case ignored
    ("ΓΙΩΡΓΟΣ", {"Παπαδόπουλος^Γιώργος"}),
    ("иванов петр", {"Иванов^Пётр"}),                        # Cyrillic, ё found as е
    ("грудной", {"Иванов^Пётр"}),                            # Cyrillic study description
    ("θωρακος", {"Παπαδόπουλος^Γιώργος"}),
    ("lefevre zoe", {"Lefèvre^Zoé"}),
    ("jerome", {"Buc^Jérôme"}),                              # pydicom's charset files from here on
    ("rudiger aneas", {"Äneas^Rüdiger"}),
    ("yamada", {"Yamada^Tarou=山田^太郎=やまだ^たろう"}),   # ISO 2022 IR 87
    ("ヤマダ", {"ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"}),      # half-width katakana (ISO 2022 IR 13) typed full-width
    ("たろう やまだ", {"Yamada^Tarou=山田^太郎=やまだ^たろう", "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう",
                  "やまだ^たろう"}),
    ("김희중", {"김희중"}),                                   # ISO 2022 IR 149
    ("홍 gildong", {"Hong^Gildong=洪^吉洞=홍^길동"}),
    ("小东", {"Wang^XiaoDong=王^小东"}),                      # GB18030
    ("דבורה", {"שרון^דבורה"}),
    ("us-0042", {"DOE^JOHN"}),                               # part of an ID
    ("0042", {"DOE^JOHN"}),
    ("craneo", {"García Márquez^José Luis"}),                 # study description
    ("lunge", {"Müller^Hans", "müller^anna"}),               # series description
    ("chest pa", {"DOE^JOHN", "やまだ^たろう", "김희중"}),
    ("nobody-at-all", set()),
])
def test_terms(nas, q, expected):
    assert set(names(nas, q=q, limit=1000)) == expected


def test_raw_query_strings_are_decoded(nas):
    for url in ("/nas/search?q=john+doe", "/nas/search?q=john%20DOE", "/nas/search?q=M%C3%9CLLER&limit=1"):
        answer = nas.get(url)
        assert answer.status_code == 200 and len(answer.json()) >= 1, url
    assert nas.get("/nas/search?q=M%C3%9CLLER&limit=1").headers["X-Total-Count"] == "4"


def test_nothing_found_is_an_empty_list(nas):
    answer = search(nas, q="zzqqx")
    assert answer.json() == [] and answer.headers["X-Total-Count"] == "0"


def test_everything_default_page_and_total(nas):
    ours = sum(len(series) for *_, studies in PATIENTS for *_, series in studies)
    total = FILLERS + ours + 2 + 13  # fillers, PATIENTS, the two without UID, pydicom's charset files
    answer = search(nas)
    assert len(answer.json()) == 100 and answer.headers["X-Total-Count"] == str(total)
    everything = search(nas, limit=1000).json()
    assert len(everything) == total
    pages = [search(nas, limit=50, offset=o).json() for o in range(0, total, 50)]
    assert [s for page in pages for s in page] == everything
    assert search(nas, offset=total).json() == []


def test_order_newest_first_then_name_then_series_number(nas):
    rows = search(nas, limit=1000).json()
    keys = [(s["StudyDate"] or "", s["SeriesNumber"]) for s in rows]
    dated = [k for k in keys if k[0]]
    assert [d for d, _ in dated] == sorted((d for d, _ in dated), reverse=True)
    assert all(not d for d, _ in keys[len(dated):])  # undated last
    first = [(s["PatientName"], s["SeriesNumber"]) for s in rows[:5]]
    assert first == [("DOE^JOHN", 1), ("müller^anna", 1), ("Müller^Hans", 1), ("Müller^Hans", 3),
                     ("DOE^JOHN", 1)]


def test_filters(nas):
    assert set(names(nas, modality="CT", limit=1000)) == {
        "Müller^Hans", "müller^anna", "García Márquez^José Luis", "DOE^JOHN", "Παπαδόπουλος^Γιώργος"}
    assert set(names(nas, modality="cr", date_from="20240101")) == {"DOE^JOHN"}
    rows = search(nas, q="muller", date_from="20240315", date_to="20240315").json()
    assert {(s["PatientName"], s["StudyDescription"]) for s in rows} == {
        ("Müller^Hans", "CT Thorax ärztlich"), ("müller^anna", "ct thorax")}
    assert names(nas, q="doe", date_to="20240101") == ["DOE^JOHN"]
    assert names(nas, modality="CT", date_from="20250101") == []


def test_series_fields_key_and_file_count(nas):
    rows = search(nas, q="hans", modality="CT").json()
    assert [s["SeriesDescription"] for s in rows] == ["Topogramm", "Lunge axial"]
    assert list(rows[1]) == ["series_key", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                             "StudyInstanceUID", "StudyDate", "StudyDescription", "AccessionNumber",
                             "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "file_count"]
    assert rows[1]["file_count"] == 3 and rows[1]["SeriesInstanceUID"] == f"{ROOT}.1.2"
    assert rows[1]["StudyDescription"] == "CT Thorax ärztlich" and rows[1]["SeriesNumber"] == 3
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", s["series_key"]) for s in search(nas, limit=1000).json())
    assert [s["file_count"] for s in search(nas, q="山田 太郎").json()] == [1, 1]
    (japanese,) = search(nas, q="やまだ", modality="CR").json()
    assert japanese["file_count"] == 2  # chrJapMulti and chrJapMultiExplicitIR6: one series


def test_files_without_series_uid_grouped_by_study_and_number(nas):
    rows = search(nas, q="lefevre").json()
    assert [(s["SeriesNumber"], s["file_count"], s["SeriesInstanceUID"]) for s in rows] == [(5, 2, None),
                                                                                            (6, 1, None)]


def test_series_route_lists_files(nas):
    (series,) = search(nas, q="lunge axial").json()
    answer = nas.get(f"/nas/series/{series['series_key']}")
    assert answer.status_code == 200
    detail = answer.json()
    assert {k: v for k, v in detail.items() if k != "files"} == series
    assert [(f["path"], f["InstanceNumber"], f["SOPInstanceUID"]) for f in detail["files"]] == [
        (f"muller/st1/se2/{i}.dcm", i, f"{ROOT}.1.2.{i}") for i in (1, 2, 3)]
    assert [f["size"] for f in detail["files"]] == [
        (nas.nas_root / f["path"]).stat().st_size for f in detail["files"]]
    assert nas.get("/nas/series/AAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert nas.get("/nas/series/AAAAAAAAAAAAAAAAAAAA").json()["kind"] == "not_found"


@pytest.mark.parametrize("params, named", [
    ({"limit": "0"}, "limit"), ({"limit": "1001"}, "limit"), ({"limit": "abc"}, "limit"),
    ({"offset": "-1"}, "offset"), ({"date_from": "2024-01-01"}, "date_from"), ({"date_to": "20241340"}, "date_to"),
])
def test_bad_parameters(nas, params, named):
    answer = nas.get("/nas/search", params=params)
    assert answer.status_code == 400 and answer.json()["kind"] == "bad_request"
    assert named in answer.json()["error"]


def test_an_unknown_parameter_is_a_400_naming_it_and_orthanc_s_tokens_pass(nas):
    answer = nas.get("/nas/search?modalty=CT")
    error = answer.json()
    assert answer.status_code == 400 and error["kind"] == "bad_request" and error["field"] == "modalty"
    assert "'modalty'" in error["error"] and "modality" in error["hint"] and "date_from" in error["hint"]
    assert nas.get("/nas/status?verbose=1").status_code == 400
    # Orthanc Explorer's authorization tokens reach the plugin as they are: they are no unknown parameter
    assert nas.get("/nas/search", params={"modality": "CT", "token": "abc"}).status_code == 200
    assert nas.get("/nas/status", params={"token": "abc", "_": "1733"}).status_code == 200


def test_series_keys_are_stable_across_a_full_reindex_and_searches_go_on_meanwhile(nas):
    before = {s["series_key"]: s for s in search(nas, limit=1000).json()}
    answer = nas.post("/nas/index", json={"full": True})
    assert answer.status_code == 202
    waits, seen = [], []
    while nas.get("/nas/status").json()["running"] or not seen:
        started = time.monotonic()
        rows = search(nas, q="hans").json()
        waits.append(time.monotonic() - started)
        seen.append({s["series_key"]: s["file_count"] for s in rows})
    assert nas.wait_index()["phase"] == "done"
    after = {s["series_key"]: s for s in search(nas, limit=1000).json()}
    assert after == before
    assert all(counts == seen[0] for counts in seen)  # rewriting a series never shows it half-written
    assert max(waits) < 1.0


def test_command_line_search_on_the_same_index(nas):
    data = nas.workdir / "storage" / "nas"
    out = subprocess.run([sys.executable, "-m", "orthanc_nas", "search", "john", "doe", "--data", str(data)],
                         cwd=REPO / "plugin", capture_output=True, text=True, timeout=60, check=True).stdout
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["Date", "Patient"]
    assert lines[1].startswith("2024-03-16  DOE JOHN") and lines[-1] == "1–2 of 2 series"


def test_concurrent_requests(nas):
    errors = []

    def hammer():
        for _ in range(10):
            answer = nas.session.get(f"{nas.url}/nas/search", params={"q": "muller"}, timeout=30)
            if answer.status_code != 200 or answer.headers["X-Total-Count"] != "4":
                errors.append(answer.text)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
