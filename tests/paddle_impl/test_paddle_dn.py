"""Denoising queries embedded as tensors (paddle_impl/models/dn_components.py), alone and against torch_impl."""
import numpy as np
import paddle
import torch

from common.denoising import prepare_dn
from paddle_impl.models.dn_components import dn_queries_to_tensors
from torch_impl.models import dn_components as pt_dn


def _dn():
    rng = np.random.default_rng(0)
    targets = [{"labels": rng.integers(0, 7, n), "boxes": np.concatenate(
        [rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.05, 0.2, (n, 2))], 1).astype(np.float32)} for n in (1, 2)]
    return prepare_dn(targets, 7, 3, number=2, label_noise_ratio=0.0, box_noise_scale=0.0, contrastive=True,
                      rng=np.random.default_rng(0))


def test_queries_to_tensors_zero_empty_slots():
    dn = _dn()
    label_enc = paddle.nn.Embedding(8, 16)
    content, box_logits, mask = dn_queries_to_tensors(dn, label_enc)
    assert content.shape == [2, 4, 16] and box_logits.shape == [2, 4, 4] and mask.dtype == paddle.bool
    valid = dn["valid"]
    content, box_logits = content.numpy(), box_logits.numpy()
    assert not content[~valid].any() and not box_logits[~valid].any()
    np.testing.assert_allclose(content[valid], label_enc.weight.numpy()[dn["labels"][valid]])
    np.testing.assert_allclose(1 / (1 + np.exp(-box_logits[valid])), dn["boxes"][valid], atol=1e-6)
    np.testing.assert_array_equal(mask.numpy(), dn["attn_mask"])


def test_queries_match_torch_and_follow_the_embedding_dtype():
    dn = _dn()
    pt_enc = torch.nn.Embedding(8, 16)
    pd_enc = paddle.nn.Embedding(8, 16)
    pd_enc.weight.set_value(pt_enc.weight.detach().numpy())
    for a, b in zip(dn_queries_to_tensors(dn, pd_enc), pt_dn.dn_queries_to_tensors(dn, pt_enc, torch.device("cpu"))):
        np.testing.assert_allclose(a.numpy(), b.detach().numpy(), atol=1e-6)
    pd_enc.to(dtype="float64")  # Paddle's concat does not promote: the box logits follow the model's dtype
    content, box_logits, _ = dn_queries_to_tensors(dn, pd_enc)
    assert content.dtype == box_logits.dtype == paddle.float64
