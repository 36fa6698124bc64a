"""Box conversion, IoU and generalized IoU on tensors (differentiable; numpy twins in common/box_ops.py).

The criterion calls these on small tensors, where per-op overhead dominates, so coordinates are split with one
unbind rather than several slices, and max(x, 0) is relu (a single kernel; Tensor.clip adds Python-side checks).
"""
import math

import paddle
import paddle.nn.functional as F

MAX_LOG_SCALE = abs(math.log(16 / 1000))  # apply_box_delta's clamp on log size changes (Plain-DETR's delta2bbox)


def box_cxcywh_to_xyxy(boxes):
    """(cx, cy, w, h) -> (x0, y0, x1, y1). boxes [..., 4] -> [..., 4]."""
    cx, cy, w, h = paddle.unbind(boxes, axis=-1)
    return paddle.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes):
    """(x0, y0, x1, y1) -> (cx, cy, w, h). boxes [..., 4] -> [..., 4]."""
    x0, y0, x1, y1 = paddle.unbind(boxes, axis=-1)
    return paddle.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


def apply_box_delta(reference, delta, image_size):
    """Plain-DETR's box reparameterization: move reference boxes by deltas, in pixels, and clip to the image:
    centre + delta_xy * size, size * exp(delta_wh) (delta_wh clamped to +-log(1000 / 16)).

    reference [B, N, 4] cxcywh pixels, delta [B, N, 4], image_size [B, 2] (w, h) -> [B, N, 4] cxcywh pixels.
    """
    centre = reference[..., :2] + delta[..., :2] * reference[..., 2:]
    size = reference[..., 2:] * paddle.exp(delta[..., 2:].clip(-MAX_LOG_SCALE, MAX_LOG_SCALE))
    limit = paddle.tile(image_size, [1, 2])[:, None]  # [B, 1, 4]
    xyxy = paddle.concat([centre - 0.5 * size, centre + 0.5 * size], -1)
    return box_xyxy_to_cxcywh(paddle.minimum(F.relu(xyxy), limit))


def box_area(boxes):
    """Area of xyxy boxes. boxes [..., 4] -> [...]."""
    x0, y0, x1, y1 = paddle.unbind(boxes, axis=-1)
    return (x1 - x0) * (y1 - y0)


def _aligned_parts(boxes1, boxes2):
    """Intersection, union and the two boxes' coordinates of aligned xyxy pairs [N, 4] -> ([N], [N], 4 x [N],
    4 x [N])."""
    a, b = paddle.unbind(boxes1, axis=-1), paddle.unbind(boxes2, axis=-1)
    iw = F.relu(paddle.minimum(a[2], b[2]) - paddle.maximum(a[0], b[0]))
    ih = F.relu(paddle.minimum(a[3], b[3]) - paddle.maximum(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter, union, a, b


def elementwise_box_iou(boxes1, boxes2):
    """IoU and union of aligned pairs. boxes1, boxes2 [N, 4] xyxy -> (iou [N], union [N])."""
    inter, union, _, _ = _aligned_parts(boxes1, boxes2)
    return inter / union, union


def elementwise_generalized_box_iou(boxes1, boxes2):
    """GIoU of aligned pairs. boxes1, boxes2 [N, 4] xyxy -> [N] in [-1, 1]."""
    inter, union, a, b = _aligned_parts(boxes1, boxes2)
    hw = F.relu(paddle.maximum(a[2], b[2]) - paddle.minimum(a[0], b[0]))
    hh = F.relu(paddle.maximum(a[3], b[3]) - paddle.minimum(a[1], b[1]))
    hull = hw * hh
    return inter / union - (hull - union) / hull


def box_iou(boxes1, boxes2):
    """IoU of every pair. boxes1 [N, 4], boxes2 [M, 4] xyxy -> [N, M]."""
    lt = paddle.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = paddle.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = F.relu(rb - lt)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter)
