"""common/deploy: infer_cfg.yml from the demo config, preprocessing from it against the eval transforms, batching
against the training collate, input globbing, splitting the program's output, drawing."""
import os

import numpy as np
import pytest
from PIL import Image

from common.data.build import build_dataset
from common.data.coco import read_image
from common.data.collate import collate
from common.deploy.cli import find_images, split_detections
from common.deploy.draw import PALETTE, draw_detections
from common.deploy.infer_cfg import (build_infer_cfg, load_model_config, parse_infer_cfg, read_infer_cfg,
                                     write_infer_cfg)
from common.deploy.preprocess import make_batch, preprocess
from common.errors import UserError
from tests.conftest import ROOT

DEMO = os.path.join(ROOT, "configs", "demo.yml")


@pytest.fixture(scope="module")
def demo(tiny_data):
    """(config, class names, infer_cfg) of configs/demo.yml on the tiny dataset, eval short side 160."""
    cfg, names = load_model_config(DEMO, tiny_data + ["data.val.size=160"], export=True)
    return cfg, names, build_infer_cfg(cfg, names)


def test_infer_cfg_has_what_paddledetection_reads(demo):
    cfg, names, infer_cfg = demo
    assert names == ["circle", "ring", "triangle", "rectangle", "star", "cross"]  # the demo's categories, by id
    assert cfg.model.num_classes == 6 and cfg.model.deform_attn_backend == "reference"
    assert {k: infer_cfg[k] for k in ("mode", "arch", "min_subgraph_size", "use_dynamic_shape", "draw_threshold",
                                      "metric", "label_list")} == {
        "mode": "paddle", "arch": "DETR", "min_subgraph_size": 3, "use_dynamic_shape": True, "draw_threshold": 0.5,
        "metric": "COCO", "label_list": names}
    assert infer_cfg["Preprocess"] == [
        {"type": "Resize", "target_size": [160, cfg.data.val.max_size], "keep_ratio": True, "interp": 1},
        {"type": "NormalizeImage", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "is_scale": True,
         "norm_type": "mean_std"},
        {"type": "Permute"}]


def test_infer_cfg_round_trip_and_errors(demo, tmp_path):
    infer_cfg = demo[2]
    write_infer_cfg(infer_cfg, str(tmp_path))
    assert read_infer_cfg(str(tmp_path)) == infer_cfg
    with pytest.raises(UserError, match="missing label_list"):
        parse_infer_cfg("mode: paddle\narch: DETR\ndraw_threshold: 0.5\nPreprocess: []\n", "x.yml")
    with pytest.raises(UserError, match="infer_cfg.yml not found"):
        read_infer_cfg(str(tmp_path / "nothing"))


def test_class_names_need_the_annotations(tiny_data):
    with pytest.raises(UserError, match="data.val.ann_file"):
        load_model_config(DEMO, tiny_data + ["data.val.ann_file=/nonexistent.json",
                                             "data.train.ann_file=/nonexistent.json"])


def test_preprocess_equals_the_eval_transforms(demo):
    cfg, _, infer_cfg = demo
    dataset = build_dataset(cfg.data, "val", train=False)
    ops = infer_cfg["Preprocess"]
    samples = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        pixels, im_shape, scale_factor = preprocess(read_image(dataset.image_path(index)), ops)
        np.testing.assert_array_equal(pixels, image)  # bit for bit: same resize rule, resampling and arithmetic
        np.testing.assert_array_equal(im_shape, target["size"])
        np.testing.assert_array_equal(np.floor(im_shape / scale_factor + 0.5), target["orig_size"])
        samples.append(((pixels, im_shape, scale_factor), (image, target)))
    batch = make_batch([s for s, _ in samples], ops)
    expected = collate([t for _, t in samples])
    np.testing.assert_array_equal(batch["image"], expected["images"])
    h, w = batch["image"].shape[2:]
    mask = (np.arange(h)[None, :, None] >= batch["im_shape"][:, 0, None, None]) | \
           (np.arange(w)[None, None, :] >= batch["im_shape"][:, 1, None, None])
    np.testing.assert_array_equal(mask, expected["masks"])  # what DeployModel rebuilds from im_shape


def test_pad_stride_pads_the_batch_to_a_multiple(demo):
    ops = demo[2]["Preprocess"] + [{"type": "PadStride", "stride": 32}]
    sample = preprocess(Image.new("RGB", (300, 200)), ops)
    batch = make_batch([sample], ops)
    assert batch["image"].shape == (1, 3, 160, 256) and batch["im_shape"].tolist() == [[160, 240]]
    with pytest.raises(UserError, match="'Pad' is not supported"):
        preprocess(Image.new("RGB", (30, 20)), [{"type": "Pad"}])


def test_find_images(tmp_path):
    for name in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    folder = [str(tmp_path / "a.jpg"), str(tmp_path / "b.png")]
    assert find_images([str(tmp_path)]) == folder
    assert find_images([str(tmp_path / "*.png"), str(tmp_path / "b.png")]) == folder[1:]
    with pytest.raises(UserError, match="no such file"):
        find_images([str(tmp_path / "*.gif")])


def test_split_detections():
    bbox = np.arange(30, dtype=np.float32).reshape(5, 6)
    parts = split_detections(bbox, np.array([2, 3], np.int32))
    assert [len(p["scores"]) for p in parts] == [2, 3]
    np.testing.assert_array_equal(parts[1]["boxes"], bbox[2:, 2:])
    assert parts[0]["labels"].tolist() == [0, 6] and parts[0]["labels"].dtype == np.int64


def test_draw_detections_draws_boxes_in_class_colours():
    image = Image.new("RGB", (120, 100))
    out = draw_detections(image, np.array([[10.0, 40.0, 60.0, 90.0]]), np.array([0.9]), np.array([2]), ["a", "b", "c"])
    pixels = np.asarray(out)
    assert tuple(pixels[90, 35]) == PALETTE[2] and tuple(pixels[65, 10]) == PALETTE[2]  # bottom and left edges
    assert tuple(pixels[65, 35]) == (0, 0, 0)  # inside stays untouched
    assert (pixels[20:40, 10:60] > 200).all(axis=-1).any()  # white label text above the box
    assert not np.asarray(image).any()  # the input is not modified
