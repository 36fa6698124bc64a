"""Denoising queries: contrastive denoising (CDN, DINO) and plain denoising (DN-DETR) from one code path.

numpy on the loader's numpy targets, shared by both model trees (so both build bit-identical queries from
the same generator); each tree only embeds the labels (`<tree>/models/dn_components.py`). Layout of the P denoising queries, placed
before the Q matching queries:

    group g (0 .. G-1) occupies slots [g * S, (g + 1) * S), S = 2 * M (contrastive) or M (plain),
    M = max GT count in the batch; inside a group, image b's GT j sits at slot j (positive copy) and,
    contrastive, at slot M + j (negative copy); slots j >= n_b stay empty (zero content, box logit 0).

Contrastive: G = max(1, number // M) (DINO; the release's threshold quirk, fixed groups when number < 50,
is not reproduced), positives jittered by < 1 half-size, negatives by 1-2 half-sizes (trained as
background). Plain: G = number, positives only. A batch without any GT gets no denoising queries (P = 0).

Noise forms (the defaults are DINO's / DAC-DETR's; DN-DETR's are the alternatives):
  box_noise_form   corners: each corner moved by up to box_noise_scale half box sizes (noise_boxes);
                   center_size (DN-DETR): the centre moved by up to box_noise_scale * (w / 2, h / 2), width and
                   height scaled by a factor in [1 - box_noise_scale, 1 + box_noise_scale] (noise_boxes_center_size;
                   positives only, so plain DN);
  label_flip_prob  half_ratio: a label becomes a random class (possibly itself) with probability
                   label_noise_ratio / 2; ratio (DN-DETR): with probability label_noise_ratio.

Attention mask (True = blocked): matching queries cannot see any denoising query, and a denoising group
cannot see another group; denoising queries do see the matching queries.
"""
import numpy as np


def dn_layout(num_gts, number, contrastive):
    """Group count G, slots per group S and P = G * S for per-image GT counts num_gts (list of ints)."""
    max_gt = max(num_gts, default=0)
    if max_gt == 0 or number <= 0:
        return 0, 0, 0
    groups = max(1, number // max_gt) if contrastive else number
    per_group = 2 * max_gt if contrastive else max_gt
    return groups, per_group, groups * per_group


def dn_attn_mask(pad_size, group_size, num_queries):
    """Self-attention mask of P = pad_size denoising + Q matching queries -> bool [P + Q, P + Q], True = blocked."""
    mask = np.zeros((pad_size + num_queries, pad_size + num_queries), dtype=bool)
    mask[pad_size:, :pad_size] = True
    for start in range(0, pad_size, max(group_size, 1)):
        end = start + group_size
        mask[start:end, :start] = True
        mask[start:end, end:pad_size] = True
    return mask


def noise_boxes(boxes, scale, negative, rng):
    """Jitter each corner by sign * u * scale * half the box size, u in [0, 1) (positive) or [1, 2) (negative).

    boxes [n, 4] cxcywh in [0, 1], negative bool [n] -> [n, 4] cxcywh, corners clipped to [0, 1].
    """
    half = np.concatenate([boxes[:, 2:], boxes[:, 2:]], 1) / 2
    xyxy = np.concatenate([boxes[:, :2] - boxes[:, 2:] / 2, boxes[:, :2] + boxes[:, 2:] / 2], 1)
    sign = rng.integers(0, 2, size=boxes.shape) * 2.0 - 1.0
    part = rng.random(boxes.shape) + negative[:, None]
    xyxy = np.clip(xyxy + sign * part * half * scale, 0.0, 1.0)
    return np.concatenate([(xyxy[:, :2] + xyxy[:, 2:]) / 2, xyxy[:, 2:] - xyxy[:, :2]], 1)


def noise_boxes_center_size(boxes, scale, rng):
    """DN-DETR's box noise: (cx, cy) += u * scale * (w, h) / 2 and (w, h) *= 1 + u * scale, an independent
    u ~ U[-1, 1) per coordinate. boxes [n, 4] cxcywh in [0, 1] -> [n, 4] cxcywh, each value clipped to [0, 1]
    (as the release clips)."""
    u = rng.random(boxes.shape) * 2.0 - 1.0
    reach = np.concatenate([boxes[:, 2:] / 2, boxes[:, 2:]], 1) * scale
    return np.clip(boxes + u * reach, 0.0, 1.0)


def prepare_dn(targets, num_classes, num_queries, number, label_noise_ratio, box_noise_scale, contrastive, rng,
               box_noise_form="corners", label_flip_prob="half_ratio"):
    """Noised copies of the ground truth as denoising queries (module docstring for the layout and noise forms).

    targets: B dicts with "labels" int [n_b] and "boxes" [n_b, 4] cxcywh; rng: np.random.Generator.
    -> dict with
       labels int64 [B, P]          (noised class of each slot; 0 in empty slots)
       boxes float32 [B, P, 4]      (noised cxcywh; 0.5 in empty slots, i.e. logit 0)
       valid bool [B, P]            (slot holds a GT copy)
       attn_mask bool [P+Q, P+Q]
       positive_idx: B tuples (query_idx int64 [G n_b], gt_idx int64 [G n_b])  (slots to reconstruct their GT)
       pad_size P, num_groups G, group_size S
    """
    if box_noise_form not in ("corners", "center_size") or label_flip_prob not in ("half_ratio", "ratio"):
        raise ValueError(f"model.dn.box_noise_form must be corners or center_size and model.dn.label_flip_prob "
                         f"half_ratio or ratio, got {box_noise_form!r}, {label_flip_prob!r}")
    if contrastive and box_noise_form == "center_size":
        raise ValueError("model.dn.box_noise_form center_size has no negatives: set model.dn.contrastive false")
    labels_list = [np.asarray(t["labels"], dtype=np.int64).reshape(-1) for t in targets]
    boxes_list = [np.asarray(t["boxes"], dtype=np.float64).reshape(-1, 4) for t in targets]
    groups, group_size, pad = dn_layout([len(x) for x in labels_list], number, contrastive)
    max_gt = group_size // 2 if contrastive else group_size
    flip_prob = label_noise_ratio * (0.5 if label_flip_prob == "half_ratio" else 1.0)
    b = len(targets)
    labels = np.zeros((b, pad), dtype=np.int64)
    boxes = np.full((b, pad, 4), 0.5, dtype=np.float64)
    valid = np.zeros((b, pad), dtype=bool)
    positive_idx = []
    kinds = (0, 1) if contrastive else (0,)
    for i, (lab, box) in enumerate(zip(labels_list, boxes_list)):
        n = len(lab)
        # slot of (group, kind, gt): group * S + kind * M + gt
        g, k, j = np.meshgrid(np.arange(groups), np.array(kinds), np.arange(n), indexing="ij")
        slots = (g * group_size + k * max_gt + j).reshape(-1)
        gt = j.reshape(-1)
        negative = k.reshape(-1).astype(bool)
        noisy_labels = lab[gt].copy()
        if flip_prob > 0:
            flip = rng.random(len(gt)) < flip_prob
            noisy_labels[flip] = rng.integers(0, num_classes, size=int(flip.sum()))
        noisy_boxes = box[gt]
        if box_noise_scale > 0 and box_noise_form == "center_size":
            noisy_boxes = noise_boxes_center_size(noisy_boxes, box_noise_scale, rng)
        elif box_noise_scale > 0:
            noisy_boxes = noise_boxes(noisy_boxes, box_noise_scale, negative, rng)
        labels[i, slots], boxes[i, slots], valid[i, slots] = noisy_labels, noisy_boxes, True
        positive_idx.append((slots[~negative].astype(np.int64), gt[~negative].astype(np.int64)))
    return dict(labels=labels, boxes=boxes.astype(np.float32), valid=valid,
                attn_mask=dn_attn_mask(pad, group_size, num_queries), positive_idx=positive_idx,
                pad_size=pad, num_groups=groups, group_size=group_size)
