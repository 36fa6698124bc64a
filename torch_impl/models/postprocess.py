"""Model outputs -> detections in original-image pixels: top-k over (query, class) scores, optional class-wise NMS."""
import torch

from .box_ops import box_cxcywh_to_xyxy, box_iou


def nms(boxes, scores, iou_threshold, max_keep=None):
    """Greedy non-maximum suppression. boxes [N, 4] xyxy, scores [N] -> kept indices int64 [K], best first.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds iou_threshold; stops after max_keep
    kept boxes. Memory O(N): one row of IoUs per kept box.
    """
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    alive = torch.ones(len(order), dtype=torch.uint8, device=boxes.device)
    keep = []
    limit = len(order) if max_keep is None else min(max_keep, len(order))
    while len(keep) < limit:
        i = int(alive.argmax())  # first surviving box in score order
        if not alive[i]:
            break
        keep.append(i)
        alive &= (~(box_iou(boxes[i:i + 1], boxes)[0] > iou_threshold)).to(torch.uint8)  # NaN (0/0) keeps
        alive[i] = 0
    return order[torch.as_tensor(keep, dtype=torch.long, device=boxes.device)]


def batched_nms(boxes, scores, labels, iou_threshold, max_keep=None):
    """NMS within each label: boxes of different labels are shifted apart so they never overlap.
    boxes [N, 4] xyxy, scores [N], labels int [N] -> kept indices int64 [K], best first."""
    if boxes.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    shift = labels.to(boxes.dtype)[:, None] * (boxes.max() - boxes.min() + 1)
    return nms(boxes + shift, scores, iou_threshold, max_keep)


class PostProcess:
    """outputs {pred_logits [B, Q, C], pred_boxes [B, Q, 4] cxcywh in [0, 1]}, orig_sizes [B, 2] (h, w)
    -> B dicts {scores [K], labels int64 [K], boxes [K, 4] xyxy in original pixels}, best first.

    Without NMS, K = min(num_select, Q * C): the top scores over all (query, class) pairs, sigmoid scores.
    With nms_iou, the top pre_nms_topk pairs go through class-wise NMS and the first num_select survive
    (the release evaluates this way with nms_iou 0.8).
    """

    def __init__(self, num_select=300, nms_iou=None, pre_nms_topk=10000):
        self.num_select = num_select
        self.nms_iou = nms_iou
        self.pre_nms_topk = pre_nms_topk

    @torch.no_grad()
    def __call__(self, outputs, orig_sizes):
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        orig_sizes = torch.as_tensor(orig_sizes, device=boxes.device)
        if orig_sizes.shape != (len(logits), 2):
            raise ValueError(f"orig_sizes must be [B, 2] (h, w) for B = {len(logits)}, got {tuple(orig_sizes.shape)}")
        num_classes = logits.shape[2]
        h, w = orig_sizes.to(boxes.dtype).unbind(1)
        scale = torch.stack([w, h, w, h], 1)[:, None, :]
        xyxy = box_cxcywh_to_xyxy(boxes) * scale
        prob = logits.sigmoid().flatten(1)  # [B, Q * C]
        k = min(self.num_select if self.nms_iou is None else self.pre_nms_topk, prob.shape[1])
        scores, index = prob.topk(k, dim=1)
        results = []
        for b in range(len(logits)):
            query, label = index[b] // num_classes, index[b] % num_classes
            s, bx = scores[b], xyxy[b, query]
            if self.nms_iou is not None:
                keep = batched_nms(bx, s, label, self.nms_iou, self.num_select)
                s, label, bx = s[keep], label[keep], bx[keep]
            results.append({"scores": s, "labels": label, "boxes": bx})
        return results
