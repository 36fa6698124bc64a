"""python -m convert.check on the one-stage demo configs (Conditional DETR, DAB-DETR, DAB-Deformable-DETR,
DN-Deformable-DETR, SAP-DETR): the same weights in both trees agree on every decoder layer; a corrupted weight makes
it exit non-zero."""
import os

import pytest
import torch

from convert.check import main
from convert.models import build_torch, resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["demo_conditional_detr.yml", "demo_dab_detr.yml", "demo_dab_deformable_detr.yml",
           "demo_dn_dab_deformable_detr.yml", "demo_sap_detr.yml"]
MODEL = ["model.num_classes=6"]  # the demo data's classes (the check reads images itself)


def _weights(tmp_path, config):
    model = build_torch(resolve_config(config, MODEL), seed=0)
    heads = model.bbox_embed if isinstance(model.bbox_embed, torch.nn.ModuleList) else [model.bbox_embed]
    with torch.no_grad():  # non-zero box deltas (the release starts them at 0): boxes depend on the decoder
        for head in heads:
            head.layers[-1].weight.normal_(0, 0.05)
    path = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def check(*argv):
    return main([str(a) for a in argv] + ["-o"] + MODEL)


@pytest.mark.parametrize("config", CONFIGS)
def test_demo_model_agrees_and_a_corrupted_weight_fails(config, tmp_path, capsys):
    demo = os.path.join(ROOT, "configs", config)
    weights = _weights(tmp_path, demo)
    assert check("-c", demo, "--weights", weights, "--images", 3, "--size", 96, "--backends", "reference") == 0
    out = capsys.readouterr().out
    assert "two-stage top-k order: n/a (one-stage model)" in out
    rows = [line for line in out.splitlines() if line.startswith("reference  dec")]
    assert len(rows) == 6 and all(line.endswith("yes") for line in rows)  # 3 layers x (logits, boxes)
    assert "reference  top-100 detections agreeing: 300/300 (100.00%)" in out
    assert "result: PASS (0 above tolerance)" in out

    code = check("-c", demo, "--weights", weights, "--images", 2, "--size", 96, "--backends", "reference",
                 "--corrupt", "transformer.decoder.layers.1.linear2.weight")
    out = capsys.readouterr().out
    assert code == 1 and "result: FAIL" in out
    dec0 = [line for line in out.splitlines() if line.startswith("reference  dec0 ")]
    dec1 = [line for line in out.splitlines() if line.startswith("reference  dec1 ")]
    assert all(line.endswith("yes") for line in dec0) and any(line.endswith("NO") for line in dec1)
