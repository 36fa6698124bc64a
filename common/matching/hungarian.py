"""One-to-one Hungarian matching with the focal class cost of Deformable-DETR / DINO."""
import numpy as np
from scipy.optimize import linear_sum_assignment

from common.box_ops import box_cxcywh_to_xyxy, box_to_delta, generalized_box_iou

_EMPTY = np.zeros(0, dtype=np.int64)


def sigmoid(x):
    """Logistic function that never overflows. x [...] -> float64 [...]."""
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # in (0, 1], so neither branch can overflow
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def focal_class_cost(pred_logits, gt_labels, alpha=0.25, gamma=2.0, obj_logits=None):
    """Focal-loss class cost of every (query, GT) pair: pos - neg at the GT's class.

    pred_logits [Q, C] raw logits, gt_labels int [n], obj_logits [Q, 1] or None -> cost [Q, n] float64, with
    p = sigmoid(logit) (times sigmoid(obj_logit) with objectness, SAP-DETR's), pos = alpha (1-p)^gamma
    (-log(p + 1e-8)) and neg = (1-alpha) p^gamma (-log(1-p + 1e-8)).
    """
    logits = np.asarray(pred_logits, dtype=np.float64)[:, gt_labels]
    p, one_minus_p = sigmoid(logits), sigmoid(-logits)  # sigmoid(-x) avoids cancellation in 1 - p
    if obj_logits is not None:  # 1 - p o = (1 - p) + p (1 - o), again without cancellation
        obj = np.asarray(obj_logits, dtype=np.float64).reshape(-1, 1)
        p, one_minus_p = p * sigmoid(obj), one_minus_p + p * sigmoid(-obj)
    pos = alpha * one_minus_p ** gamma * -np.log(p + 1e-8)
    neg = (1 - alpha) * p ** gamma * -np.log(one_minus_p + 1e-8)
    return pos - neg


def unpack_batch(pred_logits, pred_boxes, targets, caller):
    """Check a batch and split it per image.

    pred_logits [B, Q, C], pred_boxes [B, Q, 4], targets: B dicts with "labels" int [n] and "boxes" [n, 4]
    -> list of B tuples (logits [Q, C], boxes [Q, 4], labels int64 [n], gt_boxes [n, 4]), floats as float64.
    """
    logits = np.asarray(pred_logits, dtype=np.float64)
    boxes = np.asarray(pred_boxes, dtype=np.float64)
    if logits.ndim != 3:
        raise ValueError(f"{caller}: pred_logits must be [B, Q, C], got shape {logits.shape}")
    if boxes.shape != logits.shape[:2] + (4,):
        raise ValueError(f"{caller}: pred_boxes must be [B, Q, 4] = {logits.shape[:2] + (4,)} to match "
                         f"pred_logits, got shape {boxes.shape}")
    if len(targets) != logits.shape[0]:
        raise ValueError(f"{caller}: got {len(targets)} targets for a batch of {logits.shape[0]} images")
    for name, array in (("pred_logits", logits), ("pred_boxes", boxes)):
        bad = ~np.isfinite(array).reshape(len(array), -1).all(axis=1)
        if bad.any():
            raise ValueError(f"{caller}: {name} of image {int(np.flatnonzero(bad)[0])} contains NaN or inf; "
                             "the model output diverged (lower the learning rate or check the inputs)")
    num_classes = logits.shape[2]
    images = []
    for b, target in enumerate(targets):
        for key in ("labels", "boxes"):
            if key not in target:
                raise ValueError(f"{caller}: targets[{b}] has no '{key}' entry")
        labels = np.asarray(target["labels"])
        gt_boxes = np.asarray(target["boxes"], dtype=np.float64)
        if gt_boxes.size == 0:
            gt_boxes = gt_boxes.reshape(0, 4)
        if labels.ndim != 1 or gt_boxes.shape != (len(labels), 4):
            raise ValueError(f"{caller}: targets[{b}] needs 'labels' [n] and 'boxes' [n, 4], got shapes "
                             f"{labels.shape} and {gt_boxes.shape}")
        if len(labels) and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{caller}: targets[{b}]['labels'] must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        bad = (labels < 0) | (labels >= num_classes)
        if bad.any():
            raise ValueError(f"{caller}: targets[{b}]['labels'] has label {int(labels[bad][0])} outside "
                             f"0..{num_classes - 1} (pred_logits has {num_classes} classes)")
        bad = ~(np.isfinite(gt_boxes).all(axis=1) & (gt_boxes[:, 2:] >= 0).all(axis=1))
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{caller}: targets[{b}]['boxes'] row {row} = {gt_boxes[row].tolist()} is not a "
                             "finite cxcywh box with w, h >= 0")
        images.append((logits[b], boxes[b], labels, gt_boxes))
    return images


def points_inside(points, boxes_xyxy):
    """points [..., 2] (x, y), boxes_xyxy [..., 4], broadcast against each other -> bool [...]: the point is inside
    the box or on its border."""
    points = np.asarray(points, dtype=np.float64)
    return ((points >= boxes_xyxy[..., :2]) & (points <= boxes_xyxy[..., 2:])).all(-1)


class HungarianMatcher:
    """Optimal one-to-one assignment of queries to ground-truth boxes.

    cost = cost_class * focal class cost + cost_bbox * L1(cxcywh) - cost_giou * GIoU(xyxy),
    minimized per image by scipy's linear_sum_assignment; computed in float64. With box reparameterization
    (Plain-DETR) the L1 term compares deltas instead: the predicted delta with the one that would turn the query's
    reference box into the GT (common.box_ops.box_to_delta, in pixels). SAP-DETR's options: l1_xyxy (the L1 term
    on corners), and, given objectness logits and points, the class probability times the objectness one and
    cost_inner added where the query's point is outside the GT box (on its border counts as inside).
    """

    def __init__(self, cost_class=2.0, cost_bbox=5.0, cost_giou=2.0, focal_alpha=0.25, focal_gamma=2.0,
                 cost_inner=0.0, l1_xyxy=False):
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0:
            raise ValueError("HungarianMatcher: cost_class, cost_bbox and cost_giou are all 0; set at least one")
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.cost_inner = cost_inner
        self.l1_xyxy = l1_xyxy

    def cost_matrix(self, pred_logits, pred_boxes, gt_labels, gt_boxes, reparam=None, objectness=None, points=None):
        """Matching cost of one image.

        pred_logits [Q, C] raw, pred_boxes [Q, 4] cxcywh, gt_labels int [n], gt_boxes [n, 4] cxcywh, reparam: None
        or (pred_deltas [Q, 4], ref_boxes [Q, 4] cxcywh in pixels, image_size [2] (w, h) pixels, the scale of the
        normalized boxes), objectness [Q, 1] raw or None, points [Q, 2] (x, y) or None -> cost [Q, n] float64.
        """
        pred_boxes = np.asarray(pred_boxes, dtype=np.float64)
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64)
        pred_xyxy, gt_xyxy = box_cxcywh_to_xyxy(pred_boxes), box_cxcywh_to_xyxy(gt_boxes)
        cls = focal_class_cost(pred_logits, gt_labels, self.focal_alpha, self.focal_gamma, objectness)
        if reparam is not None:
            deltas, refs, size = (np.asarray(a, dtype=np.float64) for a in reparam)
            gt_deltas = box_to_delta(refs[:, None], gt_boxes[None] * np.tile(size, 2))  # [Q, n, 4]
            l1 = np.abs(deltas[:, None, :] - gt_deltas).sum(axis=-1)
        elif self.l1_xyxy:
            l1 = np.abs(pred_xyxy[:, None, :] - gt_xyxy[None, :, :]).sum(axis=-1)
        else:
            l1 = np.abs(pred_boxes[:, None, :] - gt_boxes[None, :, :]).sum(axis=-1)
        cost = self.cost_class * cls + self.cost_bbox * l1 - self.cost_giou * generalized_box_iou(pred_xyxy, gt_xyxy)
        if points is not None and self.cost_inner:
            cost = cost + self.cost_inner * ~points_inside(points[:, None], gt_xyxy[None])
        return cost

    def __call__(self, pred_logits, pred_boxes, targets, reparam=None, objectness=None, points=None):
        """pred_logits [B, Q, C] raw, pred_boxes [B, Q, 4] cxcywh, targets: B dicts with "labels" int64 [n]
        and "boxes" [n, 4] cxcywh, reparam: None or (pred_deltas [B, Q, 4], ref_boxes [B, Q, 4], image_size [B, 2]),
        objectness [B, Q, 1] or None, points [B, Q, 2] or None (cost_matrix)
        -> B tuples (query_idx int64 [k], gt_idx int64 [k]), k = min(Q, n), sorted by query_idx.
        """
        indices = []
        for b, (logits, boxes, labels, gt_boxes) in enumerate(
                unpack_batch(pred_logits, pred_boxes, targets, "HungarianMatcher")):
            if len(labels) == 0:
                indices.append((_EMPTY.copy(), _EMPTY.copy()))
                continue
            cost = self.cost_matrix(logits, boxes, labels, gt_boxes,
                                    None if reparam is None else tuple(a[b] for a in reparam),
                                    None if objectness is None else objectness[b],
                                    None if points is None else points[b])
            if not np.isfinite(cost).all():
                # inputs are finite here, so this is 0/0 in GIoU: a zero-area prediction on a zero-area GT
                raise ValueError(f"HungarianMatcher: image {b} has a non-finite matching cost; check "
                                 f"targets[{b}]['boxes'] and the predictions for zero-area boxes")
            query_idx, gt_idx = linear_sum_assignment(cost)  # rows come back sorted
            indices.append((query_idx.astype(np.int64), gt_idx.astype(np.int64)))
        return indices
