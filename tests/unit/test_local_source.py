import os
import subprocess
import sys
import textwrap
import threading

import pytest

from orthanc_nas.errors import NasNotFound, NasPermissionError
from orthanc_nas.sources import FileEntry, WalkError
from orthanc_nas.sources import local as local_mod
from orthanc_nas.sources.local import LocalSource, safe_relpath


def make_tree(root, folders=5, per_folder=7):
    expected = {}
    for f in range(folders):
        for i in range(per_folder):
            p = root / f"pat {f}" / "stüdy" / f"IM{i}.dcm"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"x" * (i + f))
            expected[f"pat {f}/stüdy/IM{i}.dcm"] = i + f
    return expected


def walk_all(source):
    return list(source.walk(threading.Event()))


def test_walk_lists_every_file_with_size_and_mtime(tmp_path):
    expected = make_tree(tmp_path)
    items = walk_all(LocalSource(str(tmp_path)))
    assert all(isinstance(i, FileEntry) for i in items)
    assert {i.path: i.size for i in items} == expected
    one = next(i for i in items if i.path == "pat 0/stüdy/IM3.dcm")
    assert one.mtime_ns == os.stat(tmp_path / one.path).st_mtime_ns


def test_symlink_loop_is_not_followed_forever(tmp_path):
    make_tree(tmp_path, folders=1, per_folder=2)
    os.symlink(tmp_path, tmp_path / "pat 0" / "loop")
    os.symlink(tmp_path / "pat 0", tmp_path / "pat 0" / "stüdy" / "back")
    items = walk_all(LocalSource(str(tmp_path)))
    assert {i.path for i in items} == {"pat 0/stüdy/IM0.dcm", "pat 0/stüdy/IM1.dcm"}


def test_links_are_not_followed_out_of_the_root_nor_twice_inside(tmp_path):
    outside = tmp_path / "outside"
    (outside / "s").mkdir(parents=True)
    (outside / "s" / "a.dcm").write_bytes(b"1")
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "b.dcm").write_bytes(b"2")
    os.symlink(outside, root / "linked")  # a folder outside
    os.symlink(outside / "s" / "a.dcm", root / "a.dcm")  # a file outside
    os.symlink(root / "real", root / "again")  # a folder inside: walked once, under its own name
    os.symlink(root / "real" / "b.dcm", root / "b-copy.dcm")  # a file inside: not a second copy
    assert [i.path for i in walk_all(LocalSource(str(root)))] == ["real/b.dcm"]


def test_walk_is_bounded_and_stops_early(tmp_path, monkeypatch):
    """The walk does not run ahead of its consumer: memory stays bounded."""
    for d in range(60):
        folder = tmp_path / f"d{d:02d}"
        folder.mkdir()
        for i in range(400):
            (folder / f"f{i}").touch()
    listed = []
    real_scandir = os.scandir

    def counting(path):
        listed.append(path)
        return real_scandir(path)

    monkeypatch.setattr(local_mod.os, "scandir", counting)
    stop = threading.Event()
    walk = LocalSource(str(tmp_path), threads=4).walk(stop)
    next(walk)
    threading.Event().wait(0.5)
    bound = local_mod.QUEUE_CHUNKS * local_mod.CHUNK + 4 * 400 * 2
    assert (len(listed) - 1) * 400 <= bound < 60 * 400
    walk.close()  # the consumer leaves: the walking threads end
    threading.Event().wait(0.5)
    assert not [t for t in threading.enumerate() if t.name.startswith("nas-walk-")]


def test_missing_root_is_not_found(tmp_path):
    with pytest.raises(NasNotFound) as err:
        LocalSource(str(tmp_path / "nope")).check_root()
    assert "mount" in err.value.hint


def test_list_root_lists_the_root_or_a_folder_below_it(tmp_path):
    (tmp_path / "archive" / "P1").mkdir(parents=True)
    (tmp_path / "archive" / "a.dcm").write_bytes(b"x")
    source = LocalSource(str(tmp_path))
    assert source.list_root() == ["archive/"]
    assert source.list_root(folder="archive") == ["P1/", "a.dcm"]
    with pytest.raises(NasNotFound):
        source.list_root(folder="missing")
    with pytest.raises(NasNotFound):
        source.list_root(folder="../x")


def test_safe_relpath_refuses_escapes():
    for bad in ("../etc/passwd", "/etc/passwd", "a/../../b"):
        with pytest.raises(NasNotFound):
            safe_relpath(bad)
    for bad in ("C:/x", "\\\\srv\\x", "a\\..\\..\\b"):
        with pytest.raises(NasNotFound):
            safe_relpath(bad, windows=True)
    assert safe_relpath("a/./b//c.dcm") == "a/b/c.dcm"
    # on Linux a colon or a backslash is part of a name, not a way out
    assert safe_relpath("a:b.dcm", windows=False) == "a:b.dcm"
    assert safe_relpath("x\\y.dcm", windows=False) == "x\\y.dcm"


def test_read_head_reads_a_prefix_and_maps_errors(tmp_path):
    (tmp_path / "a.dcm").write_bytes(b"0123456789")
    src = LocalSource(str(tmp_path))
    assert src.read_head("a.dcm", 4) == b"0123"
    with pytest.raises(NasNotFound):
        src.read_head("gone.dcm", 4)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_unreadable_folder_is_an_error_not_fatal(tmp_path_factory):
    """Root reads every folder, so the walk runs as `nobody` in a child process."""
    base = tmp_path_factory.mktemp("perm", numbered=True)
    os.chmod(base, 0o755)
    os.chmod(base.parent, 0o755)
    os.chmod(base.parent.parent, 0o755)
    (base / "ok").mkdir()
    (base / "ok" / "a.dcm").write_bytes(b"a")
    (base / "secret").mkdir()
    (base / "secret" / "b.dcm").write_bytes(b"b")
    os.chmod(base / "secret", 0o000)
    plugin = os.path.join(os.path.dirname(__file__), "..", "..", "plugin")
    code = textwrap.dedent(f"""
        import os, sys, threading
        sys.path.insert(0, {os.path.abspath(plugin)!r})
        from orthanc_nas.sources.local import LocalSource  # imported first: the checkout may be private
        from orthanc_nas.sources import WalkError
        os.setgid(65534); os.setuid(65534)
        for item in LocalSource({str(base)!r}).walk(threading.Event()):
            kind = item.error.kind if isinstance(item, WalkError) else "file"
            print(kind, item.path)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split("\n")) == ["", "file ok/a.dcm", "permission secret"]
    assert WalkError and NasPermissionError.kind == "permission"


def test_a_walk_over_a_file_says_it_is_not_a_folder(tmp_path):
    """A run given a file as its folder (`{"path": "a/IM1.dcm"}`) is told so, not that it met a link."""
    from orthanc_nas.sources.scope import WalkScope

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "IM1.dcm").write_bytes(b"1")
    items = list(LocalSource(str(tmp_path)).walk(threading.Event(), WalkScope("a/IM1.dcm")))
    assert [(type(i), i.path) for i in items] == [(WalkError, "a/IM1.dcm")]
    assert "not a folder" in items[0].error.message
