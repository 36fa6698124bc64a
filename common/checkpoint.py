"""Checkpoint files, whatever the framework: atomic writes, the kept previous copy, finding one to resume.

A framework tree passes its own save function (torch.save / paddle.save); this module makes the write atomic
(temp file, fsync, rename) and keeps the file it replaces as `<name>.prev`, so a crash or a full disk while
saving never loses the last good checkpoint. A failed write (disk full, I/O error) stops training with an
OSError naming the file and the free space: going on without checkpoints would lose work silently.
"""
import contextlib
import os
import shutil
from typing import Callable, Iterator, List, Optional, Sequence

from common.errors import UserError

LAST, BEST = "checkpoint_last", "checkpoint_best"


@contextlib.contextmanager
def atomic_files(paths: Sequence[str], keep_previous: bool = True) -> Iterator[List[str]]:
    """Yields a temp path per entry of `paths` for the block to write; when it ends without error, fsyncs them and
    puts them in place together (the files they replace become `<path>.prev`, all moved before any is replaced).

    On an error nothing is replaced and the temp files are removed; a failed write (OSError, or the RuntimeError
    torch's writer raises) becomes an OSError naming the files, the error and the free space."""
    tmps = [f"{path}.tmp{os.getpid()}" for path in paths]
    try:
        yield tmps
        for tmp in tmps:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
    except BaseException as e:
        for tmp in tmps:
            if os.path.lexists(tmp):
                os.remove(tmp)
        if isinstance(e, (OSError, RuntimeError)):
            directory = os.path.dirname(os.path.abspath(paths[0]))
            free = shutil.disk_usage(directory).free / 2**20
            raise OSError(f"cannot write {' and '.join(paths)}: {error_text(e)} (disk full? "
                          f"{free:.0f} MB free in {directory}); the files there are unchanged") from e
        raise
    if keep_previous:
        for path in paths:
            if os.path.exists(path):
                os.replace(path, path + ".prev")
    for path, tmp in zip(paths, tmps):
        os.replace(tmp, path)
    for directory in {os.path.dirname(os.path.abspath(path)) for path in paths}:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def error_text(error: BaseException, limit: int = 200) -> str:
    """"Type: first line of the message" of an error (cut to `limit` characters), or "Type" when it has none."""
    line = (str(error).strip().splitlines() or [""])[0][:limit]
    return f"{type(error).__name__}: {line}" if line else type(error).__name__


def atomic_save(save: Callable[[str], None], path: str, keep_previous: bool = True) -> None:
    """Calls `save(tmp_path)` and puts the result in place atomically (see atomic_files)."""
    with atomic_files([path], keep_previous) as (tmp,):
        save(tmp)


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
