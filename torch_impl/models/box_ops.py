"""Box conversion, IoU and generalized IoU on tensors (differentiable; numpy twins in common/box_ops.py)."""
import math

import torch

MAX_LOG_SCALE = abs(math.log(16 / 1000))  # apply_box_delta's clamp on log size changes (Plain-DETR's delta2bbox)


def box_cxcywh_to_xyxy(boxes):
    """(cx, cy, w, h) -> (x0, y0, x1, y1). boxes [..., 4] -> [..., 4]."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes):
    """(x0, y0, x1, y1) -> (cx, cy, w, h). boxes [..., 4] -> [..., 4]."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def apply_box_delta(reference, delta, image_size):
    """Plain-DETR's box reparameterization: move reference boxes by deltas, in pixels, and clip to the image:
    centre + delta_xy * size, size * exp(delta_wh) (delta_wh clamped to +-log(1000 / 16)).

    reference [B, N, 4] cxcywh pixels, delta [B, N, 4], image_size [B, 2] (w, h) -> [B, N, 4] cxcywh pixels.
    """
    centre = reference[..., :2] + delta[..., :2] * reference[..., 2:]
    size = reference[..., 2:] * delta[..., 2:].clamp(-MAX_LOG_SCALE, MAX_LOG_SCALE).exp()
    limit = image_size.repeat(1, 2)[:, None]  # [B, 1, 4]
    xyxy = torch.cat([centre - 0.5 * size, centre + 0.5 * size], -1)
    return box_xyxy_to_cxcywh(torch.minimum(xyxy.clamp(min=0), limit))


def box_area(boxes):
    """Area of xyxy boxes. boxes [..., 4] -> [...]."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def elementwise_box_iou(boxes1, boxes2):
    """IoU and union of aligned pairs. boxes1, boxes2 [N, 4] xyxy -> (iou [N], union [N])."""
    lt = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(boxes1) + box_area(boxes2) - inter
    return inter / union, union


def elementwise_generalized_box_iou(boxes1, boxes2):
    """GIoU of aligned pairs. boxes1, boxes2 [N, 4] xyxy -> [N] in [-1, 1]."""
    iou, union = elementwise_box_iou(boxes1, boxes2)
    lt = torch.minimum(boxes1[:, :2], boxes2[:, :2])
    rb = torch.maximum(boxes1[:, 2:], boxes2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    hull = wh[:, 0] * wh[:, 1]
    return iou - (hull - union) / hull


def box_iou(boxes1, boxes2):
    """IoU of every pair. boxes1 [N, 4], boxes2 [M, 4] xyxy -> [N, M]."""
    lt = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    rb = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter)
