"""ctsdg.files: the one atomic-write helper every writer in the package uses."""

import os
import stat

import pytest

from ctsdg.files import atomic_path, check_writable_folder, write_bytes_atomic, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_file_replaces_the_target_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    old_umask = os.umask(0o022)
    try:
        write_bytes_atomic(target, b"new")
    finally:
        os.umask(old_umask)
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o644  # not mkstemp's 0600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]  # no temporary left


def test_an_error_while_writing_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "report.md"
    target.write_text("complete old report")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half of a new rep")
            raise RuntimeError("disk full")
    assert target.read_text() == "complete old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_missing_folder_is_an_error_naming_it_unless_asked_to_create(tmp_path):
    with pytest.raises(FileNotFoundError, match="nested"):
        with atomic_path(tmp_path / "nested" / "x.txt"):
            pass
    path = write_text_atomic(tmp_path / "nested" / "deeper" / "x.txt", "hé")
    assert path.read_text(encoding="utf-8") == "hé"


def test_fsync_and_suffix_options(tmp_path):
    target = tmp_path / "img.png"
    with atomic_path(target, suffix=".png", fsync=True) as tmp:
        assert tmp.endswith(".png") and os.path.dirname(tmp) == str(tmp_path)
        with open(tmp, "wb") as f:
            f.write(b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"


def test_check_writable_folder_probes_the_nearest_folder_and_creates_only_when_asked(tmp_path):
    check_writable_folder(tmp_path / "a" / "b", "--out")
    assert list(tmp_path.iterdir()) == []  # judged by tmp_path, nothing made, the probe removed
    check_writable_folder(tmp_path / "a" / "b", "--out", create=True)
    assert [p.relative_to(tmp_path).as_posix() for p in sorted(tmp_path.rglob("*"))] == ["a", "a/b"]
    (tmp_path / "f").write_text("a file")
    with pytest.raises(NotADirectoryError, match=r"^--out .*f/x: .*f is a file; pass a folder$"):
        check_writable_folder(tmp_path / "f" / "x", "--out")
