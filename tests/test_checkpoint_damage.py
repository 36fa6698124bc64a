"""Truncated, damaged and empty checkpoint files of both frameworks: each is refused with an error naming it, and
`--resume auto` falls back to the previous checkpoint (`.prev`)."""
import os

import pytest
from test_disk_full import SAVERS

from common.checkpoint import resolve_resume
from common.errors import UserError

DAMAGE = {  # name -> (bytes -> damaged bytes)
    "truncated": lambda raw: raw[: len(raw) // 2],
    "bytes flipped mid-file": lambda raw: raw[: len(raw) // 2] + bytes(b ^ 0xFF for b in raw[len(raw) // 2:][:64])
    + raw[len(raw) // 2 + 64:],
    "empty": lambda raw: b"",
}
# (framework, index of the damaged file among the checkpoint's files: Paddle has .pdparams and .pdopt)
FILES = [("torch", 0), ("paddle", 0), ("paddle", 1)]


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("framework, damaged", FILES)
def test_damaged_checkpoints_are_refused_and_auto_resume_falls_back(tmp_path, framework, damaged, damage):
    save, is_valid, iteration_of, suffixes = SAVERS[framework]()
    load = __import__(f"{framework}_impl.checkpoint", fromlist=["load_checkpoint"]).load_checkpoint
    path = str(tmp_path / f"checkpoint_last{suffixes[0]}")
    save(path, 1)
    save(path, 2)
    target = path.replace(suffixes[0], suffixes[damaged])
    with open(target, "rb") as f:
        raw = f.read()
    with open(target, "wb") as f:
        f.write(DAMAGE[damage](raw))
    assert not is_valid(path)
    with pytest.raises(UserError) as error:
        load(path)
    # torch: a flipped byte inside a tensor is found by the zip records' CRC-32 (torch.load alone misses it);
    # Paddle: by the .pdparams checksum the .pdopt records
    assert str(tmp_path) in str(error.value) and os.path.basename(path).split(".")[0] in str(error.value)
    with pytest.raises(UserError, match=f"checkpoint is truncated or corrupt: {path}"):
        resolve_resume(path, str(tmp_path), suffixes[0], is_valid)
    assert resolve_resume("auto", str(tmp_path), suffixes[0], is_valid) == path + ".prev"
    assert iteration_of(path + ".prev") == 1
