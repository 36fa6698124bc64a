"""Paddle deployment: the PaddleDetection-format export (program, parameters, infer_cfg.yml) run by
paddle.inference (oneDNN off) against the dynamic graph, the deploy program against the evaluation's PostProcess,
its NMS (multiclass_nms3 in the program) against the definition, the infer command.

Tolerances: boxes 1e-3 px, scores 1e-4, labels and counts equal (the issue's parity bar; measured exact).
"""
import json
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from common.data.build import build_dataset
from common.data.coco import read_image
from common.deploy.cli import split_detections
from common.deploy.infer_cfg import build_infer_cfg, load_model_config
from common.deploy.preprocess import make_batch, preprocess
from paddle_impl import export
from paddle_impl.checkpoint import save_checkpoint
from paddle_impl.models.build import build_model
from paddle_impl.models.deploy import nms_detections
from paddle_impl.models.postprocess import PostProcess
from paddle_impl.predictor import EagerPredictor, Predictor, load_deploy_model
from tests.conftest import ROOT, child_env
from tests.nms_case import NUM_SELECT, PRE_NMS_TOPK, check_against_definition

DEMO = os.path.join(ROOT, "configs", "demo.yml")


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
    """(overrides, checkpoint, export folder) of a freshly initialized tiny model, exported once."""
    out = tmp_path_factory.mktemp("paddle_export")
    cfg, _ = load_model_config(DEMO, tiny)
    paddle.seed(0)
    ckpt, folder = str(out / "tiny.pdparams"), str(out / "export")
    save_checkpoint(ckpt, build_model(cfg)[0])
    assert export.main(["-c", DEMO, "--weights", ckpt, "--output_dir", folder, "-o", *tiny]) == 0
    return tiny, ckpt, folder


@pytest.fixture(scope="module")
def val_images(tiny):
    cfg, _ = load_model_config(DEMO, tiny)
    dataset = build_dataset(cfg.data, "val", train=False)
    return [read_image(dataset.image_path(i)) for i in range(len(dataset))]


def by_detection(rows):
    """Rows (label, score, x1, y1, x2, y2) sorted by label then box: a random-init model's scores nearly tie, so
    rounding may swap neighbours in score order; the tiny model's K = 20 queries x 6 classes keeps every pair, so
    the sets, not the orders, must agree."""
    return rows[np.lexsort(rows[:, [5, 4, 3, 2, 0]].T)]


def assert_same_detections(got, expected):
    (bbox, num), (bbox_ref, num_ref) = got, expected
    np.testing.assert_array_equal(num, num_ref)
    for rows, ref in zip(np.split(bbox, np.cumsum(num)[:-1]), np.split(bbox_ref, np.cumsum(num_ref)[:-1])):
        assert (np.diff(rows[:, 1]) <= 0).all()  # best first
        rows, ref = by_detection(rows), by_detection(ref)
        np.testing.assert_array_equal(rows[:, 0], ref[:, 0])
        np.testing.assert_allclose(rows[:, 1], ref[:, 1], rtol=0, atol=1e-4)
        np.testing.assert_allclose(rows[:, 2:], ref[:, 2:], rtol=0, atol=1e-3)


def test_export_folder(exported, tiny):
    folder = exported[2]
    assert sorted(os.listdir(folder)) == ["infer_cfg.yml", "model.json", "model.pdiparams"]  # PIR program
    with open(os.path.join(folder, "model.json"), encoding="utf-8") as f:
        assert "multiclass_nms3" in f.read()  # demo.yml evaluates with NMS
    predictor = Predictor(folder, onednn=False)
    cfg, names = load_model_config(DEMO, tiny)
    assert predictor.infer_cfg == build_infer_cfg(cfg, names)
    assert predictor.predictor.get_input_names() == ["image", "im_shape", "scale_factor"]


def test_predictor_matches_dynamic_graph(exported, val_images):
    overrides, ckpt, folder = exported
    predictor = Predictor(folder, onednn=False)
    eager = EagerPredictor(load_deploy_model(DEMO, ckpt, overrides, export=True)[0])
    ops = predictor.infer_cfg["Preprocess"]
    a, b = val_images[0], val_images[1]
    assert a.size != b.size
    for images in ([a], [b], [a, b]):  # two sizes, then both padded into one batch of 2
        inputs = make_batch([preprocess(im, ops) for im in images], ops)
        bbox, num = predictor(inputs)
        assert bbox.shape == (num.sum(), 6) and num.shape == (len(images),) and num.dtype == np.int32
        assert_same_detections((bbox, num), eager(inputs))


# NMS tight enough and caps small enough to remove rows of a random-init model's detections (demo.yml's 0.8 and 300
# keep all 20 x 6): the program must read all three keys as PostProcess does
STRICT_NMS = ["model.postprocess.nms_iou=0.01", "model.postprocess.num_select=15", "model.postprocess.pre_nms_topk=50"]


def test_deploy_program_equals_postprocess(exported, val_images):
    overrides, ckpt, _ = exported
    deploy, cfg, _ = load_deploy_model(DEMO, ckpt, overrides + STRICT_NMS)
    ops = build_infer_cfg(cfg, ["x"] * 6)["Preprocess"]
    inputs = make_batch([preprocess(im, ops) for im in val_images], ops)
    with paddle.no_grad():
        got = split_detections(*(t.numpy() for t in deploy(*(paddle.to_tensor(inputs[k]) for k in
                                                              ("image", "im_shape", "scale_factor")))))
        h, w = inputs["image"].shape[2:]
        masks = ((np.arange(h)[None, :, None] >= inputs["im_shape"][:, 0, None, None])
                 | (np.arange(w)[None, None, :] >= inputs["im_shape"][:, 1, None, None]))
        orig = paddle.to_tensor([[im.height, im.width] for im in val_images])
        outputs = deploy.model(paddle.to_tensor(inputs["image"]), paddle.to_tensor(masks))
        expected = build_model(cfg)[2](outputs, orig)
        without_nms = PostProcess(num_select=15)(outputs, orig)
    assert any(not np.array_equal(e["scores"].numpy(), n["scores"].numpy()) for e, n in zip(expected, without_nms))
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g["labels"], e["labels"].numpy())
        np.testing.assert_array_equal(g["scores"], e["scores"].numpy())
        np.testing.assert_allclose(g["boxes"], e["boxes"].numpy(), rtol=0, atol=1e-4)


class NmsProgram(paddle.nn.Layer):
    """The deploy program's last step alone: (logits, boxes, orig_sizes) -> (bbox, bbox_num), with NMS."""

    def __init__(self, nms_iou):
        super().__init__()
        self.nms_iou = nms_iou

    def forward(self, logits, boxes, orig_sizes):
        return nms_detections(logits, boxes, orig_sizes, NUM_SELECT, self.nms_iou, PRE_NMS_TOPK)


def test_nms_in_paddle_inference_matches_the_definition(tmp_path):
    """multiclass_nms3 in paddle.inference keeps exactly the boxes greedy class-wise NMS keeps, image by image (a
    random-init model's boxes hardly overlap, so crowded outputs are fed to the post-processing alone)."""
    names, predictors = ["logits", "boxes", "orig_sizes"], {}

    def detect(logits, boxes, orig_sizes, nms_iou):
        if nms_iou not in predictors:
            spec = [paddle.static.InputSpec([None, *logits.shape[1:]], "float32", names[0]),
                    paddle.static.InputSpec([None, *boxes.shape[1:]], "float32", names[1]),
                    paddle.static.InputSpec([None, 2], "float32", names[2])]
            prefix = str(tmp_path / f"nms{nms_iou}")
            paddle.jit.save(paddle.jit.to_static(NmsProgram(nms_iou), full_graph=True), prefix, input_spec=spec)
            config = paddle.inference.Config(prefix + ".json", prefix + ".pdiparams")
            config.disable_gpu()
            config.disable_onednn()
            config.disable_glog_info()
            predictors[nms_iou] = paddle.inference.create_predictor(config)
        predictor = predictors[nms_iou]
        for name, value in zip(names, (logits, boxes, orig_sizes)):
            predictor.get_input_handle(name).copy_from_cpu(value)
        predictor.run()
        return tuple(predictor.get_output_handle(n).copy_to_cpu() for n in predictor.get_output_names())

    check_against_definition(detect)


def test_infer_command_on_a_folder(exported, tiny_data, tmp_path):
    overrides, ckpt, folder = exported
    images = next(o.split("=", 1)[1] for o in tiny_data if o.startswith("data.val.img_dir="))
    runs = {"export": ["--model_dir", folder], "eager": ["-c", DEMO, "--weights", ckpt, "-o", *overrides]}
    records = {}
    for name, model_args in runs.items():
        out = tmp_path / name
        r = subprocess.run([sys.executable, "-m", "paddle_impl.infer", *model_args, "--image", images, "--draw",
                            "--threshold", "0", "--output_dir", str(out)], cwd=ROOT, capture_output=True, text=True,
                           timeout=300, env=child_env(PYTHONPATH=ROOT))
        assert r.returncode == 0, r.stderr
        records[name] = json.loads((out / "results.json").read_text())
        assert sorted(os.listdir(out)) == ["000000.png", "000001.png", "000002.png", "results.json"]
    assert len(records["export"]) == 3 * 20 * 6  # threshold 0: all 20 x 6 rows of each image (NMS at 0.8 removes none)
    # eager: the kernel path of deformable attention; sorted, as in by_detection
    key = lambda r: (r["image_id"], r["category_id"], r["bbox"])  # noqa: E731
    for a, b in zip(sorted(records["export"], key=key), sorted(records["eager"], key=key)):
        assert (a["image_id"], a["category_id"], a["category_name"]) == (b["image_id"], b["category_id"],
                                                                          b["category_name"])
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=2e-3)  # 1e-3 px, plus the files' 4-decimal rounding
        assert abs(a["score"] - b["score"]) <= 2e-4  # 1e-4, plus 5-decimal rounding
