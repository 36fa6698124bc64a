"""Box format conversions, IoU and generalized IoU on numpy arrays.

Float32 or float64 in, the same dtype out (integer input is promoted to float64).
"""
import numpy as np


def _as_boxes(boxes, name, pairwise=False):
    boxes = np.asarray(boxes)
    if not np.issubdtype(boxes.dtype, np.floating):
        boxes = boxes.astype(np.float64)
    if boxes.ndim < 1 or boxes.shape[-1] != 4 or (pairwise and boxes.ndim != 2):
        expected = "[N, 4]" if pairwise else "[..., 4]"
        raise ValueError(f"{name}: expected boxes of shape {expected}, got shape {boxes.shape}")
    return boxes


def box_cxcywh_to_xyxy(boxes):
    """(cx, cy, w, h) -> (x0, y0, x1, y1). boxes [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes, "box_cxcywh_to_xyxy")
    cx, cy, w, h = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return np.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(boxes):
    """(x0, y0, x1, y1) -> (cx, cy, w, h). boxes [..., 4] -> [..., 4]."""
    boxes = _as_boxes(boxes, "box_xyxy_to_cxcywh")
    x0, y0, x1, y1 = boxes[..., 0], boxes[..., 1], boxes[..., 2], boxes[..., 3]
    return np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)


BOX_DELTA_EPS = 0.1  # pixels added to the reference size in box_to_delta (Plain-DETR's bbox2delta)
BOX_MIN_SIZE = 1e-3  # pixels: box_to_delta's floor on the target's width and height


def box_to_delta(reference, boxes):
    """The deltas that turn reference boxes into `boxes` (Plain-DETR's box reparameterization, in pixels):
    ((x - xr) / (wr + eps), (y - yr) / (hr + eps), log(w / (wr + eps)), log(h / (hr + eps))), eps = 0.1
    (w, h floored at 1e-3 px).

    reference, boxes [..., 4] cxcywh in pixels (broadcast against each other) -> deltas [..., 4].
    """
    reference = _as_boxes(reference, "box_to_delta")
    boxes = _as_boxes(boxes, "box_to_delta")
    size = reference[..., 2:] + BOX_DELTA_EPS
    wh = np.maximum(boxes[..., 2:], BOX_MIN_SIZE)  # a zero-size box would give log 0
    return np.concatenate([(boxes[..., :2] - reference[..., :2]) / size, np.log(wh / size)], -1)


def box_area(boxes):
    """Area of xyxy boxes. boxes [..., 4] -> [...]."""
    boxes = _as_boxes(boxes, "box_area")
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1, boxes2):
    """IoU and union area of every pair. boxes1 [N, 4], boxes2 [M, 4] xyxy -> (iou [N, M], union [N, M]).

    Two zero-area boxes have union 0 and give NaN, as in the torch reference.
    """
    boxes1 = _as_boxes(boxes1, "box_iou: boxes1", pairwise=True)
    boxes2 = _as_boxes(boxes2, "box_iou: boxes2", pairwise=True)
    lt = np.maximum(boxes1[:, None, :2], boxes2[None, :, :2])  # [N, M, 2]
    rb = np.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])  # [N, M, 2]
    wh = np.clip(rb - lt, 0, None)  # disjoint pairs overlap by 0, not a negative amount
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - inter
    return inter / union, union


def _check_well_formed(boxes, name):
    ok = np.isfinite(boxes).all(axis=1) & (boxes[:, 2:] >= boxes[:, :2]).all(axis=1)
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"generalized_box_iou: {name} row {row} = {boxes[row].tolist()} is not a valid xyxy box "
            "(needs finite values with x1 >= x0 and y1 >= y0)")


def generalized_box_iou(boxes1, boxes2):
    """Generalized IoU (Rezatofighi et al. 2019) of every pair, in [-1, 1].

    boxes1 [N, 4], boxes2 [M, 4] xyxy -> giou [N, M]. Inverted boxes would push GIoU out of
    [-1, 1] silently, so they raise instead.
    """
    boxes1 = _as_boxes(boxes1, "generalized_box_iou: boxes1", pairwise=True)
    boxes2 = _as_boxes(boxes2, "generalized_box_iou: boxes2", pairwise=True)
    _check_well_formed(boxes1, "boxes1")
    _check_well_formed(boxes2, "boxes2")
    iou, union = box_iou(boxes1, boxes2)
    lt = np.minimum(boxes1[:, None, :2], boxes2[None, :, :2])  # smallest enclosing box
    rb = np.maximum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = rb - lt
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing
