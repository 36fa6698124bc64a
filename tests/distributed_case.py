"""The fixed case of the two distributed-equivalence tests (tests/*/ddp_grads.py): a tiny config and a global
batch of 4 images, framework-free so both trees' scripts read the same numbers."""
import numpy as np

# Denoising off and the one-to-many cap disabled: both draw random numbers per batch, which would differ between
# one batch of 4 and two of 2 by construction.
OVERRIDES = ["model.num_classes=3", "model.backbone.name=resnet18", "model.hidden_dim=32", "model.nheads=2",
             "model.enc_layers=1", "model.dec_layers=2", "model.dim_feedforward=64", "model.num_queries=20",
             "model.num_feature_levels=2", "model.dn.enabled=false", "model.dac.positive_fraction=1.0",
             "model.dac.sample_queries=null", "model.deform_attn_backend=reference", "device=cpu"]


def global_batch():
    """4 images of 96x96 (no padding) with 3, 1, 2 and 0 boxes: rank 0 of 2 gets 5 boxes, rank 1 gets 1 (one
    image without any), so a per-rank box normalizer would show."""
    rng = np.random.default_rng(0)
    targets = []
    for n in (3, 1, 2, 0):
        centres = rng.uniform(0.3, 0.7, (n, 2))
        sizes = rng.uniform(0.1, 0.4, (n, 2))
        targets.append({"labels": rng.integers(0, 3, n).astype(np.int64),
                        "boxes": np.concatenate([centres, sizes], 1).astype(np.float32)})
    images = rng.standard_normal((4, 3, 96, 96)).astype(np.float32)
    return {"images": images, "masks": np.zeros((4, 96, 96), dtype=bool), "targets": targets}
