"""The bookkeeping of the DAC-DETR losses, shared by both trees' SetCriterion: which terms exist, their names,
weights and normalizers, and which queries are compared with which targets. The tensor math of one layer's terms
(`_terms`) is each framework's (torch_impl/models/criterion.py, paddle_impl/models/criterion.py).

criterion(outputs, targets, num_boxes, rng=None) -> {term: weighted scalar}; the sum of the values is the total
loss, and `weight_dict[term]` is each term's weight (so term / weight is the raw value, for logging). Terms are
named loss_{ce,bbox,giou}{stream}{layer}: stream "" (O-decoder, Hungarian one-to-one), "_dn" (its denoising
queries), "_c" (C-decoder, one-to-many), "_c_dn" (C-decoder denoising queries), "_one2many" (Plain-DETR's
hybrid-matching queries: Hungarian against every GT repeated hybrid_k times), "_enc" (encoder proposals);
layer "" for the last decoder layer and "_i" for earlier layer i (0-based). Normalizers: num_boxes (O-decoder,
encoder), num_boxes * denoising groups (denoising), dac.loss_norm * num_boxes (C-decoder; the release repeats
every target 3 times to count them), hybrid_k * num_boxes (one-to-many). `num_boxes` is the caller's GT count
(mean over ranks); each normalizer is clamped to >= 1 (after the scaling, as the releases do).

Box reparameterization (Plain-DETR): a layer dict that also holds pred_deltas [B, N, 4] and ref_boxes [B, N, 4]
(the detached reference boxes the deltas apply to, cxcywh in pixels), with outputs["image_size"] [B, 2] (w, h in
pixels of the normalized boxes), has its L1 cost and loss on the deltas: |delta - box_to_delta(ref, GT)|.

SAP-DETR (sap_terms): layer dicts also hold pred_objs [B, N, 1] (objectness logits) and pred_points [B, N, 2]; the
matcher multiplies the class probability by the objectness one and penalizes points outside the GT box
(HungarianMatcher's cost_inner), and two terms join each layer's: loss_obj, the focal loss of the objectness
towards the IoU of the matched boxes (0 for the other queries), and loss_inner, the number of matched points
outside their GT box (no gradient; the release adds it to the total). Its L1 term is on x1y1x2y2 (l1_xyxy).
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

from common.box_ops import box_cxcywh_to_xyxy, box_to_delta
from common.matching.hungarian import points_inside

TERMS = ("loss_ce", "loss_bbox", "loss_giou")


def pair_arrays(indices: Sequence[Tuple[np.ndarray, np.ndarray]], gt_counts: Sequence[int]):
    """Per-image (query_idx, gt_idx) pairs -> (batch_idx, query_idx, gt_idx into the concatenated targets),
    int64 numpy arrays [P] each."""
    batch = np.concatenate([np.full(len(q), b, dtype=np.int64) for b, (q, _) in enumerate(indices)])
    query = np.concatenate([np.asarray(q, dtype=np.int64) for q, _ in indices])
    offsets = np.cumsum([0] + list(gt_counts))
    gt = np.concatenate([np.asarray(g, dtype=np.int64) + offsets[b] for b, (_, g) in enumerate(indices)])
    return batch, query, gt


class SetCriterionBase:
    """The losses of every decoder layer and stream (module docstring); subclasses add the tensor operations.

    matcher: common.matching.HungarianMatcher; assigner: common.matching.OneToManyAssigner or None (no DAC).
    A subclass provides `_terms(layer, tgt, indices, normalizer, one_to_many=False, focal=False,
    delta_targets=None, points_outside=0) -> {TERMS}` (delta_targets: numpy [P, 4] targets of layer["pred_deltas"]
    at the pairs, or None: L1 on the boxes; with sap_terms also loss_obj and loss_inner = points_outside / normalizer,
    points_outside being the count of matched points outside their GT box), `_numpy(*tensors)` (detached float32 numpy
    copies), `_targets(numpy_targets, like)` (targets as tensors on the device of tensor `like`),
    `_targets_to_numpy(targets)` and `_default_rng()`.
    """

    def __init__(self, num_classes, matcher, assigner=None, num_layers=6, two_stage=True, dn=True, loss_type="ice",
                 focal_alpha=0.25, focal_gamma=2.0, ice_alpha=0.25, rank_tau=1.5, class_weight=1.0,
                 bbox_weight=5.0, giou_weight=2.0, enc_class_weight=2.0, dac_loss_norm=3.0,
                 dac_assign_boxes="o_decoder", hybrid_k=0, hybrid_weight=1.0, sap_terms=False, obj_weight=1.0,
                 inner_weight=2.0, l1_xyxy=False):
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
        self.hybrid_k = hybrid_k
        self.l1_xyxy = l1_xyxy
        base = {"loss_ce": class_weight, "loss_bbox": bbox_weight, "loss_giou": giou_weight}
        if sap_terms:
            base.update(loss_obj=obj_weight, loss_inner=inner_weight)
        streams = [""] + (["_dn"] if dn else []) + (["_c"] if assigner is not None else []) + \
                  (["_c_dn"] if dn and assigner is not None else [])
        self.weight_dict = {k + s + lay: w for s in streams for lay in self._layer_suffixes() for k, w in base.items()}
        if hybrid_k:
            self.weight_dict.update({f"{k}_one2many{lay}": w * hybrid_weight for lay in self._layer_suffixes()
                                     for k, w in base.items()})
        if two_stage:
            self.weight_dict.update(loss_ce_enc=enc_class_weight, loss_bbox_enc=bbox_weight,
                                    loss_giou_enc=giou_weight)

    def compute(self, outputs, targets, num_boxes, rng=None) -> Dict:
        """outputs: the model's training dict; targets: B dicts ("labels" [n], "boxes" [n, 4] cxcywh; numpy or
        tensors); num_boxes: GT boxes per rank (float); rng: numpy Generator of the one-to-many sampling
        (default: seeded from the framework's global RNG) -> {term: weighted scalar tensor}."""
        c_norm = max(self.dac_loss_norm * float(num_boxes), 1.0)  # clamped after scaling, as released
        o2m_norm = max(self.hybrid_k * float(num_boxes), 1.0)  # the same for the one-to-many GT copies
        num_boxes = max(float(num_boxes), 1.0)
        targets = self._targets_to_numpy(targets)
        tgt = self._targets(targets, outputs["pred_logits"])
        size = self._numpy(outputs["image_size"])[0] if "image_size" in outputs else None
        raw = {}
        for i, layer in enumerate(self._layers(outputs)):
            raw.update(self._suffix(self._matched_terms(layer, targets, tgt, num_boxes, size), "", i))

        if self.hybrid_k and "one2many_outputs" in outputs:
            k = self.hybrid_k
            repeated = [{"labels": np.tile(t["labels"], k), "boxes": np.tile(t["boxes"], (k, 1))} for t in targets]
            tgt_rep = self._targets(repeated, outputs["pred_logits"])
            for i, layer in enumerate(self._layers(outputs["one2many_outputs"])):
                terms = self._matched_terms(layer, repeated, tgt_rep, o2m_norm, size)
                raw.update(self._suffix(terms, "_one2many", i))

        dn_meta = outputs.get("dn_meta")
        if dn_meta is not None:
            for stream, key in (("_dn", "dn_outputs"), ("_c_dn", "c_dn_outputs")):
                if stream == "_c_dn" and self.assigner is None:
                    continue
                if dn_meta["pad_size"] == 0:  # no GT in the batch: the terms exist, at zero
                    zero = outputs["pred_logits"].sum() * 0.0
                    raw.update({f"{k}{stream}{lay}": zero for k in TERMS for lay in self._layer_suffixes()})
                    continue
                norm = num_boxes * dn_meta["num_groups"]
                for i, layer in enumerate(self._layers(outputs[key])):
                    raw.update(self._suffix(self._terms(layer, tgt, dn_meta["positive_idx"], norm), stream, i))

        if self.assigner is not None and "c_outputs" in outputs:
            rng = rng if rng is not None else self._default_rng()
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
            terms = self._matched_terms(dict(enc, pred_logits=enc["pred_logits"][..., :1]), binary,
                                        self._targets(binary, enc["pred_logits"]), num_boxes, size, focal=True,
                                        loss_layer=enc)
            raw.update({f"{k}_enc": v for k, v in terms.items()})
        return {k: v * self.weight_dict[k] for k, v in raw.items()}

    def _matched_terms(self, layer, targets, tgt, normalizer, image_size, focal=False, loss_layer=None):
        """Hungarian matching of one layer's outputs to numpy `targets` (tensor copy `tgt`), then its terms
        (computed on `loss_layer`, default `layer`). image_size: numpy [B, 2], needed with box reparameterization."""
        reparam = objectness = points = None
        if "pred_deltas" in layer:
            reparam = self._numpy(layer["pred_deltas"], layer["ref_boxes"]) + (image_size,)
        if "pred_objs" in layer:
            objectness, points = self._numpy(layer["pred_objs"], layer["pred_points"])
        indices = self.matcher(*self._numpy(layer["pred_logits"], layer["pred_boxes"]), targets, reparam=reparam,
                               objectness=objectness, points=points)
        batch, query, gt = pair_arrays(indices, [len(t["labels"]) for t in targets])
        gt_boxes = np.concatenate([t["boxes"] for t in targets]).reshape(-1, 4)[gt].astype(np.float64)
        delta_targets, points_outside = None, 0
        if reparam is not None:
            gt_pixels = gt_boxes * np.tile(image_size[batch], 2)
            delta_targets = box_to_delta(reparam[1][batch, query].astype(np.float64), gt_pixels)
        if points is not None:  # the matcher's own inside test, at the matched pairs
            points_outside = int((~points_inside(points[batch, query], box_cxcywh_to_xyxy(gt_boxes))).sum())
        return self._terms(loss_layer if loss_layer is not None else layer, tgt, indices, normalizer, focal=focal,
                           delta_targets=delta_targets, points_outside=points_outside)

    def _layer_suffixes(self) -> List[str]:
        return [f"_{i}" for i in range(self.num_layers - 1)] + [""]

    @staticmethod
    def _layers(stream):
        return list(stream["aux_outputs"]) + [stream]

    def _suffix(self, terms, stream, layer):
        tail = "" if layer == self.num_layers - 1 else f"_{layer}"
        return {f"{k}{stream}{tail}": v for k, v in terms.items()}
