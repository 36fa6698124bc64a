"""python -m convert import: released DAC-DETR checkpoints (synthetic, built from the documented key layout in
tests/fixtures/official_dac_detr_keys/), and the DINO and Deformable-DETR layouts derived from it."""
import argparse
import os

import numpy as np
import pytest
import torch

from convert import files
from convert.__main__ import main
from convert.models import resolve_config, torch_spec
from convert.official import fit_to_model, release_to_torch_names
from convert.rules import ConversionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = os.path.join(ROOT, "tests", "fixtures", "official_dac_detr_keys", "r50_deformplus_cdn_ice_keys.tsv")
CONFIG = {name: os.path.join(ROOT, "configs", f"{name}_r50_12ep.yml")
          for name in ("dac_cdn_ice", "dino", "deformable_detr")}
ALIAS = ("transformer.decoder.class_embed.", "transformer.decoder.bbox_embed.")


def official_layout():
    """[(key, shape)] of the release, in file order."""
    out = []
    with open(KEYS) as f:
        for line in f:
            key, shape, dtype = line.rstrip("\n").split("\t")
            assert dtype == "torch.float32"
            out.append((key, tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())))
    return out


@pytest.fixture(scope="module")
def release():
    """A synthetic release state dict: random tensors of the documented shapes, aliases sharing the top-level
    heads' values as in the release."""
    rng = np.random.default_rng(0)
    state = {}
    for key, shape in official_layout():
        if key.startswith(ALIAS):
            continue
        state[key] = rng.standard_normal(shape, dtype=np.float32)
    for key, _ in official_layout():
        if key.startswith(ALIAS):
            state[key] = state[key[len("transformer.decoder."):]]
    return state


@pytest.fixture(scope="module")
def release_file(release, tmp_path_factory):
    path = tmp_path_factory.mktemp("release") / "dac_detr_r50_cdn_ice_ep12.pth"
    args = argparse.Namespace(num_classes=91, num_queries=900, lr=2e-4, dataset_file="coco", two_stage=True)
    torch.save({"model": {k: torch.from_numpy(v) for k, v in release.items()}, "optimizer": {"state": {}},
                "lr_scheduler": {}, "epoch": 11, "args": args}, path)
    yield path
    path.unlink()  # 0.2 GB; the suite keeps its disk use near its largest test's (pyproject.toml)


def test_fixture_is_the_documented_layout(release):
    layout = official_layout()
    assert len(layout) == 632 and len({k for k, _ in layout if not k.startswith(ALIAS)}) == 576
    frozen_bn = (".bn", ".downsample.1.")  # buffers in the release (FrozenBatchNorm2d), not parameters
    assert sum(int(np.prod(s)) for k, s in layout if not k.startswith(ALIAS) and not any(b in k for b in frozen_bn)
               ) == 47_739_225


def test_import_release_into_both_trees(release, release_file, tmp_path, capsys):
    """The release's `model` entry (args Namespace in the file) -> .pth and .pdparams with the same values:
    backbone.0.body -> backbone.body, decoder head aliases checked and dropped; num_classes read from it."""
    out_pt, out_pd = tmp_path / "dac.pth", tmp_path / "dac.pdparams"
    assert main(["import", "-c", CONFIG["dac_cdn_ice"], str(release_file), str(out_pt)]) == 0
    out = capsys.readouterr().out
    assert "dropped 56 transformer.decoder.class_embed/bbox_embed aliases" in out
    assert "backbone.0.body.* -> backbone.body.*" in out and "args" in out
    model = torch.load(out_pt, weights_only=True)["model"]
    assert len(model) == 576
    for k, v in release.items():
        if not k.startswith(ALIAS):
            assert np.array_equal(model[k.replace("backbone.0.body.", "backbone.body.")].numpy(), v), k
    # the torch tree loads it strictly; the Paddle file has Paddle names and layouts
    from torch_impl.checkpoint import load_weights
    from torch_impl.models.build import build_model
    cfg = resolve_config(CONFIG["dac_cdn_ice"], ["model.num_classes=91"])
    load_weights(build_model(cfg)[0], str(out_pt))
    assert main(["import", "-c", CONFIG["dac_cdn_ice"], str(release_file), str(out_pd)]) == 0
    pd = files.read_paddle(str(out_pd))
    assert np.array_equal(pd["backbone.body.layer1.0.bn1._mean"],
                          release["backbone.0.body.layer1.0.bn1.running_mean"])
    assert np.array_equal(pd["class_embed.3.weight"], release["class_embed.3.weight"].T)


def test_release_given_to_torch2paddle_points_to_import(release_file, tmp_path, capsys):
    assert main(["torch2paddle", "-c", CONFIG["dac_cdn_ice"], str(release_file), str(tmp_path / "x.pdparams")]) == 2
    assert "first with `python -m convert import" in capsys.readouterr().err


def test_alias_that_differs_is_refused(release):
    state = dict(release)
    state["transformer.decoder.bbox_embed.2.layers.0.bias"] = state["bbox_embed.2.layers.0.bias"] + 1
    with pytest.raises(ConversionError, match="transformer.decoder.bbox_embed.2.layers.0.bias vs"):
        release_to_torch_names(state, 6)


def _spec(name, *overrides):
    cfg = resolve_config(CONFIG[name], ["model.num_classes=91", *overrides])
    return cfg, torch_spec(cfg)


def _fit(state, name, *overrides, skip=()):
    cfg, spec = _spec(name, *overrides)
    arrays, notes = release_to_torch_names(state, cfg["model"]["dec_layers"])
    init = {k: np.zeros(s, np.float32) for k, s in spec.items()}
    out, fit_notes = fit_to_model(arrays, spec, init, skip)
    return out, notes + fit_notes


def test_ddp_prefix_and_unknown_keys(release):
    state = {"module." + k: v for k, v in release.items()}
    state["module.transformer.extra_head.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ConversionError, match=r"1 keys the model does not have: transformer.extra_head.weight"):
        _fit(state, "dac_cdn_ice")
    out, notes = _fit(state, "dac_cdn_ice", skip=["transformer.extra_head.*"])
    assert any("module." in n for n in notes) and any("skipped 1 file keys" in n for n in notes)
    assert len(out) == 576


def deformable_detr_layout(release):
    """Deformable-DETR (two-stage + box refinement) as its release saves it: this layout without the
    denoising label embedding and the mixed-selection queries; 300 queries do not show in any shape."""
    return {k: v for k, v in release.items() if not k.startswith(("label_enc.", "query_embed."))}


def dino_layout(release):
    """DINO (4-scale R50) as its release saves it: proposal heads under transformer.enc_out_*, content queries
    as transformer.tgt_embed, query positions from transformer.decoder.ref_point_head (MLP 2D -> D -> D) instead
    of transformer.pos_trans*, a final transformer.decoder.norm; decoder heads shared (class_embed.0..5 are one
    tensor)."""
    rng = np.random.default_rng(1)
    state = {}
    for k, v in release.items():
        if k.startswith(("transformer.pos_trans", "class_embed.6.", "bbox_embed.6.",
                         "transformer.decoder.class_embed.6.", "transformer.decoder.bbox_embed.6.")):
            continue
        if k.startswith("query_embed."):
            k = "transformer.tgt_embed." + k[len("query_embed."):]
        state[k] = v
    for k in list(release):
        if k.startswith(("class_embed.6.", "bbox_embed.6.")):
            head, _, rest = k.partition(".6.")
            state[f"transformer.enc_out_{head}.{rest}"] = release[k]
    for i in range(6):  # shared decoder class head
        for p in ("weight", "bias"):
            shared = release[f"class_embed.0.{p}"]
            state[f"class_embed.{i}.{p}"] = state[f"transformer.decoder.class_embed.{i}.{p}"] = shared
    for name, shape in (("layers.0.weight", (256, 512)), ("layers.0.bias", (256,)), ("layers.1.weight", (256, 256)),
                        ("layers.1.bias", (256,))):
        state[f"transformer.decoder.ref_point_head.{name}"] = rng.standard_normal(shape, dtype=np.float32)
    state["transformer.decoder.norm.weight"] = np.ones(256, np.float32)
    state["transformer.decoder.norm.bias"] = np.zeros(256, np.float32)
    return state


def test_deformable_detr_layout(release):
    """Fits the deformable_detr config with the paper's settings; with the release's (mixed selection) config
    the missing queries are named."""
    state = deformable_detr_layout(release)
    out, notes = _fit(state, "deformable_detr", "model.mixed_selection=false", "model.num_queries=300")
    assert len(out) == 576 - 2 and np.array_equal(out["class_embed.6.weight"], release["class_embed.6.weight"])
    with pytest.raises(ConversionError, match=r"model keys missing in the file: query_embed.weight \(learned "):
        _fit(state, "deformable_detr")


def test_dino_layout_refused_then_skipped(release):
    """DINO's own parts are named and refused; --skip-keys loads the rest: the renamed proposal heads and
    content queries land where this model keeps them, pos_trans keeps its init."""
    state = dino_layout(release)
    with pytest.raises(ConversionError) as e:
        _fit(state, "dino")
    msg = str(e.value)
    assert "transformer.decoder.ref_point_head.layers.N.weight (DINO's per-layer query-position MLP" in msg
    assert "transformer.decoder.norm.weight (DINO's LayerNorm" in msg
    assert "4 model keys missing in the file: transformer.pos_trans.bias (the two-stage" in msg
    skip = ["transformer.decoder.ref_point_head.*", "transformer.decoder.norm.*", "transformer.pos_trans*"]
    out, notes = _fit(state, "dino", skip=skip)
    assert np.array_equal(out["class_embed.6.weight"], release["class_embed.6.weight"])
    assert np.array_equal(out["bbox_embed.6.layers.2.bias"], release["bbox_embed.6.layers.2.bias"])
    assert np.array_equal(out["query_embed.weight"], release["query_embed.weight"])
    assert np.array_equal(out["class_embed.4.weight"], release["class_embed.0.weight"])
    assert not out["transformer.pos_trans.weight"].any()  # the init given to fit_to_model
    assert any("keep their fresh initialization: transformer.pos_trans" in n for n in notes)


def test_fine_tune_on_other_classes_with_skip(release_file, tmp_path, capsys):
    """A COCO release into a 6-class model: the class heads and label embedding are refused by shape, then
    skipped on request (they keep the fresh init), through the command line."""
    out = tmp_path / "ft.pdparams"
    argv = ["import", "-c", CONFIG["dac_cdn_ice"], str(release_file), str(out), "-o", "model.num_classes=6"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "shape mismatches (file vs model)" in err and "class_embed" in err and "Traceback" not in err
    assert main(argv + ["--skip-keys", "class_embed.*", "label_enc.*"]) == 0
    assert "keep their fresh initialization" in capsys.readouterr().out
    assert files.read_paddle(str(out))["class_embed.0.weight"].shape == (256, 6)
