"""The ONNX export of the archs other than dac_detr (Conditional DETR, DAB-DETR, DN-Deformable-DETR, Plain-DETR,
SAP-DETR): each tiny demo model exports, and onnxruntime gives the eager deploy program's detections on one image of
each of two sizes and on both padded into one batch (tolerances of tests/torch_impl/test_torch_export_onnx.py)."""
import os

import pytest
import torch

from common.data.build import build_dataset
from common.data.coco import read_image
from common.deploy.infer_cfg import load_model_config
from common.deploy.preprocess import make_batch, preprocess
from tests.conftest import ROOT
from tests.torch_impl.test_torch_export_onnx import assert_same_detections
from torch_impl import export_onnx
from torch_impl.checkpoint import save_checkpoint
from torch_impl.models.build import build_model
from torch_impl.predictor import EagerPredictor, Predictor, load_deploy_model

CONFIGS = ["demo_conditional_detr.yml", "demo_dab_detr.yml", "demo_dn_dab_deformable_detr.yml", "demo_plain_detr.yml",
           "demo_sap_detr.yml"]
SMALL = ["model.hidden_dim=32", "model.enc_layers=1", "model.dec_layers=2", "model.dim_feedforward=64",
         "model.num_queries=20", "model.postprocess.num_select=20", "data.val.size=128"]


@pytest.mark.parametrize("config", CONFIGS)
def test_onnxruntime_matches_eager(config, tiny_data, tmp_path):
    small = [o for o in SMALL if "plain" not in config or not o.startswith("model.enc_layers")]  # no encoder
    small += ["model.sap.grid=[5, 4]"] if "sap" in config else []  # 20 grid cells
    path, overrides = os.path.join(ROOT, "configs", config), small + tiny_data
    cfg, _ = load_model_config(path, overrides)
    torch.manual_seed(0)
    ckpt, onnx_path = str(tmp_path / "model.pth"), str(tmp_path / "model.onnx")
    save_checkpoint(ckpt, build_model(cfg)[0])
    assert export_onnx.main(["-c", path, "--weights", ckpt, "--output", onnx_path, "-o", *overrides]) == 0
    ort = Predictor(onnx_path)
    eager = EagerPredictor(load_deploy_model(path, ckpt, overrides, export=True)[0])
    dataset = build_dataset(cfg.data, "val", train=False)
    a, b = (read_image(dataset.image_path(i)) for i in range(2))
    assert a.size != b.size
    ops = ort.infer_cfg["Preprocess"]
    for images in ([a], [b], [a, b]):
        inputs = make_batch([preprocess(im, ops) for im in images], ops)
        assert_same_detections(ort(inputs), eager(inputs))
