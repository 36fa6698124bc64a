"""DAB-DETR, torch vs Paddle on converted weights (convert/rules.py), float64: the same eval outputs of every
decoder layer, the same loss terms and gradients of every parameter, the same parameters after SGD steps.
tests/test_conditional_detr_parity.py's method, on the anchor-box decoder."""
import numpy as np
import pytest
import torch

from convert.parity import TrainingPair, gradient_error, max_relative
from tests.dab_detr_case import IMAGES, MASKS, TARGETS, model_cfg
from tests.test_conditional_detr_parity import _one_torch_thread  # noqa: F401  (fixture)
from tests.test_conditional_detr_parity import eval_outputs_float64, no_exact_zero_norms

VARIANTS = {"c4_frozen_bn": {}, "c5_gn": dict(backbone=dict(last_stage=4, norm="gn", frozen_stages=-1))}
BATCH = {"images": IMAGES, "masks": MASKS, "targets": TARGETS}


def moving_anchors(model):
    """Non-zero box deltas (the release starts bbox_embed's last layer at 0): the anchors move from layer to
    layer, so the update path and the w / h modulation of later layers are compared."""
    model.bbox_embed.layers[-1].weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_eval_outputs_float64(variant):
    for name, a, b in eval_outputs_float64(model_cfg(**VARIANTS[variant]), moving_anchors):
        # not 1e-12: both trees compute the pixels' sine codes in float32 (sin differs by an ulp between the
        # frameworks); measured 6e-10
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(1.0, np.abs(a).max()), err_msg=name)


def _prepare(model):
    no_exact_zero_norms(model)
    moving_anchors(model)


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_losses_gradients_and_sgd_steps_float64(variant):
    pair = TrainingPair({"model": model_cfg(**VARIANTS[variant])}, "float64", lr=1e-2, prepare=_prepare)
    terms, grads = pair.step(BATCH, 0)
    assert len(terms) == 9
    for name, (a, b) in terms.items():  # measured 3e-10 relative
        assert abs(a - b) <= 1e-6 * max(abs(a), 1e-3), (name, a, b)
    # every parameter's gradient within 1e-5 of its own scale (floored at 1e-6 of the largest gradient: the key
    # biases' gradients are mathematically zero, softmax ignores a constant logit shift); measured 5e-8
    assert gradient_error(grads) <= 1e-5, max_relative(grads)[:3]
    moved, diff = pair.sgd_drift(BATCH, range(1, 5))
    assert moved > 1e-2 and diff <= 1e-8, (moved, diff)  # measured 0.1-0.16 and 1.5e-10
