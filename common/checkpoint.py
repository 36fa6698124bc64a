"""Checkpoint files, whatever the framework: atomic writes, the kept previous copy, finding one to resume.

A framework tree passes its own save function (torch.save / paddle.save); this module makes the write atomic
(temp file, fsync, rename) and keeps the file it replaces as `<name>.prev`, so a crash or a full disk while
saving never loses the last good checkpoint.
"""
import os
from typing import Callable, List, Optional

from common.errors import UserError

LAST, BEST = "checkpoint_last", "checkpoint_best"


def atomic_save(save: Callable[[str], None], path: str, keep_previous: bool = True) -> None:
    """Calls `save(tmp_path)`, fsyncs it and renames it to `path`; the old `path` becomes `path.prev`."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if keep_previous and os.path.exists(path):
            os.replace(path, path + ".prev")
        os.replace(tmp, path)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def resume_candidates(output_dir: str, suffix: str) -> List[str]:
    """Files to try for `--resume auto`, best first: the last checkpoint, then the copy it replaced."""
    last = os.path.join(output_dir, LAST + suffix)
    return [p for p in (last, last + ".prev") if os.path.isfile(p)]


def resolve_resume(resume: Optional[str], output_dir: str, suffix: str,
                   is_valid: Callable[[str], bool]) -> Optional[str]:
    """The checkpoint path to resume from, or None to start fresh.

    `resume` is None (fresh start), a path (must exist and be valid: else UserError naming it), or "auto"
    (the newest valid checkpoint in `output_dir`, or None when there is none).
    """
    if resume is None:
        return None
    if resume != "auto":
        if not os.path.isfile(resume):
            raise UserError(f"checkpoint not found: {resume}")
        if not is_valid(resume):
            raise UserError(f"checkpoint is truncated or corrupt: {resume}")
        return resume
    for path in resume_candidates(output_dir, suffix):
        if is_valid(path):
            return path
    return None
