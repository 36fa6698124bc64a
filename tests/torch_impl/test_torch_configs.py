"""Every config under configs/ builds a torch model; the R50 variants differ only where their switches say."""
import glob
import os

import pytest

from common.config import load_config
from torch_impl.models.build import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml")))
OFFICIAL_R50_PARAMS = 47_739_225  # DAC-DETR R50 cdn_ice release, 91 classes (official key list, aliases once)
# Swin-L (window 12) in place of R50: - the R50 convolutions (23,454,912) + the Swin-L trunk (195,200,820 = timm's
# swin_large_patch4_window12_384, 196,735,516, - head 1,537,000 - final norm 3,072 + the three output norms 5,376)
# - the input projections' narrower inputs (384/768/1536 instead of 512/1024/2048 channels into the 1x1 convs,
# 1536 instead of 2048 into the extra level's 3x3 conv).
SWINL_PARAMS = OFFICIAL_R50_PARAMS - 23_454_912 + 195_200_820 - 896 * 256 - 512 * 9 * 256


def build(path):
    cfg = load_config(path, ["model.num_classes=91", "model.backbone.pretrained=null"])
    model, criterion, _ = build_model(cfg)
    return cfg, model, criterion


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.basename(p))
def test_config_builds(path):
    cfg, model, criterion = build(path)
    n = sum(p.numel() for p in model.parameters())
    full = SWINL_PARAMS if "_swinl_" in os.path.basename(path) else OFFICIAL_R50_PARAMS
    if os.path.basename(path).startswith(("dac_", "dino_")):
        assert n == full  # the C-decoder and the loss type add no parameters
    elif os.path.basename(path).startswith("deformable_detr_"):
        assert n == full - 92 * 256  # no denoising: no label_enc
    assert any(k.startswith("loss_ce_c") for k in criterion.weight_dict) == cfg.model.dac.enabled
    assert any("_dn" in k for k in criterion.weight_dict) == cfg.model.dn.enabled
