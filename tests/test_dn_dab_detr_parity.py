"""DN-DETR (dab_detr + model.dn), torch vs Paddle on converted weights, float64: the same loss terms (the denoising
ones of every layer included) and gradients of every parameter (label_enc included), the same parameters after
SGD steps; both trees draw the same denoising queries from the same generator (common/denoising.py).
tests/test_dab_detr_parity.py's method with denoising on."""
import numpy as np
import pytest

from convert.parity import TrainingPair, gradient_error, max_relative
from tests.dn_dab_detr_case import IMAGES, MASKS, ONE_EMPTY, TARGETS, dn_cfg
from tests.test_conditional_detr_parity import _one_torch_thread, no_exact_zero_norms  # noqa: F401
from tests.test_dab_detr_parity import moving_anchors

BATCHES = {"two_images": TARGETS, "one_empty": ONE_EMPTY}


def _prepare(model):
    no_exact_zero_norms(model)
    moving_anchors(model)


@pytest.mark.parametrize("targets", BATCHES, ids=list(BATCHES))
def test_losses_gradients_and_sgd_steps_float64(targets):
    batch = {"images": IMAGES, "masks": MASKS, "targets": BATCHES[targets]}
    pair = TrainingPair({"model": dn_cfg()}, "float64", lr=1e-2, prepare=_prepare)
    terms, grads = pair.step(batch, 0)
    assert len(terms) == 18 and sum("_dn" in k for k in terms) == 9
    for name, (a, b) in terms.items():
        assert abs(a - b) <= 1e-6 * max(abs(a), 1e-3), (name, a, b)
    assert np.abs(grads["label_enc.weight"][0]).max() > 1e-3
    # as in test_dab_detr_parity: each gradient within 1e-5 of its own scale (floored at 1e-6 of the largest)
    assert gradient_error(grads) <= 1e-5, max_relative(grads)[:3]
    before = pair.parameters()
    for it in range(1, 3):
        pair.step(batch, it)
    after = pair.parameters()
    moved = np.abs(after["label_enc.weight"][0] - before["label_enc.weight"][0]).max()
    diff = max(np.abs(a_t - a_p).max() for a_t, a_p in after.values())
    assert moved > 1e-4 and diff <= 1e-8, (moved, diff, max_relative(after)[:3])
