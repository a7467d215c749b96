"""The one atomic-write helper: a failed write leaves the old file and no temporary behind."""

import os

import pytest

from rankalign._atomic import atomic_write, atomic_write_json, atomic_write_path, atomic_write_text


def test_failed_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "old\n")

    def explode(handle):
        handle.write("half a new fi")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_writes_by_path_and_json(tmp_path):
    atomic_write_path(tmp_path / "sub" / "a.bin", lambda temporary: open(temporary, "wb").write(b"\x00\x01"))
    assert (tmp_path / "sub" / "a.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert (tmp_path / "b.json").read_text() == '{\n  "x": 1\n}\n'


def test_permissions_follow_the_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "c.txt", "x")
    finally:
        os.umask(umask)
    assert (path.stat().st_mode & 0o777) == 0o644
