"""SAP-DETR, torch vs Paddle on converted weights (convert/rules.py), float64: the same eval outputs of every
decoder layer (class logits, boxes, objectness, points), the same loss terms (SAP's included) and gradients of every
parameter, the same parameters after SGD steps. tests/test_conditional_detr_parity.py's method."""
import numpy as np
import pytest
import torch

from convert.parity import TrainingPair, gradient_error, max_relative
from tests.sap_detr_case import IMAGES, MASKS, TARGETS, model_cfg
from tests.test_conditional_detr_parity import _one_torch_thread  # noqa: F401  (fixture)
from tests.test_conditional_detr_parity import eval_outputs_float64, no_exact_zero_norms

VARIANTS = {"c4_frozen_bn": {}, "c5_gn_no_conv_init": dict(backbone=dict(last_stage=4, norm="gn", frozen_stages=-1),
                                                          sap=dict(conv_init=False))}
BATCH = {"images": IMAGES, "masks": MASKS, "targets": TARGETS}


def moving_points(model):
    """Non-zero side and point deltas (the release starts their heads at 0), the points pushed off their cells'
    corners, and small first sides (boxes that do not hold their GT, so the points get gradients)."""
    gen = torch.Generator().manual_seed(1)
    for head in list(model.bbox_embed) + list(model.point_embed):
        head.layers[-1].weight.normal_(0, 0.1, generator=gen)
    for head in model.point_embed:
        head.layers[-1].bias.normal_(6.0, 1.0, generator=gen)
    model.refbbox_embed.weight.normal_(-2.5, 0.3, generator=gen)


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_eval_outputs_float64(variant):
    outputs = eval_outputs_float64(model_cfg(**VARIANTS[variant]), moving_points)
    assert len(outputs) == 12  # 3 layers x (logits, boxes, objectness, points)
    for name, a, b in outputs:
        # not 1e-12: both trees compute the sine codes in float32 (sin differs by an ulp between the frameworks);
        # measured 1.5e-9
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(1.0, np.abs(a).max()), err_msg=name)


def _prepare(model):
    no_exact_zero_norms(model)
    moving_points(model)


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_losses_gradients_and_sgd_steps_float64(variant):
    pair = TrainingPair({"model": model_cfg(**VARIANTS[variant])}, "float64", lr=1e-2, prepare=_prepare)
    terms, grads = pair.step(BATCH, 0)
    assert len(terms) == 15  # 3 layers x (ce, bbox, giou, obj, inner)
    for name, (a, b) in terms.items():  # measured 6e-10 relative
        assert abs(a - b) <= 1e-6 * max(abs(a), 1e-3), (name, a, b)
    # as in test_dab_detr_parity: every gradient within 1e-5 of its own scale; measured 5e-8
    assert gradient_error(grads) <= 1e-5, max_relative(grads)[:3]
    moved, diff = pair.sgd_drift(BATCH, range(1, 5))
    assert moved > 1e-2 and diff <= 1e-8, (moved, diff)  # measured 0.05 and 2e-10
