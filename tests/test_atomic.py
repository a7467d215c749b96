"""The one atomic-write helper: a failed write leaves the old file and no temporary behind."""

import os
import stat
import threading
from pathlib import Path

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


def test_replacing_a_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "private.csv"
    target.write_text("old\n")
    target.chmod(0o600)
    atomic_write_text(target, "new\n")
    assert target.read_text() == "new\n"
    assert (target.stat().st_mode & 0o777) == 0o600


def test_a_symbolic_link_is_written_through(tmp_path):
    (tmp_path / "sub").mkdir()
    real = tmp_path / "sub" / "real.csv"
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(Path("sub") / "real.csv")
    assert atomic_write_text(link, "new\n") == link
    assert link.is_symlink()
    assert real.read_text() == "new\n"
    assert sorted(os.listdir(tmp_path / "sub")) == ["real.csv"]
    dangling = tmp_path / "dangling.csv"
    dangling.symlink_to(tmp_path / "sub" / "later.csv")
    atomic_write_text(dangling, "made\n")
    assert dangling.is_symlink() and (tmp_path / "sub" / "later.csv").read_text() == "made\n"


def test_a_device_or_fifo_is_written_to_not_replaced(tmp_path):
    null = tmp_path / "null"
    null.symlink_to("/dev/null")
    atomic_write_text(null, "discarded\n")
    assert null.is_symlink() and os.path.realpath(null) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(open(fifo).read()))
    reader.start()
    atomic_write_text(fifo, "through the pipe\n")
    reader.join(timeout=10)
    assert received == ["through the pipe\n"]
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
