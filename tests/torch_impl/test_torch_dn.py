"""Denoising queries embedded as tensors (torch_impl/models/dn_components.py)."""
import numpy as np
import torch

from common.denoising import prepare_dn
from torch_impl.models.dn_components import dn_queries_to_tensors


def test_queries_to_tensors_zero_empty_slots():
    rng = np.random.default_rng(0)
    targets = [{"labels": rng.integers(0, 7, n), "boxes": np.concatenate(
        [rng.uniform(0.3, 0.7, (n, 2)), rng.uniform(0.05, 0.2, (n, 2))], 1).astype(np.float32)} for n in (1, 2)]
    dn = prepare_dn(targets, 7, 3, number=2, label_noise_ratio=0.0, box_noise_scale=0.0, contrastive=True,
                    rng=np.random.default_rng(0))
    label_enc = torch.nn.Embedding(8, 16)
    content, box_logits, mask = dn_queries_to_tensors(dn, label_enc, torch.device("cpu"))
    assert content.shape == (2, 4, 16) and box_logits.shape == (2, 4, 4) and mask.dtype == torch.bool
    valid = torch.from_numpy(dn["valid"])
    assert (content[~valid] == 0).all() and (box_logits[~valid] == 0).all()
    assert torch.allclose(content[valid], label_enc.weight[torch.from_numpy(dn["labels"])[valid]])
    assert torch.allclose(box_logits[valid].sigmoid(), torch.from_numpy(dn["boxes"])[valid], atol=1e-6)
