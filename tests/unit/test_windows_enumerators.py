"""The robocopy and PowerShell enumerators, against recorded outputs replayed by a stand-in.

The stand-in (tests/fixtures/windows/replay.py) takes the place of robocopy.exe / powershell.exe:
the source runs it as a child process exactly as it runs the real tool.
"""

import calendar
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orthanc_nas.config import Connection
from orthanc_nas.errors import (
    ConfigError,
    NasAuthError,
    NasError,
    NasNetworkError,
    NasNotFound,
    NasPermissionError,
)
from orthanc_nas.sources import FileEntry, WalkError, open_source
from orthanc_nas.sources import windows as win
from orthanc_nas.sources.local import LocalSource
from orthanc_nas.sources.windows import (
    WindowsListingSource,
    parse_powershell_line,
    parse_robocopy_line,
    powershell_command,
    robocopy_command,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "windows"
REPLAY = str(FIXTURES / "replay.py")
ROOT = "\\\\nas01\\dicom"
UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.298806137288633453246975630178"
LONG = f"research/LIDC-IDRI-0001/{UID}/3000566.000000-NA-03192/{UID}/{UID}/IM-0001-0001.dcm"
TICK0 = 621_355_968_000_000_000

# path, size, last write time (UTC) to the second, 100 ns units past that second (PowerShell only)
EXPECTED = [
    ("CT 2024/MÜLLER^HANS/1.2.840.113619.2.55.3.604688119/IM000001.dcm", 526_336, (2024, 3, 11, 8, 15, 2), 1234567),
    ("CT 2024/MÜLLER^HANS/1.2.840.113619.2.55.3.604688119/IM000002.dcm", 526_336, (2024, 3, 11, 8, 15, 2), 9876543),
    ("MR/山田 太郎/series 1/IM0001.dcm", 98_304, (2023, 12, 31, 23, 59, 59), 5000000),
    ("MR/O'Brien, Seán/notes 📝.txt", 1_024, (2024, 1, 5, 10, 0, 0), 0),
    ("archive/full study (export).zip", 5_368_709_121, (2022, 6, 30, 12, 0, 0), 4200000),
    ("archive/exactly 4 GiB.bin", 4_294_967_296, (2022, 7, 1, 0, 0, 1), 0),
    (LONG, 12_345, (2021, 2, 28, 13, 37, 0), 1),
    ("scans/ leading space.dcm", 77, (2019, 11, 15, 16, 18, 27), 0),
    ("scans/report #1 [final] 50% & more.pdf", 1_048_576, (2020, 5, 17, 6, 5, 4), 3),
    ("empty file.dcm", 0, (2024, 2, 29, 0, 0, 0), 0),
]


def utc_ns(stamp, ticks=0):
    return calendar.timegm(stamp) * 1_000_000_000 + ticks * 100


def stand_in(fixture, *options):
    """The argv prefix that runs the stand-in in place of the real lister."""
    return [sys.executable, REPLAY, str(FIXTURES / fixture), *options, "--"]


def source(kind, fixture, *options, root=ROOT):
    return WindowsListingSource(root, kind, executable=stand_in(fixture, *options))


def walk_all(src, stop=None):
    return list(src.walk(stop or threading.Event()))


def split(items):
    files = {i.path: i for i in items if isinstance(i, FileEntry)}
    errors = {e.path: e.error for e in items if isinstance(e, WalkError)}
    assert len(files) + len(errors) == len(items)
    return files, errors


def gone(pid, within=5.0):
    """True once `pid` no longer exists: terminated and reaped (a zombie would still answer)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# -- the recorded listings, end to end ----------------------------------------------------------

def test_robocopy_listing_gives_exact_paths_sizes_times_and_errors():
    files, errors = split(walk_all(source("robocopy", "robocopy-listing.utf16", "--exit", "9")))
    assert {p: (f.size, f.mtime_ns) for p, f in files.items()} == {
        path: (size, utc_ns(stamp)) for path, size, stamp, _ in EXPECTED}  # /TS: whole seconds, UTC
    assert len(next(f for p, f in files.items() if p == LONG).path) > 260 - len(ROOT)
    # exit code 9 (files listed + failures): the failures are the two folders, reported once each
    assert set(errors) == {"restricted", "MR/flaky"}
    assert isinstance(errors["restricted"], NasPermissionError) and errors["restricted"].kind == "permission"
    assert isinstance(errors["MR/flaky"], NasNetworkError) and "Windows error 64" in errors["MR/flaky"].message


def test_powershell_listing_keeps_the_100ns_precision():
    files, errors = split(walk_all(source("powershell", "powershell-listing.txt")))
    assert {p: (f.size, f.mtime_ns) for p, f in files.items()} == {
        path: (size, utc_ns(stamp, ticks)) for path, size, stamp, ticks in EXPECTED}
    assert set(errors) == {"restricted", "MR/flaky"}
    assert isinstance(errors["restricted"], NasPermissionError)
    assert "Access to the path" in errors["restricted"].message
    assert isinstance(errors["MR/flaky"], NasNetworkError)


def test_unreachable_server_is_one_network_error_for_the_root():
    items = walk_all(source("robocopy", "robocopy-unreachable.utf16", "--exit", "16", root="\\\\nas02\\dicom"))
    assert len(items) == 1 and items[0].path == "/"
    assert isinstance(items[0].error, NasNetworkError) and "Windows error 53" in items[0].error.message


def test_robocopy_retry_blocks_report_each_folder_once():
    """With retries robocopy repeats a folder's ERROR line after "Waiting 30 seconds... Retrying...";
    a folder that recovers lists its files after the errors, one that does not ends the block with
    "ERROR: RETRY LIMIT EXCEEDED." Either way the folder is one error, and the files are kept."""
    items = walk_all(source("robocopy", "robocopy-retry.utf16", "--exit", "9", root="\\\\nas03\\scans"))
    files, errors = split(items)
    assert {p: (f.size, f.mtime_ns) for p, f in files.items()} == {
        "raw volume.bin": (6_442_450_944, utc_ns((2023, 5, 2, 7, 30, 0))),  # 10 digits: no space before them
        "busy/IM0001.dcm": (2_048, utc_ns((2024, 4, 1, 18, 45, 10))),
        "notes.txt": (512, utc_ns((2024, 4, 1, 18, 50, 0))),  # a tab before the time is read too
    }
    assert len(items) == 5 and set(errors) == {"busy", "locked"}
    assert isinstance(errors["busy"], NasNetworkError) and isinstance(errors["locked"], NasPermissionError)


def test_output_split_anywhere_decodes_the_same():
    """Writes of 3 bytes cut UTF-16 code units, surrogate pairs (the emoji) and UTF-8 sequences."""
    for kind, fixture in (("robocopy", "robocopy-listing.utf16"), ("powershell", "powershell-listing.txt")):
        whole = split(walk_all(source(kind, fixture)))[0]
        pieces = split(walk_all(source(kind, fixture, "--chunk", "3")))[0]
        assert pieces == whole and len(whole) == len(EXPECTED)


# -- exit codes --------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [0, 1, 3, 7])
def test_robocopy_success_codes_add_no_error(code):
    items = walk_all(source("robocopy", "robocopy-listing.utf16", "--exit", str(code)))
    assert {e.path for e in items if isinstance(e, WalkError)} == {"restricted", "MR/flaky"}


def test_robocopy_failure_code_without_error_lines_is_reported():
    assert walk_all(source("robocopy", "robocopy-empty.utf16", "--exit", "0")) == []
    items = walk_all(source("robocopy", "robocopy-empty.utf16", "--exit", "16"))
    assert len(items) == 1 and items[0].path == "/" and "exit code 16" in items[0].error.message
    assert "Log File" in items[0].error.message  # what the lister printed is kept for the person


def test_powershell_failure_exit_is_reported_with_its_stderr():
    items = walk_all(source("powershell", "powershell-listing.txt", "--exit", "1",
                            "--stderr", "The term 'Get-ChildItem' is not recognized"))
    errors = [i for i in items if isinstance(i, WalkError) and i.path == "/"]
    assert len(errors) == 1 and "exit code 1" in errors[0].error.message
    assert "is not recognized" in errors[0].error.message


def test_missing_executable_raises_a_config_error():
    src = WindowsListingSource(ROOT, "robocopy", executable="/nonexistent/robocopy.exe")
    with pytest.raises(ConfigError, match="cannot run robocopy"):
        walk_all(src)


# -- streaming and stopping ---------------------------------------------------------------------

@pytest.mark.parametrize("kind,fixture", [("robocopy", "robocopy-listing.utf16"),
                                          ("powershell", "powershell-listing.txt")])
def test_first_entry_arrives_while_the_lister_still_runs_and_close_ends_it(tmp_path, kind, fixture):
    pid_file = tmp_path / "pid"
    walk = source(kind, fixture, "--stall", "30", "--stall-lines", "2", "--pid-file", str(pid_file)).walk(
        threading.Event())
    started = time.monotonic()
    first = next(walk)
    assert time.monotonic() - started < 10, "the first entry waited for the whole listing"
    assert isinstance(first, FileEntry)
    pid = int(pid_file.read_text())
    assert not gone(pid, within=0.2)  # still running: the last lines are not written yet
    walk.close()  # the consumer stops iterating
    assert gone(pid), "the lister was not terminated and reaped"


def test_stop_ends_the_walk_and_the_lister_even_while_it_prints_nothing(tmp_path):
    pid_file, stop = tmp_path / "pid", threading.Event()
    lines = (FIXTURES / "robocopy-listing.utf16").read_bytes().decode("utf-16-le").count("\n")
    walk = source("robocopy", "robocopy-listing.utf16", "--stall", "30", "--stall-lines", str(lines - 1),
                  "--pid-file", str(pid_file)).walk(stop)
    seen = [next(walk)]  # the only line written before the stand-in goes quiet
    stop.set()
    started = time.monotonic()
    seen += list(walk)  # the reader was waiting for a line: it must not wait 30 s
    assert time.monotonic() - started < 5
    assert all(isinstance(i, FileEntry | WalkError) for i in seen)
    assert not any(isinstance(i, WalkError) and i.path == "/" for i in seen)  # stopping is no error
    assert gone(int(pid_file.read_text()))


# -- the parsers, line by line ------------------------------------------------------------------

@pytest.mark.parametrize("code,cls", [(5, NasPermissionError), (53, NasNetworkError), (67, NasNotFound),
                                      (2, NasNotFound), (3, NasNotFound), (1326, NasAuthError),
                                      (1232, NasNetworkError), (32, NasError)])
def test_robocopy_error_codes_map_to_kinds(code, cls):
    line = f"2024/03/18 14:02:11 ERROR {code} (0x{code:08X}) Accessing Source Directory {ROOT}\\a b\\c\\"
    item = parse_robocopy_line(line, ROOT)
    assert isinstance(item, WalkError) and item.path == "a b/c"
    assert type(item.error) is cls and f"Windows error {code}" in item.error.message


def test_robocopy_lines_are_read_by_structure_not_by_words():
    german = f"2024/03/18 14:02:11 FEHLER 5 (0x00000005) Zugriff auf Quellverzeichnis {ROOT}\\x\\"
    assert isinstance(parse_robocopy_line(german, ROOT).error, NasPermissionError)
    with_class = f"\t    Neue Datei  \t\t     123\t2024/01/02 03:04:05\t{ROOT}\\a.dcm"
    assert parse_robocopy_line(with_class, ROOT) == FileEntry("a.dcm", 123, utc_ns((2024, 1, 2, 3, 4, 5)))
    for other in ("", "Access is denied.", "ERROR: RETRY LIMIT EXCEEDED.", "ERROR 5 (0x00000006) mismatch",
                  f"\t                   3\t{ROOT}\\folder\\"):
        assert parse_robocopy_line(other, ROOT) is None


@pytest.mark.parametrize("middle", [" ", "\t", "\t ", "    ", " \t"])
def test_robocopy_time_is_found_after_a_space_or_a_tab(middle):
    """Published /TS captures put a space between the size (or, with /NS, the class column) and the time."""
    for size in ("     123", "123", "5368709121"):
        line = f"\t  \t\t{size}{middle}2024/01/02 03:04:05\t{ROOT}\\a b.dcm"
        assert parse_robocopy_line(line, ROOT) == FileEntry("a b.dcm", int(size), utc_ns((2024, 1, 2, 3, 4, 5)))
    labelled = f"\t    New File  \t\t      63 2024/01/02 03:04:05\t{ROOT}\\x.dcm"
    assert parse_robocopy_line(labelled, ROOT) == FileEntry("x.dcm", 63, utc_ns((2024, 1, 2, 3, 4, 5)))
    for other in ("Waiting 30 seconds... Retrying...", "Warte 30 Sekunden... Wiederholung...",
                  f"\t    New File  \t\t 2024/01/02 03:04:05\t{ROOT}\\no size.dcm"):  # /NS: no size, no entry
        assert parse_robocopy_line(other, ROOT) is None


def test_paths_are_matched_to_the_root_without_case_or_long_path_prefix():
    line = "\t  \t\t       1\t2024/01/02 03:04:05\t\\\\?\\UNC\\NAS01\\DICOM\\Sub\\x.dcm"
    assert parse_robocopy_line(line, ROOT).path == "Sub/x.dcm"
    outside = parse_robocopy_line(line.replace("\\\\?\\UNC\\NAS01\\DICOM", "\\\\nas01\\dicom2"), ROOT)
    assert isinstance(outside, WalkError) and "outside the NAS root" in outside.error.message
    assert outside.path == "\\\\nas01\\dicom2\\Sub\\x.dcm"


@pytest.mark.parametrize("hresult,category,cls", [
    ("80070005", "PermissionDenied", NasPermissionError),
    ("80070035", "ReadError", NasNetworkError),
    ("80131501", "ObjectNotFound", NasNotFound),  # PowerShell's ItemNotFoundException: no Windows code
    ("80070043", "ReadError", NasNotFound),
    ("800700CE", "ReadError", NasError),  # path too long for Windows PowerShell 5.1
])
def test_powershell_error_lines_map_to_kinds(hresult, category, cls):
    item = parse_powershell_line(f"E\t{hresult}\t{category}\t{ROOT}\\x y\tsome message", ROOT)
    assert isinstance(item, WalkError) and item.path == "x y"
    assert type(item.error) is cls and "some message" in item.error.message


def test_powershell_odd_lines_are_ignored_and_times_before_1970_work():
    assert parse_powershell_line(f"F\t12\t{TICK0 - 10}\t{ROOT}\\old.dcm", ROOT) == FileEntry("old.dcm", 12, -1000)
    for other in ("", "F\tx\t1\tpath", "E\tzz\tcat\tpath\tmsg", "WARNING: something"):
        assert parse_powershell_line(other, ROOT) is None


# -- command lines and wiring -------------------------------------------------------------------

def test_robocopy_command_lists_only_with_full_paths_bytes_and_times():
    argv = robocopy_command(["robocopy.exe"], "\\\\nas01\\dicom\\", "\\\\.\\pipe\\x")
    assert argv[:2] == ["robocopy.exe", "\\\\nas01\\dicom"]  # no trailing backslash to escape a quote
    assert not os.path.exists(argv[2]) and "nowhere" in argv[2]  # the destination is never created
    for flag in ("/L", "/E", "/NJH", "/NJS", "/NDL", "/NC", "/NP", "/BYTES", "/TS", "/FP", "/XJ", "/XX",
                 "/R:0", "/W:0", "/MT:16", "/UNILOG:\\\\.\\pipe\\x"):
        assert flag in argv
    assert robocopy_command(["r"], "C:\\", "log")[1] == "C:\\"  # "C:" alone would be C:'s current folder


def test_powershell_command_survives_windows_quoting_and_takes_the_root_from_the_environment():
    argv = powershell_command(["powershell.exe"])
    assert argv[:4] == ["powershell.exe", "-NoProfile", "-NonInteractive", "-Command"]
    script = argv[4]
    assert '"' not in script and "\n" not in script
    assert subprocess.list2cmdline(argv).endswith(f'"{script}"')
    assert "$env:" + win.ROOT_ENV in script and "Get-ChildItem -LiteralPath" in script
    assert "ReparsePoint" in script and "LastWriteTimeUtc.Ticks" in script and "UTF8Encoding $false" in script


def test_reading_files_is_the_local_sources(tmp_path):
    (tmp_path / "a b").mkdir()
    (tmp_path / "a b" / "IM1.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"rest")
    src = WindowsListingSource(str(tmp_path), "powershell")
    assert isinstance(src, LocalSource)
    assert src.read_head("a b/IM1.dcm", 132)[-4:] == b"DICM"
    assert src.list_root() == ["a b/"]
    with pytest.raises(ConfigError):
        WindowsListingSource(str(tmp_path), "dir")


# The attributes Windows gives each entry of a folder's listing (WIN32_FIND_DATAW.dwFileAttributes, which
# Python keeps as DirEntry.stat().st_file_attributes): a folder 0x10; hidden 0x12; a junction (mklink /J), or a
# DFS link seen through its share, a folder and a reparse point, 0x410.
WINDOWS_ATTRIBUTES = {"plain": 0x10, "hidden": 0x12, "junction": 0x410}


class _WindowsListing:
    """`os.scandir` as on Windows: the real entries of a folder, with `WINDOWS_ATTRIBUTES` in their stat."""

    def __init__(self, scandir, path):
        self._it = scandir(path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._it.close()

    def __iter__(self):
        return self

    def __next__(self):
        return _WindowsEntry(next(self._it))


class _WindowsEntry:
    def __init__(self, entry):
        self._entry, self.name, self.path = entry, entry.name, entry.path

    def is_dir(self, follow_symlinks=True):  # as Python on Windows: true for a junction, false for a link
        return self._entry.is_dir(follow_symlinks=follow_symlinks)

    def stat(self, follow_symlinks=True):
        st = self._entry.stat(follow_symlinks=follow_symlinks)
        return type("stat_result", (), {"st_mode": st.st_mode,
                                        "st_file_attributes": WINDOWS_ATTRIBUTES.get(self.name, 0x20)})


@pytest.mark.parametrize("kind", ["robocopy", "powershell"])
def test_list_root_marks_as_folders_only_those_the_lister_enters(tmp_path, monkeypatch, kind):
    """robocopy (/XJ) and the script never enter a junction: a cluster run must not split the NAS by one
    (it would walk it as an item of its own, through to where it leads)."""
    for name in ("plain/deeper", "hidden", "junction/inside"):
        (tmp_path / "top" / name).mkdir(parents=True)
    (tmp_path / "top" / "IM1.dcm").write_bytes(b"x")
    (tmp_path / "top" / "link").symlink_to(tmp_path / "top" / "plain")
    monkeypatch.setattr(os, "scandir", lambda path, real=os.scandir: _WindowsListing(real, path))
    src = WindowsListingSource(str(tmp_path), kind)
    assert src.list_root(100, "top") == ["IM1.dcm", "hidden/", "junction", "link", "plain/"]
    assert src.list_root(2, "top") == ["IM1.dcm", "hidden/"]
    assert src.list_root(100, "top/plain") == ["deeper/"]
    with pytest.raises(NasNotFound):
        src.list_root(100, "top/IM1.dcm")
    # the scandir walk does enter a junction, so the local source lists it as a folder
    assert LocalSource(str(tmp_path)).list_root(100, "top") == ["IM1.dcm", "hidden/", "junction/", "link", "plain/"]


@pytest.mark.skipif(sys.platform != "win32", reason="a real junction needs Windows")
def test_list_root_leaves_a_real_junction_unmarked(tmp_path):
    import _winapi

    (tmp_path / "target" / "inside").mkdir(parents=True)
    _winapi.CreateJunction(str(tmp_path / "target"), str(tmp_path / "junction"))
    assert WindowsListingSource(str(tmp_path), "robocopy").list_root() == ["junction", "target/"]
    assert LocalSource(str(tmp_path)).list_root() == ["junction/", "target/"]


def test_auto_picks_robocopy_for_unc_paths_on_windows_only(monkeypatch):
    unc = Connection(Type="local", Path="\\\\nas01\\dicom")
    monkeypatch.setattr(sys, "platform", "win32")
    chosen = open_source(unc, "auto")
    assert isinstance(chosen, WindowsListingSource) and chosen.kind == "robocopy"
    assert chosen.executable[0].lower().endswith("system32\\robocopy.exe")
    assert open_source(unc, "powershell").kind == "powershell"
    assert type(open_source(unc, "scandir")) is LocalSource
    assert type(open_source(Connection(Type="local", Path="D:\\dicom"), "auto")) is LocalSource
    monkeypatch.setattr(sys, "platform", "linux")
    assert type(open_source(unc, "auto")) is LocalSource
