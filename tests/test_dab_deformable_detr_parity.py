"""DAB-Deformable-DETR and DN-Deformable-DETR, torch vs Paddle on converted weights (convert/rules.py), float64: the
same eval outputs of every decoder layer; the same loss terms (the denoising ones of every layer included) and
gradients of every parameter, the same parameters after SGD steps, with the same denoising queries drawn by both
trees (common/denoising.py). tests/test_dab_detr_parity.py's method on the multi-scale deformable model."""
import numpy as np
import pytest
import torch

from convert.parity import TrainingPair, gradient_error, max_relative
from tests.dab_deformable_detr_case import IMAGES, MASKS, ONE_EMPTY, TARGETS, model_cfg
from tests.test_conditional_detr_parity import _one_torch_thread  # noqa: F401  (fixture)
from tests.test_conditional_detr_parity import eval_outputs_float64, no_exact_zero_norms

CASES = {"dab": (False, TARGETS), "dn_two_images": (True, TARGETS), "dn_one_empty": (True, ONE_EMPTY)}


def moving_boxes(model):
    """Non-zero box deltas (the release starts every box head's last layer at 0): the reference boxes, and with
    them the positional queries, change from layer to layer."""
    gen = torch.Generator().manual_seed(1)
    for head in model.bbox_embed:
        head.layers[-1].weight.normal_(0, 0.1, generator=gen)


def _prepare(model):
    no_exact_zero_norms(model)
    moving_boxes(model)


def test_eval_outputs_float64():
    for name, a, b in eval_outputs_float64(model_cfg(dn=True), moving_boxes):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-10, err_msg=name)  # measured 2e-13


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_losses_gradients_and_sgd_steps_float64(case):
    dn, targets = CASES[case]
    batch = {"images": IMAGES, "masks": MASKS, "targets": targets}
    pair = TrainingPair({"model": model_cfg(dn)}, "float64", lr=1e-2, prepare=_prepare)
    terms, grads = pair.step(batch, 0)
    assert len(terms) == (18 if dn else 9)
    for name, (a, b) in terms.items():  # measured 5e-14 relative (Intel and AMD CPUs)
        assert abs(a - b) <= 1e-10 * max(abs(a), 1e-3), (name, a, b)
    # each gradient within 1e-6 of its own scale (floored at 1e-6 of the largest, as tests/test_dab_detr_parity.py);
    # measured 2e-8
    assert gradient_error(grads) <= 1e-6, max_relative(grads)[:3]
    moved, diff = pair.sgd_drift(batch, range(1, 3))
    assert moved > 1e-2 and diff <= 1e-9, (moved, diff)  # measured 3e-11
