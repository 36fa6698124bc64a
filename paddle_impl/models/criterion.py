"""Training losses of the DAC-DETR family, following the official release's SetCriterion.

The terms, their names, weights and normalizers: common/set_criterion.py (shared with the torch tree).
The math of one layer's terms is here:

Classification (loss.type):
  focal  sigmoid focal loss (alpha 0.25, gamma 2) with one-hot targets, summed / normalizer;
  ice    the release's IoU-aware BCE (IA_BCE_loss): a positive (query, GT class) gets the soft target
         t = max(p^a * IoU^(1-a), 0.01) (p the predicted probability, IoU of the matched boxes, both
         detached, a = ice_alpha = 0.25) and loss -t log p - (1 - t) log(1 - p); every other entry gets
         -p^gamma log(1 - p) with the weight p^gamma not detached. In the C-decoder one-to-many branch, the
         positives of one GT are ranked by t (descending) and t is multiplied by exp(-rank / rank_tau); the
         same factor weights their L1 and GIoU losses (release: loc_weight). One-to-one and denoising
         positives have rank 0, weight 1. A (query, class) that is positive for several GTs keeps its largest t.
  The encoder proposals always use focal loss on class-agnostic targets (every GT as class 0), weighted by
  loss.enc_class_weight (release: 2).
Boxes: L1 on cxcywh (x1y1x2y2 with l1_xyxy) and 1 - GIoU, summed over positives / normalizer.
SAP-DETR's terms (layers with pred_objs): loss_obj = soft_focal_loss of the objectness logits towards the IoU of
the matched boxes (detached; the release lets the box gradient through this target), 0 elsewhere; loss_inner = the
matched points outside their GT box (no gradient), both / normalizer.

Mirror of torch_impl/models/criterion.py. Matching runs in numpy (common/matching) on detached copies, so
the pair indices reach the losses as int64 tensors built from numpy.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from common.matching.ranking import keep_best_duplicates, rank_in_groups
from common.set_criterion import SetCriterionBase, pair_arrays

from .box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from .utils import numpy_rng, targets_to_numpy, targets_to_tensors


def sigmoid_focal_loss(logits, pos, normalizer, alpha=0.25, gamma=2.0):
    """Focal loss over every (query, class) entry with one-hot targets at `pos`.

    logits [B, N, C], pos: (batch_idx, query_idx, class) int64 tensors [P] -> scalar sum / normalizer.
    """
    target = paddle.index_put(paddle.zeros_like(logits), pos, paddle.ones_like(pos[0], dtype=logits.dtype))
    return soft_focal_loss(logits, target, normalizer, alpha, gamma)


def soft_focal_loss(logits, target, normalizer, alpha=0.25, gamma=2.0):
    """Focal loss with targets in [0, 1] (RetinaNet's formula read with soft targets, as SAP-DETR's objectness).
    logits, target [...] -> scalar sum / normalizer."""
    prob = F.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).sum() / normalizer


def ice_loss(logits, pos, t, normalizer, gamma=2.0):
    """IoU-aware BCE of the release (module docstring). logits [B, N, C], pos: (batch_idx, query_idx, class)
    int64 tensors [P] without duplicates, t [P] soft targets (no gradient) -> scalar sum / normalizer."""
    prob = F.sigmoid(logits)
    pos_weight = paddle.index_put(paddle.zeros_like(logits), pos, t)
    # index_put's gradient is zero at the overwritten entries, so positives get no gradient through p^gamma
    neg_weight = paddle.index_put(prob ** gamma, pos, 1 - t)
    loss = -(pos_weight * F.log_sigmoid(logits) + neg_weight * F.log_sigmoid(-logits))
    return loss.sum() / normalizer


class SetCriterion(SetCriterionBase, nn.Layer):
    """Losses of every decoder layer and stream: common.set_criterion.SetCriterionBase with paddle tensors.

    forward(outputs, targets, num_boxes, rng=None) -> {term: weighted scalar tensor}; see SetCriterionBase.
    """

    def __init__(self, num_classes, matcher, assigner=None, **kwargs):
        nn.Layer.__init__(self)
        SetCriterionBase.__init__(self, num_classes, matcher, assigner, **kwargs)

    def forward(self, outputs, targets, num_boxes, rng=None):
        return self.compute(outputs, targets, num_boxes, rng)

    def _targets(self, targets, like):
        return targets_to_tensors(targets, like.place)

    @staticmethod
    def _targets_to_numpy(targets):
        return targets_to_numpy(targets)

    @staticmethod
    def _default_rng():
        return numpy_rng()  # seeded from Paddle's global RNG

    @staticmethod
    def _numpy(*tensors):
        return tuple(t.detach().astype("float32").numpy() for t in tensors)

    def _terms(self, layer, tgt, indices, normalizer, one_to_many=False, focal=False, delta_targets=None,
               points_outside=0):
        """Class, L1 and GIoU losses of one layer's outputs for per-image (query_idx, gt_idx) pairs; with
        delta_targets (numpy [P, 4]) the L1 term is on layer["pred_deltas"]; points_outside: SAP's loss_inner count
        (common/set_criterion.py)."""
        logits, boxes = layer["pred_logits"], layer["pred_boxes"]
        place = logits.place
        batch_np, query_np, gt_np = pair_arrays(indices, [len(t["labels"]) for t in tgt])
        # one host-to-device copy for all indices; gather / gather_nd are cheaper than tensor-indexed getitem
        idx = paddle.to_tensor(np.stack([batch_np, query_np, gt_np]), place=place)  # [3, P]
        batch_idx, query_idx, gt_idx = paddle.unbind(idx, axis=0)
        labels = paddle.gather(paddle.concat([t["labels"] for t in tgt]), gt_idx)
        tgt_boxes = paddle.gather(paddle.concat([t["boxes"] for t in tgt]), gt_idx)
        src_boxes = paddle.gather_nd(boxes, idx[:2].T)
        src_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes)
        box_weight = None
        if focal or self.loss_type == "focal":
            loss_ce = sigmoid_focal_loss(logits, (batch_idx, query_idx, labels), normalizer,
                                         self.focal_alpha, self.focal_gamma)
        else:
            with paddle.no_grad():
                iou = elementwise_box_iou(src_xyxy, tgt_xyxy)[0]
                prob = F.sigmoid(paddle.gather_nd(logits, paddle.stack([batch_idx, query_idx, labels], axis=1)))
                t = (prob ** self.ice_alpha * iou ** (1 - self.ice_alpha)).clip(min=0.01)
                if one_to_many:
                    ranks = rank_in_groups(gt_np, t.numpy())
                    box_weight = paddle.exp(-paddle.to_tensor(ranks, dtype=t.dtype, place=place) / self.rank_tau)
                    t = t * box_weight
                keys = np.stack([batch_np, query_np, labels.numpy()], 1)
                keep = paddle.to_tensor(keep_best_duplicates(keys, t.numpy()), place=place)
            pos = (paddle.gather(batch_idx, keep), paddle.gather(query_idx, keep), paddle.gather(labels, keep))
            loss_ce = ice_loss(logits, pos, paddle.gather(t, keep), normalizer, self.focal_gamma)
        if delta_targets is not None:
            deltas = paddle.gather_nd(layer["pred_deltas"], idx[:2].T)
            l1 = (deltas - paddle.to_tensor(delta_targets, dtype=deltas.dtype, place=place)).abs().sum(-1)
        elif self.l1_xyxy:
            l1 = F.l1_loss(src_xyxy, tgt_xyxy, reduction="none").sum(-1)
        else:
            l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum(-1)
        giou = 1 - elementwise_generalized_box_iou(src_xyxy, tgt_xyxy)
        if box_weight is not None:
            l1, giou = l1 * box_weight, giou * box_weight
        terms = {"loss_ce": loss_ce, "loss_bbox": l1.sum() / normalizer, "loss_giou": giou.sum() / normalizer}
        if "pred_objs" in layer:
            terms.update(self._sap_terms(layer, idx, src_xyxy, tgt_xyxy, points_outside, normalizer))
        return terms

    def _sap_terms(self, layer, idx, src_xyxy, tgt_xyxy, points_outside, normalizer):
        """SAP-DETR's loss_obj and loss_inner (module docstring) at the pairs idx[:2] = (batch_idx, query_idx)
        [2, P] of boxes src_xyxy / tgt_xyxy [P, 4], of which points_outside have their point outside the GT box."""
        objs = layer["pred_objs"]
        tgt_xyxy = tgt_xyxy.astype(src_xyxy.dtype)  # float32 targets of a float64 model: no silent promotion
        with paddle.no_grad():
            iou = elementwise_box_iou(src_xyxy, tgt_xyxy)[0]
        target = paddle.index_put(paddle.zeros_like(objs), (idx[0], idx[1]), iou[:, None].astype(objs.dtype))
        return {"loss_obj": soft_focal_loss(objs, target, normalizer, self.focal_alpha, self.focal_gamma),
                "loss_inner": paddle.full([], points_outside / normalizer, dtype=objs.dtype)}
