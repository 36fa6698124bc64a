"""What the DN-DETR (dab_detr + model.dn) tests of both trees share: the tiny DAB-DETR of dab_detr_case with DN-DETR's
denoising options (3 groups to stay small), batches with and without GT, and the queries the model must build."""
import numpy as np

from common.denoising import prepare_dn
from tests.dab_detr_case import IMAGES, MASKS, TARGETS, model_cfg  # noqa: F401

DN = dict(enabled=True, contrastive=False, number=3, label_noise_ratio=0.2, label_flip_prob="ratio",
          box_noise_scale=0.4, box_noise_form="center_size")
NUM_CLASSES, NUM_QUERIES, HIDDEN = 4, 12, 32
NO_GT = [{"labels": np.zeros(0, np.int64), "boxes": np.zeros((0, 4), np.float32)} for _ in range(2)]
ONE_EMPTY = [TARGETS[0], NO_GT[1]]  # image 1 without GT: its slots stay empty


def dn_cfg(**overrides):
    return model_cfg(dn=DN, **overrides)


def expected_dn(targets, seed):
    """prepare_dn's queries for `targets` from np.random.default_rng(seed), as the model must draw them."""
    opts = {k: v for k, v in DN.items() if k != "enabled"}
    return prepare_dn(targets, NUM_CLASSES, NUM_QUERIES, rng=np.random.default_rng(seed), **opts)


def check_queries(anchors, content, attn_mask, dn, label_enc, refpoint, matching=None):
    """The decoder's inputs (numpy: anchor logits [B, P + Q, 4], content [B, P + Q, D], attn_mask [P + Q, P + Q])
    against prepare_dn's `dn`, label_enc [C + 1, D - 1], refpoint_embed [Q, 4] and the matching queries' content
    `matching` [Q, D] (default: DN-DAB-DETR's, the unknown class's embedding and indicator 0); raises
    AssertionError."""
    p, b = dn["pad_size"], anchors.shape[0]
    valid = dn["valid"]
    assert anchors.shape == (b, p + NUM_QUERIES, 4) and content.shape == (b, p + NUM_QUERIES, HIDDEN)
    np.testing.assert_array_equal(attn_mask, dn["attn_mask"])
    np.testing.assert_allclose(1 / (1 + np.exp(-anchors[:, :p])), dn["boxes"], atol=1e-6)
    np.testing.assert_array_equal(anchors[:, p:], np.broadcast_to(refpoint, (b,) + refpoint.shape))
    # DN-DETR's content: the noised label's embedding and indicator 1; empty slots all zero
    dn_content = np.concatenate([label_enc[dn["labels"]], np.ones(dn["labels"].shape + (1,))], -1)
    np.testing.assert_allclose(content[:, :p][valid], dn_content[valid], atol=1e-7)
    assert not content[:, :p][~valid].any()
    if matching is None:  # DN-DAB-DETR: the unknown class's embedding and indicator 0
        matching = np.broadcast_to(np.concatenate([label_enc[NUM_CLASSES], [0.0]]), (NUM_QUERIES, HIDDEN))
    np.testing.assert_allclose(content[:, p:], np.broadcast_to(matching, (b, NUM_QUERIES, HIDDEN)), atol=1e-7)
