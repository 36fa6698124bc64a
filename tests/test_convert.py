"""python -m convert: torch <-> Paddle for every config, bit-exact round trips, strict errors, safetensors,
num_classes inference, torchvision backbones."""
import glob
import os

import numpy as np
import paddle
import pytest
import torch

from convert import files
from convert.__main__ import main
from convert.models import build_paddle, build_torch, paddle_spec, resolve_config, torch_spec
from convert.rules import paddle_to_torch, torch_to_paddle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml")))
DEMO = os.path.join(ROOT, "configs", "demo.yml")
R50 = os.path.join(ROOT, "configs", "dac_cdn_ice_r50_12ep.yml")


def random_state(spec, seed=0):
    """Random arrays of every {name: shape} (float32, or int64 for BatchNorm counters)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, shape in spec.items():
        if k.endswith("num_batches_tracked"):
            out[k] = np.asarray(rng.integers(1, 1000), np.int64)
        else:
            out[k] = rng.standard_normal(shape, dtype=np.float32)
    return out


def distinct_state(spec, seed=0):
    """Cheap stand-in for random_state on 200M-value models: every entry of a tensor differs (a transposed or
    shuffled copy cannot pass for the original), values shifted per tensor."""
    rng = np.random.default_rng(seed)
    return {k: (np.asarray(rng.integers(1, 1000), np.int64) if k.endswith("num_batches_tracked") else
                np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape) + np.float32(rng.random()))
            for k, shape in spec.items()}


def save_torch_checkpoint(path, arrays, **extra):
    torch.save(dict({"model": {k: torch.from_numpy(v) for k, v in arrays.items()}}, **extra), path)


def run(*argv):
    return main([str(a) for a in argv])


VERIFIED = {}  # state-dict layout (torch names + shapes, Paddle names + shapes + Linear set) -> config verified


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_both_directions_bit_exact(path):
    """The rule maps the torch model's state dict of every config onto the Paddle model's and back, exactly
    (buffers and frozen-BatchNorm statistics included); a Paddle-side state dict goes the other way and back.
    Configs whose models have the same layout (12 / 24 epochs; the parameter-free dac / loss switches) share
    one verification: the conversion is a function of that layout only."""
    cfg = resolve_config(path, ["model.num_classes=91"])
    spec_t, (spec_p, linear) = torch_spec(cfg), paddle_spec(cfg)
    assert len(spec_t) == len(spec_p) and linear and set(linear) <= set(spec_p)
    if cfg["model"]["backbone"]["name"].startswith("resnet") and cfg["model"]["backbone"]["norm"] == "frozen_bn":
        assert "backbone.body.layer1.0.bn1.running_var" in spec_t and "backbone.body.layer1.0.bn1._variance" in spec_p
    layout = (tuple(sorted(spec_t.items())), tuple(sorted(spec_p.items())), tuple(sorted(linear)))
    if layout in VERIFIED:
        return
    big = sum(int(np.prod(v)) for v in spec_t.values()) > 100_000_000  # Swin-L: 219M
    arrays = (distinct_state if big else random_state)(spec_t)
    pd = torch_to_paddle(arrays, spec_p, linear)
    assert {k: v.shape for k, v in pd.items()} == spec_p
    back = paddle_to_torch(pd, spec_t, linear)
    assert back.keys() == arrays.keys()
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
    del pd, back, arrays
    pd_arrays = (distinct_state if big else random_state)(spec_p, seed=1)
    again = torch_to_paddle(paddle_to_torch(pd_arrays, spec_t, linear), spec_p, linear)
    for k, v in pd_arrays.items():
        assert np.array_equal(again[k], v), k
    VERIFIED[layout] = os.path.basename(path)


def test_shape_only_builds_match_real_models():
    """The converter reads model layouts from uninitialized builds (torch meta device, paddle.LazyGuard); they
    equal the real models'."""
    from convert.frameworks import paddle_linear_weights

    cfg = resolve_config(DEMO, ["model.num_classes=6"])
    assert torch_spec(cfg) == {k: tuple(v.shape) for k, v in build_torch(cfg).state_dict().items()}
    pm = build_paddle(cfg)
    assert paddle_spec(cfg) == ({k: tuple(v.shape) for k, v in pm.state_dict().items()}, paddle_linear_weights(pm))


@pytest.mark.parametrize("config", [DEMO, R50], ids=os.path.basename)
def test_cli_round_trip_torch_paddle_torch(config, tmp_path, capsys):
    """Files: a project checkpoint (.pth with optimizer) -> .pdparams -> .pth is byte-identical in every tensor,
    the .pdparams loads strictly into the Paddle model and the .pth into the torch model."""
    from paddle_impl.checkpoint import load_weights as load_paddle
    from torch_impl.checkpoint import load_weights as load_torch

    cfg = resolve_config(config, ["model.num_classes=6"])
    arrays = random_state(torch_spec(cfg))
    src, mid, dst = tmp_path / "a.pth", tmp_path / "b.pdparams", tmp_path / "c.pth"
    save_torch_checkpoint(src, arrays, optimizer={"state": {}}, epoch=3)
    # demo.yml leaves model.num_classes unset: it is read from the weights (6 classes)
    extra = [] if config == DEMO else ["-o", "model.num_classes=6"]
    assert run("torch2paddle", "-c", config, src, mid, *extra) == 0
    out = capsys.readouterr().out
    assert "optimizer / scheduler state is not converted" in out and "no .pdopt written" in out
    assert run("paddle2torch", "-c", config, mid, dst, *extra) == 0
    back = torch.load(dst, weights_only=True)
    assert back["meta"]["framework"] == "torch" and back["meta"]["num_classes"] == "6"
    for k, v in arrays.items():
        assert np.array_equal(back["model"][k].numpy(), v), k
    load_torch(build_torch(cfg), str(dst))
    pm = build_paddle(cfg)
    load_paddle(pm, str(mid))
    w = pm.state_dict()["transformer.decoder.layers.0.linear1.weight"].numpy()
    assert np.array_equal(w, arrays["transformer.decoder.layers.0.linear1.weight"].T)  # Linear: [in, out]


@pytest.fixture(scope="module")
def demo_ckpt(tmp_path_factory):
    """A torch checkpoint of the demo model (6 classes) and its arrays."""
    cfg = resolve_config(DEMO, ["model.num_classes=6"])
    arrays = random_state(torch_spec(cfg), seed=2)
    path = tmp_path_factory.mktemp("ckpt") / "demo.pth"
    save_torch_checkpoint(path, arrays)
    return path, arrays


def _edited(tmp_path, arrays, name="edited.pth", drop=(), add=None, reshape=None):
    state = {k: v for k, v in arrays.items() if k not in drop}
    state.update(add or {})
    if reshape:
        state[reshape] = np.zeros(state[reshape].shape[0] + 1, np.float32)
    path = tmp_path / name
    save_torch_checkpoint(path, state)
    return path


@pytest.mark.parametrize("edit, expected", [
    (dict(drop=["transformer.level_embed"]), "1 missing in the file (e.g. ['transformer.level_embed'])"),
    (dict(add={"extra.weight": np.zeros(3, np.float32)}), "1 not in the target model (e.g. ['extra.weight'])"),
    (dict(reshape="class_embed.1.bias"), "class_embed.1.bias: (7,) vs (6,)"),
], ids=["missing", "unexpected", "shape"])
def test_strict_errors_name_the_keys(edit, expected, demo_ckpt, tmp_path, capsys):
    src = _edited(tmp_path, demo_ckpt[1], **edit)
    assert run("torch2paddle", "-c", DEMO, src, tmp_path / "out.pdparams", "-o", "model.num_classes=6") == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err
    assert not (tmp_path / "out.pdparams").exists()


def test_strict_error_on_paddle_side_and_config_hint(demo_ckpt, tmp_path, capsys):
    src, arrays = demo_ckpt
    mid = tmp_path / "demo.pdparams"
    assert run("torch2paddle", "-c", DEMO, src, mid) == 0
    state = paddle.load(str(mid))
    del state["transformer.encoder.layers.0.norm1.weight"]
    paddle.save(state, str(tmp_path / "cut.pdparams"))
    assert run("paddle2torch", "-c", DEMO, tmp_path / "cut.pdparams", tmp_path / "x.pth") == 2
    assert "transformer.encoder.layers.0.norm1.weight" in capsys.readouterr().err
    # wrong config values: the error says what the weights look like
    assert run("torch2paddle", "-c", DEMO, src, tmp_path / "y.pdparams", "-o", "model.num_queries=50", "-v") == 2
    err = capsys.readouterr().err
    assert "query_embed.weight: (100, 128) vs (50, 128)" in err and "model.num_queries=100" in err
    assert "  shape mismatch: query_embed.weight" in err  # -v lists every key


def test_num_classes_unset_and_not_in_weights(demo_ckpt, tmp_path, capsys):
    src = _edited(tmp_path, demo_ckpt[1], drop=["class_embed.0.weight"])
    assert run("torch2paddle", "-c", DEMO, src, tmp_path / "o.pdparams") == 2
    assert "pass -o model.num_classes=N" in capsys.readouterr().err


def test_usage_errors(demo_ckpt, tmp_path, capsys):
    src = demo_ckpt[0]
    assert run("torch2paddle", "-c", DEMO, src, tmp_path / "o.pth") == 2
    assert "the output must be a paddle file" in capsys.readouterr().err
    assert run("paddle2torch", "-c", DEMO, tmp_path / "none.pdparams", tmp_path / "o.pth") == 2
    assert "weight file not found" in capsys.readouterr().err
    assert run("torch2paddle", "-c", "configs/none.yml", src, tmp_path / "o.pdparams") == 2
    assert "config not found" in capsys.readouterr().err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert run("torch2paddle", "-c", DEMO, tmp_path / "junk.pth", tmp_path / "o.pdparams") == 2
    assert "cannot read" in capsys.readouterr().err


def test_safetensors_neutral_both_ways(demo_ckpt, tmp_path):
    """torch -> safetensors -> Paddle equals torch -> Paddle; Paddle -> safetensors -> torch equals the original."""
    src, arrays = demo_ckpt
    st = tmp_path / "w.safetensors"
    assert run("to-safetensors", "-c", DEMO, src, st) == 0
    neutral, meta = files.read_safetensors(str(st))
    assert meta["layout"] == "torch" and meta["source_framework"] == "torch" and meta["config"] == "demo.yml"
    assert all(np.array_equal(neutral[k], v) for k, v in arrays.items()) and neutral.keys() == arrays.keys()
    assert run("from-safetensors", "-c", DEMO, st, tmp_path / "a.pdparams") == 0
    assert run("torch2paddle", "-c", DEMO, src, tmp_path / "b.pdparams") == 0
    a, b = files.read_paddle(str(tmp_path / "a.pdparams")), files.read_paddle(str(tmp_path / "b.pdparams"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    st2 = tmp_path / "p.safetensors"
    assert run("to-safetensors", "-c", DEMO, tmp_path / "a.pdparams", st2) == 0
    assert files.read_safetensors(str(st2))[1]["source_framework"] == "paddle"
    assert run("from-safetensors", "-c", DEMO, st2, tmp_path / "c.pth") == 0
    back = torch.load(tmp_path / "c.pth", weights_only=True)["model"]
    assert all(np.array_equal(back[k].numpy(), v) for k, v in arrays.items())


def test_torchvision_backbone_for_both_trees(tmp_path, capsys):
    """A torchvision ResNet state dict (BatchNorm counters, fc) -> .pdparams / .safetensors that both trees'
    model.backbone.pretrained load, with the same values; a detector checkpoint is refused."""
    from paddle_impl.models.backbone import Backbone as PdBackbone, load_pretrained as pd_load
    from torch_impl.models.backbone import ResNet, load_pretrained as pt_load

    torch.manual_seed(0)
    tv = ResNet("resnet18", norm="bn")
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in tv.state_dict().items()}
    state.update({"fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000)})
    torch.save(state, tmp_path / "resnet18.pth")
    opts = ["-o", "model.backbone.norm=frozen_bn"]
    assert run("backbone", "-c", DEMO, tmp_path / "resnet18.pth", tmp_path / "r18.pdparams", *opts) == 0
    assert "model.backbone.pretrained=" in capsys.readouterr().out
    assert run("backbone", "-c", DEMO, tmp_path / "resnet18.pth", tmp_path / "r18.safetensors", *opts) == 0
    pd_body = PdBackbone("resnet18", frozen_stages=-1).body
    pd_load(pd_body, str(tmp_path / "r18.pdparams"))
    pt_body = ResNet("resnet18")
    pt_load(pt_body, str(tmp_path / "r18.safetensors"))
    pd_state = pd_body.state_dict()
    for k, v in pt_body.state_dict().items():
        assert np.array_equal(v.numpy(), state[k].numpy()), k
        pk = k.replace("running_mean", "_mean").replace("running_var", "_variance")
        assert np.array_equal(pd_state[pk].numpy(), state[k].numpy()), k
    assert run("backbone", "-c", DEMO, tmp_path / "resnet18.pth", tmp_path / "x.pdparams") == 2  # demo: gn
    assert "add -o model.backbone.norm=frozen_bn" in capsys.readouterr().err
    # the configured depth must match
    assert run("backbone", "-c", R50, tmp_path / "resnet18.pth", tmp_path / "x.pdparams") == 2
    assert "missing in the file" in capsys.readouterr().err
