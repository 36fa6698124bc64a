"""Denoising queries as tensors: the numpy queries of common/denoising.py, labels embedded by `label_enc`."""
import paddle

from .utils import inverse_sigmoid


def dn_queries_to_tensors(dn, label_enc, place=None):
    """Embeds the numpy denoising queries. dn: prepare_dn's dict, label_enc: embedding of num_classes + 1 rows
    -> (content [B, P, D], box logits [B, P, 4], attn_mask bool [P + Q, P + Q]) on `place` (default: the current
    device); content and box logits in label_enc's dtype (Paddle's concat does not promote dtypes)."""
    dtype = label_enc.weight.dtype
    labels = paddle.to_tensor(dn["labels"], place=place)
    valid = paddle.to_tensor(dn["valid"], place=place)
    content = label_enc(labels) * valid[..., None].astype(dtype)
    boxes = paddle.to_tensor(dn["boxes"], place=place)  # 0.5 in empty slots: logit 0
    return content, inverse_sigmoid(boxes).astype(dtype), paddle.to_tensor(dn["attn_mask"], place=place)
