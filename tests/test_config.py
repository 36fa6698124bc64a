"""Config inheritance, overrides and the errors that name the key and the file."""
import glob
import os

import pytest
import yaml

from common.config import ConfigError, dump_config, load_config, require
from common.config.fields import Field as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCHEMA = {
    "name": F(str, "x", "a name"),
    "train": {
        "lr": F(float, 1e-4, "learning rate", bounds="(0, inf)"),
        "epochs": F(int, 12, "epochs"),
        "steps": F(list, [11], "lr drops", items=int, bounds="[0, inf)"),
        "prob": F(float, 0.5, "a probability", bounds="[0, 1]"),
        "amp": F(bool, False, "mixed precision"),
    },
    "model": {
        "kind": F(str, "a", "kind", choices=["a", "b"]),
        "depth": F(int, None, "optional depth"),
        "backbone": {"name": F(str, "resnet50", "backbone"), "frozen": F(int, 1, "frozen stages")},
    },
    "need": F(str, None, "must be given", required=False),
}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_defaults_fill_everything(tmp_path):
    cfg = load_config(write(tmp_path / "a.yml", {}), schema=SCHEMA)
    assert cfg.train.lr == 1e-4 and cfg.train.epochs == 12 and cfg.model.backbone.name == "resnet50"
    assert cfg.model.depth is None
    # A mutable default is copied: changing one config does not change the next one.
    cfg.train.steps.append(99)
    assert load_config(str(tmp_path / "a.yml"), schema=SCHEMA).train.steps == [11]


def test_base_inheritance_order_and_deep_merge(tmp_path):
    write(tmp_path / "base" / "one.yml", {"train": {"lr": 1.0, "epochs": 1}, "model": {"backbone": {"frozen": 0}}})
    write(tmp_path / "base" / "two.yml", {"train": {"lr": 2.0}, "model": {"kind": "b"}})
    path = write(tmp_path / "cfg.yml", {"_base_": ["base/one.yml", "base/two.yml"],
                                        "model": {"backbone": {"name": "resnet18"}}})
    cfg = load_config(path, schema=SCHEMA)
    assert cfg.train.lr == 2.0          # later base wins
    assert cfg.train.epochs == 1        # earlier base kept where not overridden
    assert cfg.model.kind == "b"
    assert cfg.model.backbone.name == "resnet18" and cfg.model.backbone.frozen == 0  # deep merge


def test_nested_bases_and_string_base(tmp_path):
    write(tmp_path / "b0.yml", {"train": {"epochs": 3}})
    write(tmp_path / "sub" / "b1.yml", {"_base_": "../b0.yml", "train": {"lr": 0.5}})
    cfg = load_config(write(tmp_path / "c.yml", {"_base_": "sub/b1.yml"}), schema=SCHEMA)
    assert (cfg.train.epochs, cfg.train.lr) == (3, 0.5)


def test_overrides_are_yaml_typed_and_win(tmp_path):
    path = write(tmp_path / "c.yml", {"train": {"lr": 1.0}})
    cfg = load_config(path, ["train.lr=3e-4", "train.steps=[20, 30]", "train.amp=true",
                             "model.backbone.name=resnet34", "model.depth=null"], schema=SCHEMA)
    assert cfg.train.lr == 3e-4 and cfg.train.steps == [20, 30] and cfg.train.amp is True
    assert cfg.model.backbone.name == "resnet34"


def test_int_accepted_for_float(tmp_path):
    assert load_config(write(tmp_path / "c.yml", {"train": {"lr": 1}}), schema=SCHEMA).train.lr == 1


@pytest.mark.parametrize("data, words", [
    ({"train": {"lrr": 1.0}}, ["unknown key 'train.lrr'", "did you mean 'train.lr'"]),
    ({"trian": {}}, ["unknown key 'trian'", "did you mean 'train'"]),
    ({"train": {"epochs": "ten"}}, ["train.epochs", "expected int", "'ten'"]),
    ({"train": {"epochs": 1.5}}, ["train.epochs", "expected int"]),
    ({"train": {"amp": "yes"}}, ["train.amp", "expected bool"]),
    ({"train": {"steps": [1, "x"]}}, ["train.steps", "element 'x'"]),
    ({"train": 3}, ["train", "expected a mapping"]),
    ({"model": {"kind": "c"}}, ["model.kind", "one of ['a', 'b']"]),
    ({"train": {"lr": None}}, ["train.lr", "got null"]),
    ({"train": {"lr": 0}}, ["train.lr", "expected a value in (0, inf), got 0"]),
    ({"train": {"lr": -1e-4}}, ["train.lr", "expected a value in (0, inf), got -0.0001"]),
    ({"train": {"lr": float("nan")}}, ["train.lr", "expected a value in (0, inf), got nan"]),
    ({"train": {"prob": 1.5}}, ["train.prob", "expected a value in [0, 1], got 1.5"]),
    ({"train": {"steps": [3, -1]}}, ["train.steps", "expected every element in [0, inf), got -1"]),
])
def test_errors_name_key_and_file(tmp_path, data, words):
    path = write(tmp_path / "bad.yml", data)
    with pytest.raises(ConfigError) as e:
        load_config(path, schema=SCHEMA)
    msg = str(e.value)
    assert path in msg
    for w in words:
        assert w in msg


def test_bounds_are_inclusive_or_open_as_written(tmp_path):
    ok = {"train": {"lr": 1e-9, "prob": 0, "steps": [0, 5]}}
    assert load_config(write(tmp_path / "ok.yml", ok), schema=SCHEMA).train.prob == 0
    assert load_config(write(tmp_path / "one.yml", {"train": {"prob": 1}}), schema=SCHEMA).train.prob == 1
    for bad in ("<0, 1>", "[0 1]", ""):
        with pytest.raises(ValueError, match="not an interval"):
            F(float, 0.5, "x", bounds=bad)


def test_error_in_base_names_the_base_file(tmp_path):
    base = write(tmp_path / "base.yml", {"train": {"epochs": "x"}})
    path = write(tmp_path / "c.yml", {"_base_": "base.yml"})
    with pytest.raises(ConfigError, match=f"{base}: train.epochs"):
        load_config(path, schema=SCHEMA)


def test_error_in_override_names_the_override(tmp_path):
    path = write(tmp_path / "c.yml", {})
    with pytest.raises(ConfigError, match=r"-o train.epochs=abc: train.epochs: expected int"):
        load_config(path, ["train.epochs=abc"], schema=SCHEMA)
    with pytest.raises(ConfigError, match=r"unknown key 'train.nope'"):
        load_config(path, ["train.nope=1"], schema=SCHEMA)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["train.lr"], schema=SCHEMA)


def test_missing_file_bad_yaml_and_cycles(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.yml"), schema=SCHEMA)
    with pytest.raises(ConfigError, match="a _base_ of"):
        load_config(write(tmp_path / "c.yml", {"_base_": "missing.yml"}), schema=SCHEMA)
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path / "y.yml", "train: {lr: [1,\n"), schema=SCHEMA)
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path / "l.yml", "- 1\n- 2\n"), schema=SCHEMA)
    write(tmp_path / "x.yml", {"_base_": "z.yml"})
    with pytest.raises(ConfigError, match="cycle"):
        load_config(write(tmp_path / "z.yml", {"_base_": "x.yml"}), schema=SCHEMA)


def test_required_keys(tmp_path):
    schema = dict(SCHEMA, must=F(str, None, "the thing", required=True))
    path = write(tmp_path / "c.yml", {})
    with pytest.raises(ConfigError, match=f"{path}: missing required key 'must'"):
        load_config(path, schema=schema)
    assert load_config(path, ["must=ok"], schema=schema).must == "ok"
    # require(): checked where a value is needed, naming the key and the file.
    cfg = load_config(path, ["must=ok"], schema=schema)
    with pytest.raises(ConfigError, match=f"{path}: 'need' must be set"):
        require(cfg, "need")
    assert require(cfg, "train.epochs") == 12


def test_dump_round_trip(tmp_path):
    cfg = load_config(write(tmp_path / "c.yml", {"train": {"lr": 0.5}}), ["model.kind=b"], schema=SCHEMA)
    out = str(tmp_path / "resolved.yml")
    dump_config(cfg, out)
    again = load_config(out, schema=SCHEMA)
    assert {k: v for k, v in again.items() if k != "_config_file"} == \
        {k: v for k, v in cfg.items() if k != "_config_file"}


def test_every_project_config_loads_with_the_real_schema():
    files = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml")))
    assert files, "no configs found"
    for path in files:
        cfg = load_config(path)
        assert cfg.train.epochs > 0, path
