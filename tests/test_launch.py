"""The shared command line: flags, framework selection and one-line errors."""
import os
import subprocess
import sys

import pytest

from common import launch
from common.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(*argv):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "common.launch", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_parser_shapes():
    a = launch.build_parser().parse_args(["train", "-c", "x.yml", "-o", "a=1", "b=2", "-o", "c=3", "-r", "auto"])
    assert (a.framework, a.config, a.opt, a.resume) == ("torch", "x.yml", ["a=1", "b=2", "c=3"], "auto")
    a = launch.build_parser().parse_args(["test", "--framework", "paddle", "--resume", "w.pdparams"])
    assert (a.framework, a.resume) == ("paddle", "w.pdparams")


def test_missing_tree_and_missing_package_are_named(monkeypatch):
    monkeypatch.setitem(launch.FRAMEWORKS, "nosuch", "json")  # package present, no nosuch_impl tree
    with pytest.raises(UserError, match=r"nosuch_impl/main.py is missing"):
        launch.load_tree("nosuch")
    monkeypatch.setitem(launch.FRAMEWORKS, "ghost", "no_such_package_zz")
    with pytest.raises(UserError, match=r"'no_such_package_zz' package is not installed.*env_run.sh"):
        launch.load_tree("ghost")


def test_unknown_framework_is_a_usage_error():
    r = run("train", "--framework", "jax")
    assert r.returncode == 2 and "invalid choice: 'jax'" in r.stderr


def test_test_requires_a_checkpoint():
    r = run("test", "-c", "configs/demo.yml")
    assert r.returncode == 2
    assert r.stderr.strip() == "test.sh: --resume CKPT is required (the checkpoint to evaluate)"
