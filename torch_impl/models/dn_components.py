"""Denoising queries as tensors: the numpy queries of common/denoising.py, labels embedded by `label_enc`."""
import torch

from .utils import inverse_sigmoid


def dn_queries_to_tensors(dn, label_enc, device):
    """Embeds the numpy denoising queries. dn: prepare_dn's dict, label_enc: embedding of num_classes + 1 rows
    -> (content [B, P, D], box logits [B, P, 4], attn_mask bool [P + Q, P + Q]) on `device`."""
    labels = torch.from_numpy(dn["labels"]).to(device)
    valid = torch.from_numpy(dn["valid"]).to(device)
    content = label_enc(labels) * valid[..., None].to(label_enc.weight.dtype)
    boxes = torch.from_numpy(dn["boxes"]).to(device)  # 0.5 in empty slots: logit 0
    return content, inverse_sigmoid(boxes), torch.from_numpy(dn["attn_mask"]).to(device)
