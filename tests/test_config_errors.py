"""Every kind of config mistake ends `train.sh` with one line on stderr naming what to fix (exit 2 for configs,
flags and the environment; 1 for unreadable inputs found later), run in-process through common.launch.main."""
import os

import pytest
import yaml

from common import launch


def train(capsys, *argv):
    """(exit code, stderr lines) of `train.sh argv`."""
    code = launch.main(["train", *argv])
    return code, capsys.readouterr().err.strip().splitlines()


def one_line(lines, *words):
    assert lines and lines[-1].startswith("train.sh: "), lines
    assert not any("Traceback" in x for x in lines), lines
    for w in words:
        assert w in lines[-1], (w, lines[-1])


@pytest.fixture
def config(tmp_path, tiny):
    """A config file inheriting the demo config, plus the tiny overrides (as -o arguments)."""
    def write(**data):
        path = tmp_path / "my.yml"
        path.write_text(yaml.safe_dump(dict({"_base_": os.path.abspath("configs/demo.yml")}, **data)))
        return ["-c", str(path), "-o", *tiny, f"output_dir={tmp_path / 'out'}"]
    return write


@pytest.mark.parametrize("data, override, words", [
    ({"train": {"epohcs": 2}}, [], ["my.yml", "unknown key 'train.epohcs'", "did you mean 'train.epochs'"]),
    ({}, ["train.nope=1"], ["-o train.nope=1", "unknown key 'train.nope'"]),
    ({"train": {"epochs": "two"}}, [], ["my.yml", "train.epochs", "expected int", "'two'"]),
    ({}, ["train.lr=fast"], ["-o train.lr=fast", "train.lr", "expected float"]),
    ({"data": {"invalid": "ignore"}}, [], ["my.yml", "data.invalid", "one of ['strict', 'skip']"]),
    ({}, ["model.postprocess.nms_iou=8"], ["-o model.postprocess.nms_iou=8", "expected a value in (0, 1], got 8"]),
    ({"train": {"lr_gamma": 0}}, [], ["my.yml", "train.lr_gamma", "expected a value in (0, inf), got 0"]),
    ({"_base_": "missing_base.yml"}, [], ["missing_base.yml"]),
])
def test_bad_keys_and_values(capsys, config, data, override, words):
    code, lines = train(capsys, *config(**data), *override)
    assert code == 2
    one_line(lines, *words)


def test_missing_files(capsys, tmp_path, config):
    code, lines = train(capsys, "-c", str(tmp_path / "nope.yml"))
    assert code == 2
    one_line(lines, "config file not found", "nope.yml")
    for key, what in [("data.train.ann_file", "no such file"), ("data.val.img_dir", "no such folder")]:
        code, lines = train(capsys, *config(), f"{key}={tmp_path / 'absent'}")
        assert code == 2
        one_line(lines, f"{key}: {what} '{tmp_path / 'absent'}'")
    code, lines = train(capsys, *config(), "-r", str(tmp_path / "absent.pth"))
    assert code == 2
    one_line(lines, f"checkpoint not found: {tmp_path / 'absent.pth'}")
    code, lines = train(capsys, *config(), f"model.backbone.pretrained={tmp_path / 'absent.pth'}")
    assert code == 1
    one_line(lines, "model.backbone.pretrained: cannot read", "absent.pth")


def test_output_dir_that_cannot_be_written(capsys, tmp_path, config, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, lines = train(capsys, *config(), f"output_dir={blocker / 'out'}")
    assert code == 2
    one_line(lines, f"output_dir '{blocker / 'out'}' cannot be created")
    # Not writable (root ignores permission bits, so os.access says so here)
    monkeypatch.setattr(os, "access", lambda path, mode: not str(path).endswith("readonly"))
    code, lines = train(capsys, *config(), f"output_dir={tmp_path / 'readonly'}")
    assert code == 2
    one_line(lines, f"output_dir '{tmp_path / 'readonly'}' is not writable", "-o output_dir=DIR")


def test_framework_not_installed(capsys, config, monkeypatch):
    monkeypatch.setitem(launch.FRAMEWORKS, "paddle", "paddlepaddle_not_here")
    code, lines = train(capsys, "--framework", "paddle", *config())
    assert code == 2
    one_line(lines, "--framework paddle", "'paddlepaddle_not_here' package is not installed", "sh env_run.sh")
