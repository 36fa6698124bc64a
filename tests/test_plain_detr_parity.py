"""Plain-DETR, torch vs Paddle on converted weights (convert/rules.py), float64: the same eval outputs of every
decoder layer (with and without box reparameterization); the same loss terms (one-to-one, one-to-many, proposals)
and gradients of every parameter, and the same parameters after SGD steps."""
import numpy as np
import pytest

from convert.parity import TrainingPair, gradient_error, max_relative
from tests.plain_detr_case import IMAGES, MASKS, NO_GT, TARGETS, model_cfg
from tests.test_conditional_detr_parity import _one_torch_thread  # noqa: F401  (fixture)
from tests.test_conditional_detr_parity import eval_outputs_float64
from tests.test_dab_deformable_detr_parity import _prepare, moving_boxes

CASES = {"reparam": (True, TARGETS), "logit_boxes": (False, TARGETS), "no_gt": (True, NO_GT)}


@pytest.mark.parametrize("reparam", [True, False], ids=["reparam", "logit_boxes"])
def test_eval_outputs_float64(reparam):
    for name, a, b in eval_outputs_float64(model_cfg(reparam), moving_boxes, IMAGES, MASKS):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-9, err_msg=name)  # measured 2e-12


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_losses_gradients_and_sgd_steps_float64(case):
    reparam, targets = CASES[case]
    batch = {"images": IMAGES, "masks": MASKS, "targets": targets}
    pair = TrainingPair({"model": model_cfg(reparam)}, "float64", lr=1e-2, prepare=_prepare)
    terms, grads = pair.step(batch, 0)
    assert len(terms) == 21  # 3 layers x 3 terms x (one-to-one, one-to-many) + 3 proposal terms
    for name, (a, b) in terms.items():  # measured 2e-11 relative
        assert abs(a - b) <= 1e-9 * max(abs(a), 1e-3), (name, a, b)
    assert gradient_error(grads) <= 1e-6, max_relative(grads)[:3]  # each within 1e-6 of its own scale; measured 1.4e-8
    moved, diff = pair.sgd_drift(batch, range(1, 3))
    # measured 1.5e-13; no_gt moves least (2e-3: only the class terms)
    assert moved > 1e-3 and diff <= 1e-10, (moved, diff)
