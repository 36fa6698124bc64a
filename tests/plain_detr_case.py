"""What the Plain-DETR tests of both trees share: a tiny config (ResNet-18 cut after C4, so one stride-16 map;
hidden 32, 3 decoder layers, 6 one-to-one + 12 one-to-many queries, GT x 3) with or without box
reparameterization, and a batch of two images of which one is padded."""
import numpy as np

from common.config.model_schema import MODEL
from tests.conditional_detr_case import fill

_rng = np.random.default_rng(0)
IMAGES = _rng.standard_normal((2, 3, 128, 160)).astype(np.float32)
MASKS = np.zeros((2, 128, 160), dtype=bool)
MASKS[1, 96:, :] = True  # image 1 is 96 x 112 of the padded 128 x 160
MASKS[1, :, 112:] = True
TARGETS = [{"labels": np.array([1, 3]), "boxes": np.array([[0.5, 0.5, 0.4, 0.5], [0.3, 0.3, 0.2, 0.2]], np.float32)},
           {"labels": np.array([2]), "boxes": np.array([[0.4, 0.6, 0.5, 0.4]], np.float32)}]
NO_GT = [{"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)} for _ in range(2)]


def model_cfg(reparam=True, **overrides):
    """The model section of a tiny Plain-DETR; overrides are nested dicts."""
    base = dict(arch="plain_detr", num_classes=4, hidden_dim=32, nheads=4, dec_layers=3, dim_feedforward=64,
                num_queries=6, backbone=dict(name="resnet18", frozen_stages=1, last_stage=3),
                plain=dict(reparam=reparam, rpe_hidden_dim=16), hybrid=dict(num_queries=12, k=3),
                dn=dict(enabled=False), dac=dict(enabled=False),
                loss=dict(type="focal", class_weight=2.0, bbox_weight=1.0 if reparam else 5.0),
                matcher=dict(cost_bbox=1.0 if reparam else 5.0), postprocess=dict(num_select=20))
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    return fill(MODEL, base)


def image_sizes(masks):
    """(w, h) unpadded pixels of each image. masks bool [B, H, W] -> float64 [B, 2]."""
    return np.stack([(~masks[:, 0, :]).sum(1), (~masks[:, :, 0]).sum(1)], -1).astype(np.float64)


def expected_proposals(map_mask, size, strides=(8, 16, 32, 64), reparam=True, feature_stride=16):
    """The grid proposals from their definition, float64: one box per cell of each pyramid level (level l of
    stride s_l: the map's cells split in two per halving of the stride, or merged by floor-halving per doubling),
    centred on the cell, of side 50 * 2^l px (reparam, cxcywh pixels) or 0.05 * 2^l (cxcywh in [0, 1] of the
    level's valid cells); a cell in the padding (nearest-neighbour resampled map mask) or whose box leaves 1-99 %
    of the image is invalid.

    map_mask bool [B, h, w] of the stride-16 map, size [B, 2] (w, h) image pixels -> (boxes [B, S, 4], valid [B, S]).
    """
    b_size, h16, w16 = map_mask.shape
    boxes, valid = [], []
    for lvl, s in enumerate(strides):
        h, w = h16, w16
        for _ in range(int(round(np.log2(s / feature_stride)))):
            h, w = h // 2, w // 2
        if s < feature_stride:
            h, w = h16 * feature_stride // s, w16 * feature_stride // s
        rows = np.floor(np.arange(h) * h16 / h).astype(int)
        cols = np.floor(np.arange(w) * w16 / w).astype(int)
        lvl_mask = map_mask[:, rows][:, :, cols]
        ys, xs = np.meshgrid(np.arange(h) + 0.5, np.arange(w) + 0.5, indexing="ij")
        centres = np.stack([xs.ravel(), ys.ravel()], -1)[None].repeat(b_size, 0)
        if reparam:
            centres, side, bound = centres * s, 50.0 * 2 ** lvl, np.tile(size, 2)[:, None]
        else:
            valid_wh = np.stack([(~lvl_mask[:, 0, :]).sum(1), (~lvl_mask[:, :, 0]).sum(1)], -1)
            centres, side, bound = centres / valid_wh[:, None], 0.05 * 2 ** lvl, 1.0
        box = np.concatenate([centres, np.full_like(centres, side)], -1)
        boxes.append(box)
        valid.append(((box > 0.01 * bound) & (box < 0.99 * bound)).all(-1) & ~lvl_mask.reshape(b_size, -1))
    return np.concatenate(boxes, 1), np.concatenate(valid, 1)


def apply_box_delta(reference, delta, size):
    """box_ops.apply_box_delta from its definition, float64. reference [B, N, 4] cxcywh px, delta [B, N, 4],
    size [B, 2] -> [B, N, 4] cxcywh px."""
    centre = reference[..., :2] + delta[..., :2] * reference[..., 2:]
    wh = reference[..., 2:] * np.exp(np.clip(delta[..., 2:], -np.log(1000 / 16), np.log(1000 / 16)))
    xyxy = np.concatenate([centre - wh / 2, centre + wh / 2], -1)
    xyxy = np.minimum(np.maximum(xyxy, 0), np.tile(size, 2)[:, None])
    return np.concatenate([(xyxy[..., :2] + xyxy[..., 2:]) / 2, xyxy[..., 2:] - xyxy[..., :2]], -1)
