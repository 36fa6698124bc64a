"""The PaddleDetection-format export of the archs other than dac_detr (Conditional DETR, DAB-DETR,
DN-Deformable-DETR, Plain-DETR, SAP-DETR): each tiny demo model exports, and paddle.inference (oneDNN off) gives
the dynamic-graph deploy program's detections on one image of each of two sizes and on both padded into one batch
(tolerances of tests/paddle_impl/test_paddle_export.py)."""
import os

import paddle
import pytest

from common.data.build import build_dataset
from common.data.coco import read_image
from common.deploy.infer_cfg import load_model_config
from common.deploy.preprocess import make_batch, preprocess
from paddle_impl import export
from paddle_impl.checkpoint import save_checkpoint
from paddle_impl.models.build import build_model
from paddle_impl.predictor import EagerPredictor, Predictor, load_deploy_model
from tests.conftest import ROOT
from tests.paddle_impl.test_paddle_export import assert_same_detections

CONFIGS = ["demo_conditional_detr.yml", "demo_dab_detr.yml", "demo_dn_dab_deformable_detr.yml", "demo_plain_detr.yml",
           "demo_sap_detr.yml"]
SMALL = ["model.hidden_dim=32", "model.enc_layers=1", "model.dec_layers=2", "model.dim_feedforward=64",
         "model.num_queries=20", "model.postprocess.num_select=20", "data.val.size=128"]


@pytest.mark.parametrize("config", CONFIGS)
def test_inference_matches_dynamic_graph(config, tiny_data, tmp_path):
    small = [o for o in SMALL if "plain" not in config or not o.startswith("model.enc_layers")]  # no encoder
    small += ["model.sap.grid=[5, 4]"] if "sap" in config else []  # 20 grid cells
    path, overrides = os.path.join(ROOT, "configs", config), small + tiny_data
    cfg, _ = load_model_config(path, overrides)
    paddle.seed(0)
    ckpt, folder = str(tmp_path / "model.pdparams"), str(tmp_path / "export")
    save_checkpoint(ckpt, build_model(cfg)[0])
    assert export.main(["-c", path, "--weights", ckpt, "--output_dir", folder, "-o", *overrides]) == 0
    predictor = Predictor(folder, onednn=False)
    eager = EagerPredictor(load_deploy_model(path, ckpt, overrides, export=True)[0])
    dataset = build_dataset(cfg.data, "val", train=False)
    a, b = (read_image(dataset.image_path(i)) for i in range(2))
    assert a.size != b.size
    ops = predictor.infer_cfg["Preprocess"]
    for images in ([a], [b], [a, b]):
        inputs = make_batch([preprocess(im, ops) for im in images], ops)
        assert_same_detections(predictor(inputs), eager(inputs))
