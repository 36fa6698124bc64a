"""What every run does before a framework touches anything: config, output dir, data, logging.

Both model trees call `prepare_run` and get the same resolved config, the same output-dir layout and the
same data; a run's own code then only builds the model and loops.
"""
import json
import logging
import os
from typing import Iterable, Optional

from common.config import Config, ConfigError, dump_config, load_config, require
from common.log import setup_logging

logger = logging.getLogger("common")

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "demo.yml")


def prepare_run(config_path: Optional[str], overrides: Iterable[str] = (), splits: Iterable[str] = ("train", "val"),
                rank: int = 0, write_config: bool = True, framework: str = "torch") -> Config:
    """Loads the config, makes the output dir (default output/<framework>/<config name>, so the two frameworks'
    runs of one config never mix), ensures the data of `splits` exists, fills `model.num_classes`.

    Raises ConfigError (with the key and file named) for anything the user has to fix.
    """
    cfg = load_config(config_path or DEFAULT_CONFIG, overrides)
    if cfg.output_dir is None:
        stem = os.path.splitext(os.path.basename(cfg._config_file))[0]
        cfg["output_dir"] = os.path.join("output", framework, stem)
    _make_writable_dir(cfg.output_dir)
    setup_logging(cfg.output_dir, rank)
    if cfg.data.demo_dir:
        _ensure_demo(cfg.data.demo_dir, rank)
    for split in splits:
        for key in ("img_dir", "ann_file"):
            require(cfg, f"data.{split}.{key}", "the COCO " + ("images folder" if key == "img_dir" else
                                                                 "annotation json"))
        if not os.path.isfile(cfg.data[split].ann_file):
            raise ConfigError(f"{cfg._config_file}: data.{split}.ann_file: no such file "
                              f"'{cfg.data[split].ann_file}'")
        if not os.path.isdir(cfg.data[split].img_dir):
            raise ConfigError(f"{cfg._config_file}: data.{split}.img_dir: no such folder "
                              f"'{cfg.data[split].img_dir}'")
    if cfg.model.num_classes is None:
        cfg.model["num_classes"] = num_classes_from(cfg.data[list(splits)[0]].ann_file)
        logger.info("model.num_classes = %d (from the annotation file)", cfg.model.num_classes)
    if write_config and rank == 0:
        dump_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
    return cfg


def num_classes_from(ann_file: str) -> int:
    """The number of categories in a COCO annotation file (labels are contiguous, see CategoryMap)."""
    try:
        with open(ann_file) as f:
            cats = json.load(f).get("categories")
    except (OSError, ValueError) as e:
        raise ConfigError(f"{ann_file}: cannot read the annotation file: {e}") from None
    if not cats:
        raise ConfigError(f"{ann_file}: no 'categories' in the annotation file; set model.num_classes")
    return len(cats)


def _make_writable_dir(path: str) -> None:
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"output_dir '{path}' cannot be created: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"output_dir '{path}' is not writable; choose another with -o output_dir=DIR")


def _ensure_demo(demo_dir: str, rank: int) -> None:
    """Generates the demo dataset once; concurrent ranks wait on a lock instead of writing twice."""
    import fcntl

    from common.data.demo import ensure_demo

    os.makedirs(demo_dir, exist_ok=True)
    with open(os.path.join(demo_dir, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_demo(demo_dir)
