"""Model outputs -> detections in original-image pixels: top-k over (query, class) scores, optional class-wise NMS."""
import paddle

from .box_ops import box_cxcywh_to_xyxy


def nms(boxes, scores, iou_threshold, max_keep=None):
    """Greedy non-maximum suppression. boxes [N, 4] xyxy, scores [N] -> kept indices int64 [K], best first.

    A box is dropped when its IoU with a kept, higher-scoring box exceeds iou_threshold; stops after max_keep
    kept boxes. Memory O(N) (the kernel keeps one bit per box).

    Runs Paddle's NMS kernel (paddle.vision.ops.nms: same rule, IoU > threshold suppresses, 0/0 keeps) on the
    score-sorted boxes. Whether a box survives depends only on the boxes ranked above it, so the kernel's result
    on the first m boxes is exactly the start of the full result: with max_keep, m starts at 4 * max_keep and
    doubles until max_keep boxes survive, instead of paying the kernel's O(N^2) on every candidate.
    """
    order = paddle.argsort(scores, descending=True, stable=True)
    n = len(order)
    if n == 0:
        return order
    boxes = paddle.gather(boxes, order)
    m = n if max_keep is None else min(n, 4 * max_keep)
    while True:
        kept = paddle.vision.ops.nms(boxes[:m], iou_threshold)  # no scores: boxes are taken in the given order
        if m == n or len(kept) >= max_keep:
            break
        m = min(n, 2 * m)
    return paddle.gather(order, kept[:max_keep])


def batched_nms(boxes, scores, labels, iou_threshold, max_keep=None):
    """NMS within each label: boxes of different labels are shifted apart so they never overlap.
    boxes [N, 4] xyxy, scores [N], labels int [N] -> kept indices int64 [K], best first."""
    if boxes.numel() == 0:
        return paddle.zeros([0], dtype="int64")
    shift = labels.astype(boxes.dtype)[:, None] * (boxes.amax() - boxes.amin() + 1)
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

    @paddle.no_grad()
    def __call__(self, outputs, orig_sizes):
        logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
        if not isinstance(orig_sizes, paddle.Tensor):
            orig_sizes = paddle.to_tensor(orig_sizes, place=boxes.place)
        if tuple(orig_sizes.shape) != (len(logits), 2):
            raise ValueError(f"orig_sizes must be [B, 2] (h, w) for B = {len(logits)}, got {tuple(orig_sizes.shape)}")
        num_classes = logits.shape[2]
        h, w = paddle.unbind(orig_sizes.astype(boxes.dtype), axis=1)
        scale = paddle.stack([w, h, w, h], axis=1)[:, None, :]
        xyxy = box_cxcywh_to_xyxy(boxes) * scale
        prob = paddle.nn.functional.sigmoid(logits).flatten(1)  # [B, Q * C]
        k = min(self.num_select if self.nms_iou is None else self.pre_nms_topk, prob.shape[1])
        scores, index = paddle.topk(prob, k, axis=1)
        results = []
        for b in range(len(logits)):
            query, label = index[b] // num_classes, index[b] % num_classes
            s, bx = scores[b], paddle.gather(xyxy[b], query)
            if self.nms_iou is not None:
                keep = batched_nms(bx, s, label, self.nms_iou, self.num_select)
                s, label, bx = paddle.gather(s, keep), paddle.gather(label, keep), paddle.gather(bx, keep)
            results.append({"scores": s, "labels": label, "boxes": bx})
        return results
