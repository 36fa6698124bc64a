"""Denoising queries as tensors: the numpy queries of common/denoising.py, labels embedded by `label_enc`.

Two content forms: DINO's (DAC-DETR), label_enc [C + 1, D] itself; DN-DETR's (`indicator`), label_enc [C + 1, D - 1]
followed by an indicator feature, 1 for a denoising query and 0 for a matching query, whose content is the
embedding of the extra "unknown" class C (matching_content) in DN-DAB-DETR, a learned one in DN-Deformable-DETR.
"""
import torch

from common.denoising import prepare_dn

from .utils import inverse_sigmoid, numpy_rng, targets_to_numpy


def dn_queries_to_tensors(dn, label_enc, device, indicator=False):
    """Embeds the numpy denoising queries. dn: prepare_dn's dict, label_enc: embedding of num_classes + 1 rows
    (D - 1 features with `indicator`, else D) -> (content [B, P, D], box logits [B, P, 4], attn_mask bool [P + Q,
    P + Q]) on `device`; empty slots have zero content (indicator included) and box logit 0."""
    labels = torch.from_numpy(dn["labels"]).to(device)
    valid = torch.from_numpy(dn["valid"]).to(device)
    content = label_enc(labels)
    if indicator:
        content = torch.cat([content, content.new_ones(content.shape[:-1] + (1,))], -1)
    content = content * valid[..., None].to(label_enc.weight.dtype)
    # in the model's dtype before the logit: float32 logs differ by an ulp between the frameworks on some CPUs
    boxes = torch.from_numpy(dn["boxes"]).to(device, label_enc.weight.dtype)  # 0.5 in empty slots: logit 0
    return content, inverse_sigmoid(boxes), torch.from_numpy(dn["attn_mask"]).to(device)


def matching_content(label_enc):
    """DN-DETR's content of every matching query: the last ("unknown" class) row of label_enc [C + 1, D - 1] and
    indicator 0 -> [D]."""
    row = label_enc.weight[-1]
    return torch.cat([row, row.new_zeros(1)])


def with_dn_queries(dn_opts, num_classes, label_enc, anchors, content, targets, dn_rng, device):
    """DN-DETR's training queries of an anchor-box detector (DABDETR, DABDeformableDETR): P denoising queries
    (prepare_dn, DN-DETR's content form) before its Q matching ones.

    dn_opts: prepare_dn's options, label_enc [C + 1, D - 1], anchors [Q, 4] logits, content [B, Q, D], targets: B
    dicts "labels" [n], "boxes" [n, 4] (numpy or tensors), dn_rng: numpy Generator or None (seeded from torch's RNG)
    -> (anchor logits [B, P + Q, 4], content [B, P + Q, D], attn_mask bool [P + Q, P + Q] or None when P = 0,
    prepare_dn's dict).
    """
    if targets is None:
        raise ValueError("training with denoising needs the targets: model(images, masks, targets)")
    rng = dn_rng if dn_rng is not None else numpy_rng()
    dn = prepare_dn(targets_to_numpy(targets), num_classes, anchors.shape[0], rng=rng, **dn_opts)
    anchors = anchors.expand(content.shape[0], -1, -1)
    if dn["pad_size"] == 0:
        return anchors, content, None, dn
    dn_content, dn_anchors, attn_mask = dn_queries_to_tensors(dn, label_enc, device, indicator=True)
    return torch.cat([dn_anchors.to(anchors.dtype), anchors], 1), torch.cat([dn_content, content], 1), attn_mask, dn
