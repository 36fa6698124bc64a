"""Logging for runs: console + `log.txt` on rank 0, `metrics.jsonl`, progress bars.

Only rank 0 writes files and shows progress bars; other ranks log warnings and errors to the console so a
failure on any rank is still seen.
"""
import json
import logging
import math
import os
import sys
import time
from typing import Any, Iterable, Optional

from tqdm import tqdm

_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
_PACKAGES = ("common", "torch_impl", "paddle_impl", "ops", "convert", "bench")


def setup_logging(output_dir: Optional[str] = None, rank: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Sends the project's loggers to stderr (and `output_dir/log.txt` on rank 0). Safe to call twice."""
    handlers = [logging.StreamHandler(sys.stderr)]
    if output_dir is not None and rank == 0:
        os.makedirs(output_dir, exist_ok=True)
        handlers.append(logging.FileHandler(os.path.join(output_dir, "log.txt"), mode="a"))
    formatter = logging.Formatter(_FORMAT, datefmt="%H:%M:%S")
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()
        for h in handlers:
            h.setFormatter(formatter)
            logger.addHandler(h)
        logger.setLevel(level if rank == 0 else logging.WARNING)
        logger.propagate = False
    return logging.getLogger("common")


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, rank: int = 0, **kwargs: Any) -> Iterable:
    """A tqdm bar on rank 0, silent elsewhere; no bar either when stderr is not a terminal and CI is set."""
    disable = rank != 0 or (os.environ.get("CI") == "true" and not sys.stderr.isatty())
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False, **kwargs)


class MetricsWriter:
    """Appends one JSON object per call to `metrics.jsonl` (rank 0 only); non-finite floats become null."""

    def __init__(self, output_dir: str, rank: int = 0, name: str = "metrics.jsonl"):
        self.path = os.path.join(output_dir, name)
        self.rank = rank

    def write(self, **record: Any) -> None:
        if self.rank != 0:
            return
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a") as f:
            f.write(json.dumps({k: _plain(v) for k, v in record.items()}) + "\n")


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if hasattr(v, "item") and getattr(v, "size", 1) == 1:  # numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
