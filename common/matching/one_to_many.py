"""DAC-DETR one-to-many assigner: each ground truth gets up to k queries, chosen by a quality score."""
import numpy as np

from common.box_ops import box_cxcywh_to_xyxy, box_iou
from common.matching.hungarian import sigmoid, unpack_batch

_EMPTY = np.zeros(0, dtype=np.int64)


def quality_matrix(pred_logits, pred_boxes, gt_labels, gt_boxes, iou_weight=0.7):
    """Match quality of every (query, GT) pair: iou_weight * IoU + (1 - iou_weight) * class probability.

    pred_logits [Q, C] raw, pred_boxes [Q, 4] cxcywh, gt_labels int [n], gt_boxes [n, 4] cxcywh
    -> quality [Q, n] float64 in [0, 1]. IoU is plain IoU of the xyxy boxes (not GIoU), the
    probability is sigmoid(logit) at the GT's class.
    """
    iou, _ = box_iou(box_cxcywh_to_xyxy(np.asarray(pred_boxes, dtype=np.float64)),
                     box_cxcywh_to_xyxy(np.asarray(gt_boxes, dtype=np.float64)))
    prob = sigmoid(np.asarray(pred_logits)[:, gt_labels])
    return iou_weight * iou + (1 - iou_weight) * prob


class OneToManyAssigner:
    """One-to-many assignment of DAC-DETR's cross-attention-free decoder (detectron2-style matching).

    Per image, on the quality matrix [Q, n]:
      1. every query takes its best GT (argmax, first GT on ties) and is positive when that quality
         is >= threshold;
      2. every GT's best query (argmax, first query on ties) is made positive too;
      3. if there are more than int(positive_fraction * Q) positives, a uniformly random subset of
         that size is kept (so Q < 1 / positive_fraction gives no positives at all, as upstream);
      4. a GT with c > 0 positives finally gets its top min(c, k) queries ranked by quality over
         ALL queries (ties: lower query index first), not the positives themselves. Only the
         counts c survive from steps 1-3, and one query can end up positive for several GTs.

    Randomness (step 3 only): `rng` passed to __call__ wins; otherwise, with seed=None every call
    draws fresh OS entropy (non-deterministic, like the upstream torch.randperm), and with an
    integer seed the i-th call of this instance (counting from 0) uses
    np.random.default_rng([seed, i]), so a fixed seed replays the same sequence of assignments.
    """

    def __init__(self, k=6, threshold=0.4, iou_weight=0.7, positive_fraction=0.25, seed=None):
        if int(k) != k or k < 1:
            raise ValueError(f"OneToManyAssigner: k must be an integer >= 1, got {k}")
        if not 0 <= iou_weight <= 1:
            raise ValueError(f"OneToManyAssigner: iou_weight must be in [0, 1], got {iou_weight}")
        if not 0 <= positive_fraction <= 1:
            raise ValueError(f"OneToManyAssigner: positive_fraction must be in [0, 1], got {positive_fraction}")
        self.k = int(k)
        self.threshold = threshold
        self.iou_weight = iou_weight
        self.positive_fraction = positive_fraction
        self.seed = seed
        self._calls = 0

    def assign(self, quality, rng):
        """Steps 1-4 of the class docstring on one image.

        quality [Q, n], rng np.random.Generator -> (query_idx int64 [m], gt_idx int64 [m]),
        ordered by GT, then by rank within the GT.
        """
        quality = np.asarray(quality, dtype=np.float64)
        num_queries, num_gt = quality.shape
        if num_queries == 0 or num_gt == 0:
            return _EMPTY.copy(), _EMPTY.copy()
        best_gt = quality.argmax(axis=1)  # [Q]
        positive = quality[np.arange(num_queries), best_gt] >= self.threshold
        # Low-quality rule: each GT's best query becomes positive, but, as in detectron2's Matcher,
        # it stays assigned to its own best GT, which may be another one; so a GT whose best
        # query prefers another GT can still end with no positive at all.
        positive[quality.argmax(axis=0)] = True
        pos_queries = np.flatnonzero(positive)
        cap = int(self.positive_fraction * num_queries)
        if len(pos_queries) > cap:
            pos_queries = rng.choice(pos_queries, size=cap, replace=False)
        counts = np.bincount(best_gt[pos_queries], minlength=num_gt)  # [n]

        depth = min(self.k, num_queries)
        ranked = np.argsort(-quality.T, axis=1, kind="stable")[:, :depth]  # [n, depth], best first
        gt_idx, rank = np.nonzero(np.arange(depth)[None, :] < counts[:, None])  # row-major: by GT, then rank
        return ranked[gt_idx, rank].astype(np.int64), gt_idx.astype(np.int64)

    def __call__(self, pred_logits, pred_boxes, targets, rng=None):
        """pred_logits [B, Q, C] raw, pred_boxes [B, Q, 4] cxcywh, targets: B dicts with "labels" int64 [n]
        and "boxes" [n, 4] cxcywh, rng optional np.random.Generator
        -> B tuples (query_idx int64 [m], gt_idx int64 [m]), m <= min(k * n, int(positive_fraction * Q)).
        """
        if rng is None:
            rng = np.random.default_rng(None if self.seed is None else [self.seed, self._calls])
            self._calls += 1
        indices = []
        for b, (logits, boxes, labels, gt_boxes) in enumerate(
                unpack_batch(pred_logits, pred_boxes, targets, "OneToManyAssigner")):
            quality = quality_matrix(logits, boxes, labels, gt_boxes, self.iou_weight)
            if not np.isfinite(quality).all():
                # inputs are finite here, so this is 0/0 in IoU: a zero-area prediction on a zero-area GT
                raise ValueError(f"OneToManyAssigner: image {b} has a non-finite match quality; check "
                                 f"targets[{b}]['boxes'] and the predictions for zero-area boxes")
            indices.append(self.assign(quality, rng))
        return indices


def assigner_fraction(positive_fraction, sample_queries, num_queries):
    """positive_fraction for OneToManyAssigner so that its cap int(fraction * num_queries) equals the release's
    int(positive_fraction * sample_queries) (the release samples as if there were 300 queries)."""
    if sample_queries is None:
        return positive_fraction
    cap = int(positive_fraction * sample_queries)
    return min(1.0, (cap + 0.5) / num_queries)  # + 0.5: int() of the product lands on cap despite rounding
