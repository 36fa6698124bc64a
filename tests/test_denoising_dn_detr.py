"""DN-DETR's noise options of common/denoising.py (box_noise_form center_size, label_flip_prob ratio) against their
definitions, the unchanged defaults of the DAC-DETR configs, and model.dn for dab_detr in common/model_args.py."""
import glob
import os
import re

import numpy as np
import pytest

from common import model_args as A
from common.config.loader import load_config
from common.denoising import noise_boxes_center_size, prepare_dn
from tests.dab_detr_case import model_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _boxes(n, rng, low=0.4, high=0.6):
    return np.concatenate([rng.uniform(low, high, (n, 2)), rng.uniform(0.05, 0.2, (n, 2))], 1)


def test_center_size_noise_is_its_definition():
    """(cx, cy) + u (w, h) / 2 lambda and (w, h) (1 + u lambda), u ~ U[-1, 1) per coordinate: the same draws
    written out, then the ranges (centre shift <= lambda half-sizes, size factor in [1 - lambda, 1 + lambda]) and
    the spread of u (half the shifts within half the range; both ends reached)."""
    boxes = _boxes(4000, np.random.default_rng(0))
    noisy = noise_boxes_center_size(boxes, 0.4, np.random.default_rng(1))
    u = np.random.default_rng(1).random(boxes.shape) * 2 - 1
    w, h = boxes[:, 2], boxes[:, 3]
    direct = np.stack([boxes[:, 0] + u[:, 0] * 0.4 * w / 2, boxes[:, 1] + u[:, 1] * 0.4 * h / 2,
                       w * (1 + 0.4 * u[:, 2]), h * (1 + 0.4 * u[:, 3])], 1)
    np.testing.assert_allclose(noisy, direct, rtol=0, atol=1e-15)
    shift = np.abs(noisy[:, :2] - boxes[:, :2]) / (0.4 * boxes[:, 2:] / 2)
    factor = noisy[:, 2:] / boxes[:, 2:]
    assert shift.max() <= 1 + 1e-9 and shift.max() > 0.999
    assert factor.min() >= 0.6 - 1e-9 and factor.max() <= 1.4 + 1e-9 and factor.min() < 0.601 and factor.max() > 1.399
    assert abs((shift < 0.5).mean() - 0.5) < 0.02 and abs((factor < 1).mean() - 0.5) < 0.02


def test_center_size_noise_is_clipped():
    boxes = np.array([[0.02, 0.98, 0.9, 0.9]] * 200)
    noisy = noise_boxes_center_size(boxes, 1.0, np.random.default_rng(0))
    assert noisy.min() == 0.0 and noisy.max() == 1.0 and ((noisy >= 0) & (noisy <= 1)).all()


@pytest.mark.parametrize("flip, expected", [("ratio", 0.2), ("half_ratio", 0.1)])
def test_label_flip_probability(flip, expected):
    """A label is redrawn uniformly (itself 1 time in 10) with probability 0.2 (ratio) or 0.2 / 2 (half_ratio)."""
    targets = [{"labels": np.full(20000, 3), "boxes": np.tile([[0.5, 0.5, 0.2, 0.2]], (20000, 1))}]
    dn = prepare_dn(targets, 10, 1, number=1, label_noise_ratio=0.2, box_noise_scale=0.0, contrastive=False,
                    rng=np.random.default_rng(0), label_flip_prob=flip)
    assert abs((dn["labels"][0] != 3).mean() - expected * 0.9) < 0.01  # 5 standard deviations: 0.0021 / 0.0029
    assert dn["labels"].min() >= 0 and dn["labels"].max() < 10


def test_dn_detr_queries():
    """DN-DETR's settings: 5 groups of max-GT slots, positives only, each box within its GT's noise range."""
    rng = np.random.default_rng(0)
    targets = [{"labels": rng.integers(0, 7, n), "boxes": _boxes(n, rng).astype(np.float32)} for n in (3, 1)]
    dn = prepare_dn(targets, 7, 10, number=5, label_noise_ratio=0.2, box_noise_scale=0.4, contrastive=False,
                    rng=np.random.default_rng(0), box_noise_form="center_size", label_flip_prob="ratio")
    assert (dn["num_groups"], dn["group_size"], dn["pad_size"]) == (5, 3, 15) and dn["attn_mask"].shape == (25, 25)
    for b, t in enumerate(targets):
        slots, gt = dn["positive_idx"][b]
        np.testing.assert_array_equal(slots, np.add.outer(3 * np.arange(5), np.arange(len(gt) // 5)).ravel())
        assert dn["valid"][b].sum() == len(slots) and dn["valid"][b, slots].all()
        noisy, box = dn["boxes"][b, slots].astype(np.float64), t["boxes"][gt].astype(np.float64)
        assert (np.abs(noisy[:, :2] - box[:, :2]) <= 0.4 * box[:, 2:] / 2 + 1e-6).all()
        assert (np.abs(noisy[:, 2:] / box[:, 2:] - 1) <= 0.4 + 1e-6).all()
        assert len(np.unique(noisy, axis=0)) == len(noisy)  # each copy has its own noise


def test_defaults_are_dinos_and_options_are_checked():
    """Without the new arguments prepare_dn draws exactly what it drew before (corners, label_noise_ratio / 2);
    the DAC-DETR configs keep those defaults; bad values name their config key."""
    rng = np.random.default_rng(0)
    targets = [{"labels": rng.integers(0, 7, n), "boxes": _boxes(n, rng)} for n in (3, 2)]
    a = prepare_dn(targets, 7, 10, 20, 0.5, 1.0, True, np.random.default_rng(5))
    b = prepare_dn(targets, 7, 10, 20, 0.5, 1.0, True, np.random.default_rng(5), box_noise_form="corners",
                   label_flip_prob="half_ratio")
    assert all(np.array_equal(a[k], b[k]) for k in ("labels", "boxes", "valid", "attn_mask"))
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.yml"))):
        dn = load_config(path)["model"]["dn"]
        if "dn_dab" not in path:
            assert (dn["box_noise_form"], dn["label_flip_prob"]) == ("corners", "half_ratio"), path
    with pytest.raises(ValueError, match="model.dn.box_noise_form center_size has no negatives"):
        prepare_dn(targets, 7, 10, 20, 0.5, 1.0, True, rng, box_noise_form="center_size")
    with pytest.raises(ValueError, match="model.dn.box_noise_form must be"):
        prepare_dn(targets, 7, 10, 20, 0.5, 1.0, False, rng, box_noise_form="xyxy")


def test_dab_detr_takes_plain_dn_keys():
    """dab_detr accepts model.dn (DN-DETR) and passes every option to the detector and the criterion; contrastive
    is off for it (its default ignored, like the other keys dab_detr does not have); dac keys are still refused."""
    dn = dict(enabled=True, number=5, label_noise_ratio=0.2, label_flip_prob="ratio", box_noise_form="center_size")
    m = A.effective(model_cfg(dn=dn))
    assert A.detr_args(m)["dn"] == dict(number=5, label_noise_ratio=0.2, box_noise_scale=0.4, contrastive=False,
                                        box_noise_form="center_size", label_flip_prob="ratio")
    assert A.criterion_args(m)["dn"] and A.detr_args(A.effective(model_cfg()))["dn"] is None
    assert "dn" not in A.detr_args(A.effective(dict(model_cfg(), arch="conditional_detr")))
    with pytest.raises(ValueError, match="^" + re.escape("model.dac.k=3 does not apply to model.arch=dab_detr")):
        A.check(model_cfg(dn=dn, dac=dict(k=3)))
    for path in ("dn_dab_detr_r50_50ep.yml", "demo_dn_dab_detr.yml", "dn_dab_deformable_detr_r50_50ep.yml",
                 "demo_dn_dab_deformable_detr.yml"):
        cfg = load_config(os.path.join(ROOT, "configs", path))["model"]
        assert A.dn_args(A.effective(dict(cfg, num_classes=80))) == dict(
            number=5, label_noise_ratio=0.2, box_noise_scale=0.4, contrastive=False, box_noise_form="center_size",
            label_flip_prob="ratio"), path
