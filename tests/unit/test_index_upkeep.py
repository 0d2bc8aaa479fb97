"""Keeping the index current without burdening the NAS: reads in flight within the live limit,
the throttle's pace, excluded folders and skipped extensions, a run over one folder, the runs kept,
the schedule.

Reads are counted where they happen: in the source's `read_head`.
"""

import shutil
import threading
import time
from datetime import datetime

import pytest
from tests.support.dicom import write_dicom, write_series

from orthanc_nas import indexer as indexer_mod
from orthanc_nas.catalog import Catalog
from orthanc_nas.config import DEFAULT_EXCLUDED_FOLDERS
from orthanc_nas.errors import ConfigError
from orthanc_nas.indexer import Indexer
from orthanc_nas.schedule import Scheduler, next_time, parse_schedule
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.sources.scope import WalkScope
from orthanc_nas.sources.windows import lister_env, powershell_command, robocopy_command
from orthanc_nas.status import IndexStatus
from orthanc_nas.throttle import Pacer, Throttle, parse_throttle


@pytest.fixture(autouse=True)
def engine(db_engine):
    """Every test of this module on SQLite and on PostgreSQL (see tests/conftest.py)."""
    return db_engine


class CountingSource(LocalSource):
    """A folder whose head reads take `delay` s and are counted while in flight, with the limit then."""

    def __init__(self, root, delay=0.0):
        super().__init__(root)
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.starts: list[tuple[int, int]] = []  # (reads in flight with this one, live limit) at each start
        self.times: list[float] = []
        self.paths: list[str] = []
        self.governor = None

    def read_head(self, path, size):
        with self.lock:
            self.in_flight += 1
            self.starts.append((self.in_flight, self.governor.limit if self.governor else 0))
            self.times.append(time.monotonic())
            self.paths.append(path)
        try:
            time.sleep(self.delay)
            return super().read_head(path, size)
        finally:
            with self.lock:
                self.in_flight -= 1


def make(tmp_path, source, workers=4, **kw):
    data = tmp_path / "data"
    catalog, status = Catalog(str(data)), IndexStatus(str(data))
    return Indexer(catalog, status, lambda: source, workers=workers, parse_processes=0, **kw), catalog


def indexed_paths(catalog):
    return {r[0] for r in catalog.reader().execute("SELECT path FROM files")}


def test_reads_in_flight_never_exceed_the_live_limit_as_it_goes_down_and_up(tmp_path, monkeypatch):
    root = tmp_path / "nas"
    for s in range(12):
        write_series(root / f"s{s}", 25)
    source = CountingSource(str(root), delay=0.004)
    limits = {40: 2, 120: 1, 200: 6, 260: 3}  # reads done -> the limit the governor sets then

    class Steered(indexer_mod.Governor):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            source.governor = self

        def success(self, seconds):
            with self._cond:
                if (limit := limits.get(self.reads)) is not None:
                    self._set(limit, time.monotonic())
                self.reads += 1

    monkeypatch.setattr(indexer_mod, "Governor", Steered)
    ix, catalog = make(tmp_path, source, workers=6)
    s = ix.run()
    assert s["phase"] == "done" and s["files_processed"] == 300
    over = [(i, n, limit) for i, (n, limit) in enumerate(source.starts) if n > limit]
    assert not over, over[:10]
    # the limits were really used: six reads at once at first, one alone later
    assert max(n for n, _ in source.starts[:40]) == 6
    assert {n for n, limit in source.starts if limit == 1} == {1}


def test_a_throttled_run_reads_at_the_pace_and_says_so(tmp_path):
    root = tmp_path / "nas"
    for s in range(4):
        write_series(root / f"s{s}", 40)
    source = CountingSource(str(root))
    ix, _ = make(tmp_path, source, throttle=Throttle("00:00-23:59", 40))
    seen = []
    ix.start()
    while ix.running:
        seen.append(ix.status.snapshot()["throttled"])
        time.sleep(0.05)
    assert ix.status.phase == "done" and len(source.times) == 160
    # the pace of reads at the source, over the whole run: 159 intervals at 1/40 s
    pace = (len(source.times) - 1) / (source.times[-1] - source.times[0])
    assert 0.8 * 40 <= pace <= 1.2 * 40, pace
    gaps = [b - a for a, b in zip(source.times, source.times[1:], strict=False)]
    assert max(gaps) < 1.0  # smooth: no burst followed by a long pause
    assert True in seen and ix.status.snapshot()["throttled"] is False


def test_the_pace_changes_when_the_hours_end():
    moment = {"now": datetime(2026, 3, 2, 18, 59, 0)}
    pacer = Pacer(Throttle("07:00-19:00", 20), local_now=lambda: moment["now"])
    stop = threading.Event()
    started = time.monotonic()
    for _ in range(11):
        pacer.wait(stop)
    assert pacer.active() and time.monotonic() - started >= 10 / 20 - 0.01
    moment["now"] = datetime(2026, 3, 2, 19, 0, 0)  # the working day is over
    started = time.monotonic()
    for _ in range(200):
        pacer.wait(stop)
    assert not pacer.active() and time.monotonic() - started < 1.0  # 10 s at the day's pace
    assert Throttle("22:00-06:00", 1).holds_at(datetime(2026, 1, 1, 23, 0))
    assert not Throttle("22:00-06:00", 1).holds_at(datetime(2026, 1, 1, 12, 0))


def test_throttle_settings_are_checked():
    assert parse_throttle(None) is None
    assert parse_throttle({"Hours": "07:00-19:00", "MaxFilesPerSecond": 100}) == Throttle("07:00-19:00", 100)
    for bad, field in (({"Hours": "7-19"}, "Nas.Throttle.Hours"), ({"MaxFilesPerSecond": 0}, "Nas.Throttle.MaxFilesPerSecond"),
                       ({"Hour": "07:00-19:00"}, "Nas.Throttle.Hour"), ("fast", "Nas.Throttle")):
        with pytest.raises(ConfigError) as err:
            parse_throttle(bad)
        assert err.value.field == field


@pytest.fixture
def nas_with_snapshot(tmp_path):
    """Two series, a snapshot folder (NetApp's, Synology's) holding a copy of everything, a recycle
    folder, and files of a skipped extension."""
    root = tmp_path / "nas"
    write_series(root / "2024" / "11" / "CT", 4, PatientName="DOE^JOHN")
    write_series(root / "2024" / "12" / "MR", 3, PatientName="ROE^JANE")
    for name in (".snapshot", "@eaDir"):
        shutil.copytree(root / "2024", root / name / "hourly.0" / "2024")
    shutil.copytree(root / "2024" / "12", root / "2024" / "#recycle" / "12")
    (root / "2024" / "11" / "report.pdf").write_bytes(b"%PDF-1.4 not an image")
    (root / "2024" / "11" / "scan.JPG").write_bytes(b"\xff\xd8\xff not an image")
    return root


def test_excluded_folders_are_never_walked_and_skipped_extensions_never_read(tmp_path, nas_with_snapshot):
    source = CountingSource(str(nas_with_snapshot))
    ix, catalog = make(tmp_path, source, excluded_folders=DEFAULT_EXCLUDED_FOLDERS,
                       skipped_extensions=(".pdf", ".jpg"))
    s = ix.run()
    assert s["phase"] == "done" and s["enumerated_files"] == 7 and s["errors"] == 0, s
    assert all(p.startswith("2024/1") for p in source.paths) and len(source.paths) == 7
    assert len(indexed_paths(catalog)) == 7
    # the same walk as the sources' own: the folder is not even listed
    listed = [i.path for i in LocalSource(str(nas_with_snapshot)).walk(
        threading.Event(), WalkScope("", DEFAULT_EXCLUDED_FOLDERS, (".pdf", ".jpg")))]
    assert sorted(listed) == sorted(indexed_paths(catalog))


def test_changing_the_exclusions_never_removes_rows_of_files_still_on_the_nas(tmp_path, nas_with_snapshot):
    source = LocalSource(str(nas_with_snapshot))
    ix, catalog = make(tmp_path, source)
    ix.run()
    everything = indexed_paths(catalog)
    assert len(everything) == 7 * 3 + 3 + 2  # snapshots, recycle bin and the two other files included
    ix.excluded_folders, ix.skipped_extensions = DEFAULT_EXCLUDED_FOLDERS, (".pdf",)
    s = ix.run()
    assert s["files_removed"] == 0 and indexed_paths(catalog) == everything
    (nas_with_snapshot / "2024" / "12" / "MR" / "IM00001.dcm").unlink()  # gone from a folder still walked
    shutil.rmtree(nas_with_snapshot / ".snapshot")  # gone, but no longer walked: kept until walked again
    s = ix.run()
    assert s["files_removed"] == 1 and "2024/12/MR/IM00001.dcm" not in indexed_paths(catalog)
    ix.excluded_folders, ix.skipped_extensions = (), ()
    s = ix.run()  # a walk of everything confirms what went away
    assert s["files_removed"] == 7 and not any(p.startswith(".snapshot/") for p in indexed_paths(catalog))


def test_a_run_over_one_folder_reads_and_removes_only_there(tmp_path, nas_with_snapshot):
    source = CountingSource(str(nas_with_snapshot))
    ix, catalog = make(tmp_path, source, excluded_folders=DEFAULT_EXCLUDED_FOLDERS)
    ix.run()
    before = indexed_paths(catalog)
    for folder in ("11", "12"):
        shutil.rmtree(nas_with_snapshot / "2024" / folder)
    write_dicom(nas_with_snapshot / "2024" / "11" / "new.dcm", PatientName="NEW^ONE")
    source.paths.clear()
    s = ix.run(folder="2024/11")
    assert s["phase"] == "done" and source.paths == ["2024/11/new.dcm"], source.paths
    after = indexed_paths(catalog)
    assert after == {p for p in before if not p.startswith("2024/11/")} | {"2024/11/new.dcm"}
    assert any(p.startswith("2024/12/") for p in after)  # gone from the NAS, but outside the folder run
    runs = catalog.runs()
    assert runs[0]["path"] == "2024/11" and runs[0]["trigger"] == "api" and runs[0]["files_read"] == 1
    assert runs[0]["series_added"] == 1 and runs[0]["series_removed"] == 1 and runs[0]["files_removed"] == 6
    assert runs[1]["path"] == "" and runs[1]["series_added"] == 2 and runs[1]["outcome"] == "done"


def test_the_last_hundred_runs_are_kept(tmp_path):
    root = tmp_path / "nas"
    write_series(root / "a", 1)
    ix, catalog = make(tmp_path, LocalSource(str(root)))
    for _ in range(103):
        ix.run(trigger="schedule")
    runs = catalog.runs(1000)
    assert len(runs) == 100 and runs[0]["id"] == 103 and {r["trigger"] for r in runs} == {"schedule"}
    assert runs[-1]["series_added"] == 0 and runs[-1]["files_skipped"] == 1


def test_windows_listers_leave_out_the_same_folders_and_extensions():
    scope = WalkScope("", DEFAULT_EXCLUDED_FOLDERS, (".pdf",))
    argv = robocopy_command(["robocopy.exe"], "\\\\nas\\dicom", "\\\\.\\pipe\\x", scope)
    xd = argv.index("/XD")
    assert argv[xd + 1:xd + 1 + len(DEFAULT_EXCLUDED_FOLDERS)] == list(DEFAULT_EXCLUDED_FOLDERS)
    assert argv[argv.index("/XF") + 1] == "*.pdf"
    env = lister_env("\\\\nas\\dicom", scope)
    assert env["ORTHANC_NAS_EXCLUDE"].split("|") == list(DEFAULT_EXCLUDED_FOLDERS)
    assert env["ORTHANC_NAS_SKIP"] == ".pdf"
    script = powershell_command(["powershell.exe"])[-1]
    assert "$env:ORTHANC_NAS_EXCLUDE" in script and "-like" in script and "$env:ORTHANC_NAS_SKIP" in script
    assert "/XD" not in robocopy_command(["robocopy.exe"], "\\\\nas\\dicom", "p")


def test_scope_matches_folder_names_by_glob_without_case():
    scope = WalkScope("2024", DEFAULT_EXCLUDED_FOLDERS, (".jpg",))
    assert not scope.enters(".Trash-1000") and not scope.enters("$Recycle.Bin") and scope.enters("trash")
    assert scope.covers("2024/a/b.dcm") and not scope.covers("2025/a/b.dcm") and not scope.covers("2024/a/B.JPG")
    assert not scope.covers("2024/#recycle/x.dcm")
    own_files = WalkScope("2024/#recycle", ("*",))  # a walk lists its own folder whatever its name
    assert own_files.covers("2024/#recycle/x.dcm") and not own_files.covers("2024/#recycle/a/x.dcm")


def test_schedule_is_a_cron_expression_and_names_the_next_time():
    assert parse_schedule(None) is None and parse_schedule("0 2 * * *") == "0 2 * * *"
    for bad in ("every night", "61 2 * * *", "* * * *", 5):
        with pytest.raises(ConfigError) as err:
            parse_schedule(bad)
        assert err.value.field == "Nas.Schedule"
    at = datetime(2026, 3, 2, 1, 30).timestamp()
    assert datetime.fromtimestamp(next_time("0 2 * * *", at)) == datetime(2026, 3, 2, 2, 0)


def test_a_scheduled_turn_skips_while_a_run_goes_on(monkeypatch):
    from orthanc_nas import schedule as schedule_mod
    from orthanc_nas.errors import Busy

    turns, nexts = [], []
    monkeypatch.setattr(schedule_mod, "next_time", lambda expression, after: after + 0.05)

    def start():
        turns.append(time.monotonic())
        if len(turns) == 1:
            raise Busy("indexing is already running")

    scheduler = Scheduler("* * * * *", start, nexts.append).start()
    deadline = time.monotonic() + 10
    while len(turns) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    scheduler.stop()
    assert len(turns) >= 3 and nexts[-1] is None and all(isinstance(t, float) for t in nexts[:-1])


def test_upkeep_settings_are_read_checked_and_sent_back_unchanged():
    from orthanc_nas.config import Settings, parse_settings
    from orthanc_nas.web_config import parse_web_settings

    s = parse_settings({"Schedule": "0 2 * * *", "Throttle": {"Hours": "07:00-19:00", "MaxFilesPerSecond": 50},
                        "SkippedExtensions": ["JPG", ".pdf", ".jpg"]})
    assert s.Schedule == "0 2 * * *" and s.Throttle == Throttle("07:00-19:00", 50)
    assert s.ExcludedFolders == DEFAULT_EXCLUDED_FOLDERS and s.SkippedExtensions == (".jpg", ".pdf")
    public = s.public()
    assert public["ExcludedFolders"] == list(DEFAULT_EXCLUDED_FOLDERS)
    assert public["Throttle"] == {"Hours": "07:00-19:00", "MaxFilesPerSecond": 50}
    body = {**public, "Connection": {"Type": "local", "Path": "/mnt/nas"}}
    assert isinstance(parse_web_settings(body, s), Settings)  # GET /nas/config's answer goes back as it is
    for section, field in (({"ExcludedFolders": ".snapshot"}, "Nas.ExcludedFolders"),
                           ({"ExcludedFolders": ["a/b"]}, "Nas.ExcludedFolders"),
                           ({"SkippedExtensions": [3]}, "Nas.SkippedExtensions"),
                           ({"Schedule": "nightly"}, "Nas.Schedule"),
                           ({"Throttle": {"Hours": "19:00-19:00"}}, "Nas.Throttle.Hours")):
        with pytest.raises(ConfigError) as err:
            parse_settings(section)
        assert err.value.field == field, section
    with pytest.raises(ConfigError) as err:
        parse_web_settings({**body, "Schedule": "* * * * *"}, s)
    assert err.value.field == "Schedule"  # set in orthanc.json only


def test_a_read_waiting_for_a_slot_does_not_start_once_the_run_stops():
    from orthanc_nas.governor import Governor, Stopped

    g, stop, outcome = Governor(1), threading.Event(), []

    def waiting():
        try:
            with g.slot(stop):
                outcome.append("read")
        except Stopped:
            outcome.append("stopped")

    with g.slot(stop):
        t = threading.Thread(target=waiting)
        t.start()
        time.sleep(0.2)
        assert outcome == [] and g.in_flight == 1
        stop.set()
        t.join(5)
    assert outcome == ["stopped"] and g.in_flight == 0
