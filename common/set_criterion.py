"""The bookkeeping of the DAC-DETR losses, shared by both trees' SetCriterion: which terms exist, their names,
weights and normalizers, and which queries are compared with which targets. The tensor math of one layer's terms
(`_terms`) is each framework's (torch_impl/models/criterion.py, paddle_impl/models/criterion.py).

criterion(outputs, targets, num_boxes, rng=None) -> {term: weighted scalar}; the sum of the values is the total
loss, and `weight_dict[term]` is each term's weight (so term / weight is the raw value, for logging). Terms are
named loss_{ce,bbox,giou}{stream}{layer}: stream "" (O-decoder, Hungarian one-to-one), "_dn" (its denoising
queries), "_c" (C-decoder, one-to-many), "_c_dn" (C-decoder denoising queries), "_enc" (encoder proposals);
layer "" for the last decoder layer and "_i" for earlier layer i (0-based). Normalizers: num_boxes (O-decoder,
encoder), num_boxes * denoising groups (denoising), dac.loss_norm * num_boxes (C-decoder; the release repeats
every target 3 times to count them). `num_boxes` is the caller's GT count (mean over ranks); each normalizer
is clamped to >= 1.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np

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
    A subclass provides `_terms(layer, tgt, indices, normalizer, one_to_many=False, focal=False) -> {TERMS}`,
    `_numpy(logits, boxes)` (detached float32 numpy copies), `_targets(numpy_targets, like)` (targets as tensors
    on the device of tensor `like`), `_targets_to_numpy(targets)` and `_default_rng()`.
    """

    def __init__(self, num_classes, matcher, assigner=None, num_layers=6, two_stage=True, dn=True, loss_type="ice",
                 focal_alpha=0.25, focal_gamma=2.0, ice_alpha=0.25, rank_tau=1.5, class_weight=1.0,
                 bbox_weight=5.0, giou_weight=2.0, enc_class_weight=2.0, dac_loss_norm=3.0,
                 dac_assign_boxes="o_decoder"):
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
        self.weight_dict = {k + s + lay: w for s in streams for lay in self._layer_suffixes() for k, w in base.items()}
        if two_stage:
            self.weight_dict.update(loss_ce_enc=enc_class_weight, loss_bbox_enc=bbox_weight,
                                    loss_giou_enc=giou_weight)

    def compute(self, outputs, targets, num_boxes, rng=None) -> Dict:
        """outputs: the model's training dict; targets: B dicts ("labels" [n], "boxes" [n, 4] cxcywh; numpy or
        tensors); num_boxes: GT boxes per rank (float); rng: numpy Generator of the one-to-many sampling
        (default: seeded from the framework's global RNG) -> {term: weighted scalar tensor}."""
        c_norm = max(self.dac_loss_norm * float(num_boxes), 1.0)  # clamped after scaling, as released
        num_boxes = max(float(num_boxes), 1.0)
        targets = self._targets_to_numpy(targets)
        tgt = self._targets(targets, outputs["pred_logits"])
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
            indices = self.matcher(*self._numpy(enc["pred_logits"][..., :1], enc["pred_boxes"]), binary)
            terms = self._terms(enc, self._targets(binary, enc["pred_logits"]), indices, num_boxes, focal=True)
            raw.update({f"{k}_enc": v for k, v in terms.items()})
        return {k: v * self.weight_dict[k] for k, v in raw.items()}

    def _layer_suffixes(self) -> List[str]:
        return [f"_{i}" for i in range(self.num_layers - 1)] + [""]

    @staticmethod
    def _layers(stream):
        return list(stream["aux_outputs"]) + [stream]

    def _suffix(self, terms, stream, layer):
        tail = "" if layer == self.num_layers - 1 else f"_{layer}"
        return {f"{k}{stream}{tail}": v for k, v in terms.items()}
