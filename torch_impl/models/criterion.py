"""Training losses of the DAC-DETR family, following the official release's SetCriterion.

The terms, their names, weights and normalizers: common/set_criterion.py (shared with the Paddle tree).
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
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.matching.ranking import keep_best_duplicates, rank_in_groups
from common.set_criterion import SetCriterionBase, pair_arrays

from .box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from .utils import numpy_rng, targets_to_numpy, targets_to_tensors


def sigmoid_focal_loss(logits, pos, normalizer, alpha=0.25, gamma=2.0):
    """Focal loss over every (query, class) entry with one-hot targets at `pos`.

    logits [B, N, C], pos: (batch_idx, query_idx, class) long tensors [P] -> scalar sum / normalizer.
    """
    target = torch.zeros_like(logits).index_put(pos, torch.ones_like(pos[0], dtype=logits.dtype))
    return soft_focal_loss(logits, target, normalizer, alpha, gamma)


def soft_focal_loss(logits, target, normalizer, alpha=0.25, gamma=2.0):
    """Focal loss with targets in [0, 1] (RetinaNet's formula read with soft targets, as SAP-DETR's objectness).
    logits, target [...] -> scalar sum / normalizer."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).sum() / normalizer


def ice_loss(logits, pos, t, normalizer, gamma=2.0):
    """IoU-aware BCE of the release (module docstring). logits [B, N, C], pos: (batch_idx, query_idx, class)
    long tensors [P] without duplicates, t [P] soft targets (no gradient) -> scalar sum / normalizer."""
    prob = logits.sigmoid()
    pos_weight = torch.zeros_like(logits).index_put(pos, t)
    neg_weight = (prob ** gamma).index_put(pos, 1 - t)
    loss = -(pos_weight * F.logsigmoid(logits) + neg_weight * F.logsigmoid(-logits))
    return loss.sum() / normalizer


class SetCriterion(SetCriterionBase, nn.Module):
    """Losses of every decoder layer and stream: common.set_criterion.SetCriterionBase with torch tensors.

    forward(outputs, targets, num_boxes, rng=None) -> {term: weighted scalar tensor}; see SetCriterionBase.
    """

    def __init__(self, num_classes, matcher, assigner=None, **kwargs):
        nn.Module.__init__(self)
        SetCriterionBase.__init__(self, num_classes, matcher, assigner, **kwargs)

    def forward(self, outputs, targets, num_boxes, rng=None):
        return self.compute(outputs, targets, num_boxes, rng)

    def _targets(self, targets, like):
        return targets_to_tensors(targets, like.device)

    @staticmethod
    def _targets_to_numpy(targets):
        return targets_to_numpy(targets)

    @staticmethod
    def _default_rng():
        return numpy_rng()  # seeded from torch's global RNG

    @staticmethod
    def _numpy(*tensors):
        return tuple(t.detach().float().cpu().numpy() for t in tensors)

    def _terms(self, layer, tgt, indices, normalizer, one_to_many=False, focal=False, delta_targets=None,
               points_outside=0):
        """Class, L1 and GIoU losses of one layer's outputs for per-image (query_idx, gt_idx) pairs; with
        delta_targets (numpy [P, 4]) the L1 term is on layer["pred_deltas"]; points_outside: SAP's loss_inner count
        (common/set_criterion.py)."""
        logits, boxes = layer["pred_logits"], layer["pred_boxes"]
        device = logits.device
        batch_np, query_np, gt_np = pair_arrays(indices, [len(t["labels"]) for t in tgt])
        batch_idx, query_idx, gt_idx = (torch.from_numpy(a).to(device) for a in (batch_np, query_np, gt_np))
        labels = torch.cat([t["labels"] for t in tgt])[gt_idx]
        tgt_boxes = torch.cat([t["boxes"] for t in tgt])[gt_idx]
        src_boxes = boxes[batch_idx, query_idx]
        src_xyxy, tgt_xyxy = box_cxcywh_to_xyxy(src_boxes), box_cxcywh_to_xyxy(tgt_boxes)
        box_weight = None
        if focal or self.loss_type == "focal":
            loss_ce = sigmoid_focal_loss(logits, (batch_idx, query_idx, labels), normalizer,
                                         self.focal_alpha, self.focal_gamma)
        else:
            with torch.no_grad():
                iou = elementwise_box_iou(src_xyxy, tgt_xyxy)[0]
                prob = logits[batch_idx, query_idx, labels].sigmoid()
                t = (prob ** self.ice_alpha * iou ** (1 - self.ice_alpha)).clamp(min=0.01)
                if one_to_many:
                    ranks = rank_in_groups(gt_np, t.cpu().numpy())
                    box_weight = torch.exp(-torch.from_numpy(ranks).to(device=device, dtype=t.dtype) / self.rank_tau)
                    t = t * box_weight
                keys = np.stack([batch_np, query_np, labels.cpu().numpy()], 1)
                keep = torch.from_numpy(keep_best_duplicates(keys, t.cpu().numpy())).to(device)
            pos = (batch_idx[keep], query_idx[keep], labels[keep])
            loss_ce = ice_loss(logits, pos, t[keep], normalizer, self.focal_gamma)
        if delta_targets is not None:
            deltas = layer["pred_deltas"][batch_idx, query_idx]
            l1 = (deltas - torch.from_numpy(delta_targets).to(deltas)).abs().sum(-1)
        elif self.l1_xyxy:
            l1 = F.l1_loss(src_xyxy, tgt_xyxy, reduction="none").sum(-1)
        else:
            l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum(-1)
        giou = 1 - elementwise_generalized_box_iou(src_xyxy, tgt_xyxy)
        if box_weight is not None:
            l1, giou = l1 * box_weight, giou * box_weight
        terms = {"loss_ce": loss_ce, "loss_bbox": l1.sum() / normalizer, "loss_giou": giou.sum() / normalizer}
        if "pred_objs" in layer:
            terms.update(self._sap_terms(layer, batch_idx, query_idx, src_xyxy, tgt_xyxy, points_outside, normalizer))
        return terms

    def _sap_terms(self, layer, batch_idx, query_idx, src_xyxy, tgt_xyxy, points_outside, normalizer):
        """SAP-DETR's loss_obj and loss_inner (module docstring) at the pairs (batch_idx, query_idx) [P] of
        boxes src_xyxy / tgt_xyxy [P, 4], of which points_outside have their point outside the GT box."""
        objs = layer["pred_objs"]
        with torch.no_grad():
            iou = elementwise_box_iou(src_xyxy, tgt_xyxy)[0]
        target = torch.zeros_like(objs).index_put((batch_idx, query_idx), iou[:, None].to(objs.dtype))
        return {"loss_obj": soft_focal_loss(objs, target, normalizer, self.focal_alpha, self.focal_gamma),
                "loss_inner": torch.tensor(points_outside / normalizer, dtype=objs.dtype, device=objs.device)}
