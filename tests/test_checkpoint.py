"""Atomic checkpoint writes and choosing what to resume from (framework-free part)."""
import os

import pytest

from common.checkpoint import atomic_save, resolve_resume
from common.errors import UserError


def writer(text):
    def save(path):
        with open(path, "w") as f:
            f.write(text)
    return save


def test_atomic_save_keeps_previous(tmp_path):
    path = str(tmp_path / "checkpoint_last.pth")
    atomic_save(writer("one"), path)
    atomic_save(writer("two"), path)
    assert open(path).read() == "two" and open(path + ".prev").read() == "one"
    assert sorted(os.listdir(tmp_path)) == ["checkpoint_last.pth", "checkpoint_last.pth.prev"]


def test_failed_save_loses_nothing(tmp_path):
    path = str(tmp_path / "checkpoint_last.pth")
    atomic_save(writer("good"), path)

    def failing(p):
        with open(p, "w") as f:
            f.write("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        atomic_save(failing, path)
    assert open(path).read() == "good"
    assert os.listdir(tmp_path) == ["checkpoint_last.pth"]  # no temp file left behind


def test_resolve_resume(tmp_path):
    valid = lambda p: open(p).read() != "corrupt"  # noqa: E731
    out = str(tmp_path)
    assert resolve_resume(None, out, ".pth", valid) is None
    assert resolve_resume("auto", out, ".pth", valid) is None  # nothing yet: fresh start
    with pytest.raises(UserError, match="checkpoint not found: .*nope.pth"):
        resolve_resume(str(tmp_path / "nope.pth"), out, ".pth", valid)
    path = str(tmp_path / "checkpoint_last.pth")
    atomic_save(writer("ok"), path)
    atomic_save(writer("corrupt"), path)
    with pytest.raises(UserError, match="truncated or corrupt"):
        resolve_resume(path, out, ".pth", valid)
    # auto falls back to the previous valid one.
    assert resolve_resume("auto", out, ".pth", valid) == path + ".prev"
