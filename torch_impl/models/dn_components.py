"""Denoising queries as tensors: the numpy queries of common/denoising.py, labels embedded by `label_enc`.

Two content forms: DINO's (DAC-DETR), label_enc [C + 1, D] itself; DN-DETR's (`indicator`), label_enc [C + 1, D - 1]
followed by an indicator feature, 1 for a denoising query and 0 for a matching query, whose content is the
embedding of the extra "unknown" class C (matching_content).
"""
import torch

from .utils import inverse_sigmoid


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
    boxes = torch.from_numpy(dn["boxes"]).to(device)  # 0.5 in empty slots: logit 0
    return content, inverse_sigmoid(boxes), torch.from_numpy(dn["attn_mask"]).to(device)


def matching_content(label_enc):
    """DN-DETR's content of every matching query: the last ("unknown" class) row of label_enc [C + 1, D - 1] and
    indicator 0 -> [D]."""
    row = label_enc.weight[-1]
    return torch.cat([row, row.new_zeros(1)])
