"""Every config under configs/ builds a torch model; the R50 variants differ only where their switches say."""
import glob
import os

import pytest

from common.config import load_config
from torch_impl.models.build import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml")))
OFFICIAL_R50_PARAMS = 47_739_225  # DAC-DETR R50 cdn_ice release, 91 classes (official key list, aliases once)


def build(path):
    cfg = load_config(path, ["model.num_classes=91", "model.backbone.pretrained=null"])
    model, criterion, _ = build_model(cfg)
    return cfg, model, criterion


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_builds(path):
    cfg, model, criterion = build(path)
    n = sum(p.numel() for p in model.parameters())
    if os.path.basename(path).startswith(("dac_", "dino_")):
        assert n == OFFICIAL_R50_PARAMS  # the C-decoder and the loss type add no parameters
    elif os.path.basename(path).startswith("deformable_detr_"):
        assert n == OFFICIAL_R50_PARAMS - 92 * 256  # no denoising: no label_enc
    assert any(k.startswith("loss_ce_c") for k in criterion.weight_dict) == cfg.model.dac.enabled
    assert any("_dn" in k for k in criterion.weight_dict) == cfg.model.dn.enabled
