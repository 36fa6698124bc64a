"""Shared fixtures: a tiny generated COCO dataset and a model small enough to train in seconds on CPU."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Importing paddle in this process sets OMP_NUM_THREADS=1 in os.environ; child processes get the value the
# session started with, so their thread count (and float rounding) does not depend on which test ran first.
_OMP_AT_START = os.environ.get("OMP_NUM_THREADS")


def child_env(**extra):
    """os.environ for a child process: OMP_NUM_THREADS as at session start, CI=true, plus `extra`."""
    env = dict(os.environ, CI="true", **extra)
    env.pop("OMP_NUM_THREADS", None)
    if _OMP_AT_START is not None:
        env["OMP_NUM_THREADS"] = _OMP_AT_START
    return env

# Overrides that shrink configs/demo.yml to a few seconds per run.
TINY_MODEL = ["model.backbone.name=resnet18", "model.hidden_dim=32", "model.nheads=2", "model.enc_layers=1",
              "model.dec_layers=2", "model.dim_feedforward=64", "model.num_queries=20", "model.dn.number=6",
              "model.num_feature_levels=2", "data.num_workers=0", "train.batch_size=2", "eval.batch_size=2",
              "train.log_interval=1", "data.train.scales=[128]", "data.train.crop_prob=0.0",
              "data.val.size=128"]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """Overrides pointing data.train / data.val at a 6 + 3 image demo dataset made for this test session."""
    from common.data.demo import generate

    out = tmp_path_factory.mktemp("demo")
    generate(str(out), num_train=6, num_val=3, seed=1, workers=1, progress=False)
    return ["data.demo_dir=null", f"data.train.img_dir={out}/train",
            f"data.train.ann_file={out}/instances_train.json", f"data.val.img_dir={out}/val",
            f"data.val.ann_file={out}/instances_val.json"]


@pytest.fixture(scope="session")
def tiny(tiny_data):
    """-o overrides for a tiny model on the tiny dataset."""
    return TINY_MODEL + tiny_data


@pytest.fixture(scope="session")
def run_sh():
    """run_sh("train.sh", *args) -> CompletedProcess of the repository's shell entry point."""
    def run(script, *args, env=None):
        return subprocess.run(["sh", os.path.join(ROOT, script), *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=900, env=child_env(**(env or {})))
    return run


@pytest.fixture(autouse=True)
def _project_loggers_reset():
    """Commands run in-process call setup_logging, which stops the project's loggers from propagating (and so
    from reaching pytest's caplog); every test starts from plain loggers."""
    import logging

    from common.log import _PACKAGES

    yield
    for name in _PACKAGES:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
