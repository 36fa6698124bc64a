"""Training losses of the DAC-DETR family, following the official release's SetCriterion.

criterion(outputs, targets, num_boxes, rng=None) -> {term: weighted scalar}; the sum of the values is the total
loss, and `weight_dict[term]` is each term's weight (so term / weight is the raw value, for logging). Terms are
named loss_{ce,bbox,giou}{stream}{layer}: stream "" (O-decoder, Hungarian one-to-one), "_dn" (its denoising
queries), "_c" (C-decoder, one-to-many), "_c_dn" (C-decoder denoising queries), "_enc" (encoder proposals);
layer "" for the last decoder layer and "_i" for earlier layer i (0-based). Normalizers: num_boxes (O-decoder,
encoder), num_boxes * denoising groups (denoising), dac.loss_norm * num_boxes (C-decoder; the release repeats
every target 3 times to count them). `num_boxes` is the caller's GT count (mean over ranks); each normalizer
is clamped to >= 1.

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
Boxes: L1 on cxcywh and 1 - GIoU, summed over positives / normalizer.

Mirror of torch_impl/models/criterion.py. Matching runs in numpy (common/matching) on detached copies, so
the pair indices reach the losses as int64 tensors built from numpy.
"""
import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from common.matching.ranking import keep_best_duplicates, rank_in_groups

from .box_ops import box_cxcywh_to_xyxy, elementwise_box_iou, elementwise_generalized_box_iou
from .utils import numpy_rng, targets_to_numpy, targets_to_tensors


def sigmoid_focal_loss(logits, pos, normalizer, alpha=0.25, gamma=2.0):
    """Focal loss over every (query, class) entry with one-hot targets at `pos`.

    logits [B, N, C], pos: (batch_idx, query_idx, class) int64 tensors [P] -> scalar sum / normalizer.
    """
    target = paddle.index_put(paddle.zeros_like(logits), pos, paddle.ones_like(pos[0], dtype=logits.dtype))
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


class SetCriterion(nn.Layer):
    """Losses of every decoder layer and stream (module docstring).

    matcher: common.matching.HungarianMatcher; assigner: common.matching.OneToManyAssigner or None (no DAC).
    """

    def __init__(self, num_classes, matcher, assigner=None, num_layers=6, two_stage=True, dn=True, loss_type="ice",
                 focal_alpha=0.25, focal_gamma=2.0, ice_alpha=0.25, rank_tau=1.5, class_weight=1.0,
                 bbox_weight=5.0, giou_weight=2.0, enc_class_weight=2.0, dac_loss_norm=3.0,
                 dac_assign_boxes="o_decoder"):
        super().__init__()
        if loss_type not in ("focal", "ice"):
            raise ValueError(f"model.loss.type must be focal or ice, got {loss_type!r}")
        if dac_assign_boxes not in ("o_decoder", "c_decoder"):
            raise ValueError(f"model.dac.assign_boxes must be o_decoder or c_decoder, got {dac_assign_boxes!r}")
        self.num_classes = num_classes
        self.matcher = matcher
        self.assigner = assigner
        self.loss_type = loss_type
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.ice_alpha, self.rank_tau = ice_alpha, rank_tau
        self.dac_loss_norm = dac_loss_norm
        self.dac_assign_boxes = dac_assign_boxes
        self.num_layers = num_layers
        base = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        streams = [""] + (["_dn"] if dn else []) + (["_c"] if assigner is not None else []) + \
                  (["_c_dn"] if dn and assigner is not None else [])
        layers = [f"_{i}" for i in range(num_layers - 1)] + [""]
        self.weight_dict = {k + s + lay: w for s in streams for lay in layers for k, w in base.items()}
        if two_stage:
            self.weight_dict.update(loss_ce_enc=enc_class_weight, loss_bbox_enc=bbox_weight,
                                    loss_giou_enc=giou_weight)

    def forward(self, outputs, targets, num_boxes, rng=None):
        """outputs: the model's training dict; targets: B dicts ("labels" [n], "boxes" [n, 4] cxcywh; numpy or
        tensors); num_boxes: GT boxes per rank (float); rng: numpy Generator of the one-to-many sampling (default:
        seeded from Paddle's global RNG) -> {term: weighted scalar tensor}."""
        c_norm = max(self.dac_loss_norm * float(num_boxes), 1.0)  # clamped after scaling, as released
        num_boxes = max(float(num_boxes), 1.0)
        place = outputs["pred_logits"].place
        targets = targets_to_numpy(targets)
        tgt = targets_to_tensors(targets, place)
        raw = {}
        for i, layer in enumerate(self._layers(outputs)):
            indices = self.matcher(*self._numpy(layer["pred_logits"], layer["pred_boxes"]), targets)
            raw.update(self._suffix(self._terms(layer, tgt, indices, num_boxes), "", i))

        dn_meta = outputs.get("dn_meta")
        if dn_meta is not None:
            for stream, key in (("_dn", "dn_outputs"), ("_c_dn", "c_dn_outputs")):
                if stream == "_c_dn" and self.assigner is None:
                    continue
                if dn_meta["pad_size"] == 0:  # no GT in the batch: the terms exist, at zero
                    zero = outputs["pred_logits"].sum() * 0.0
                    raw.update({f"{k}{stream}{lay}": zero for k in ("loss_ce", "loss_bbox", "loss_giou")
                                for lay in [f"_{i}" for i in range(self.num_layers - 1)] + [""]})
                    continue
                norm = num_boxes * dn_meta["num_groups"]
                for i, layer in enumerate(self._layers(outputs[key])):
                    raw.update(self._suffix(self._terms(layer, tgt, dn_meta["positive_idx"], norm), stream, i))

        if self.assigner is not None and "c_outputs" in outputs:
            rng = rng if rng is not None else numpy_rng()
            o_layers = self._layers(outputs)
            for i, layer in enumerate(self._layers(outputs["c_outputs"])):
                boxes = o_layers[i]["pred_boxes"] if self.dac_assign_boxes == "o_decoder" else layer["pred_boxes"]
                indices = self.assigner(*self._numpy(layer["pred_logits"], boxes), targets, rng=rng)
                terms = self._terms(layer, tgt, indices, c_norm, one_to_many=True)
                raw.update(self._suffix(terms, "_c", i))

        if "enc_outputs" in outputs:
            enc = outputs["enc_outputs"]
            binary = [{"labels": np.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in targets]
            # class-agnostic matching: only the class-0 column matters, so only that one is copied
            indices = self.matcher(*self._numpy(enc["pred_logits"][..., :1], enc["pred_boxes"]), binary)
            bin_tgt = [{"labels": paddle.zeros_like(t["labels"]), "boxes": t["boxes"]} for t in tgt]
            terms = self._terms(enc, bin_tgt, indices, num_boxes, focal=True)
            raw.update({f"{k}_enc": v for k, v in terms.items()})
        return {k: v * self.weight_dict[k] for k, v in raw.items()}

    def _layers(self, stream):
        return list(stream["aux_outputs"]) + [stream]

    def _suffix(self, terms, stream, layer):
        tail = "" if layer == self.num_layers - 1 else f"_{layer}"
        return {f"{k}{stream}{tail}": v for k, v in terms.items()}

    @staticmethod
    def _numpy(logits, boxes):
        return logits.detach().astype("float32").numpy(), boxes.detach().astype("float32").numpy()

    def _terms(self, layer, tgt, indices, normalizer, one_to_many=False, focal=False):
        """Class, L1 and GIoU losses of one layer's outputs for per-image (query_idx, gt_idx) pairs."""
        logits, boxes = layer["pred_logits"], layer["pred_boxes"]
        place = logits.place
        batch_np = np.concatenate([np.full(len(q), b, dtype=np.int64) for b, (q, _) in enumerate(indices)])
        query_np = np.concatenate([np.asarray(q, dtype=np.int64) for q, _ in indices])
        offsets = np.cumsum([0] + [len(t["labels"]) for t in tgt])
        gt_np = np.concatenate([np.asarray(g, dtype=np.int64) + offsets[b] for b, (_, g) in enumerate(indices)])
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
        l1 = F.l1_loss(src_boxes, tgt_boxes, reduction="none").sum(-1)
        giou = 1 - elementwise_generalized_box_iou(src_xyxy, tgt_xyxy)
        if box_weight is not None:
            l1, giou = l1 * box_weight, giou * box_weight
        return {"loss_ce": loss_ce, "loss_bbox": l1.sum() / normalizer, "loss_giou": giou.sum() / normalizer}
