"""Conditional DETR, torch vs Paddle on converted weights (convert/rules.py), float64: the same eval outputs of
every decoder layer, the same loss terms and gradients of every parameter, the same parameters after SGD steps."""
import numpy as np
import paddle
import pytest
import torch

from convert.frameworks import torch_module_to_paddle
from convert.parity import TrainingPair, gradient_error, max_relative
from paddle_impl.models import build_model as build_paddle
from tests.conditional_detr_case import IMAGES, MASKS, TARGETS, model_cfg
from torch_impl.models import build_model as build_torch

VARIANTS = {"c4_frozen_bn": {}, "c5_gn": dict(backbone=dict(last_stage=4, norm="gn", frozen_stages=-1))}
BATCH = {"images": IMAGES, "masks": MASKS, "targets": TARGETS}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """float64 on one thread, as Paddle's side runs (faster on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _layers(out):
    return [(f"{i}.{k}", layer[k]) for i, layer in enumerate(out["aux_outputs"] + [out])
            for k in ("pred_logits", "pred_boxes", "pred_objs", "pred_points") if k in layer]


def eval_outputs_float64(m, prepare, images=IMAGES, masks=MASKS):
    """Every decoder layer's eval outputs of the model section m on a batch (default: conditional_detr_case's),
    torch and Paddle on the same weights, float64 -> [(name, torch array, Paddle array)]; prepare(torch model)
    runs (without gradients) before the copy."""
    torch.manual_seed(0)
    pt = build_torch({"model": m})[0]
    with torch.no_grad():
        prepare(pt)
    pd = build_paddle({"model": m})[0]
    torch_module_to_paddle(pt, pd)
    pt.double().eval()
    pd.to(dtype="float64")
    pd.eval()
    with torch.no_grad():
        out_t = pt(torch.from_numpy(images.astype(np.float64)), torch.from_numpy(masks))
    with paddle.no_grad():
        out_p = pd(paddle.to_tensor(images.astype(np.float64)), paddle.to_tensor(masks))
    return [(name, a.numpy(), b.numpy()) for (name, a), (_, b) in zip(_layers(out_t), _layers(out_p))]


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_eval_outputs_float64(variant):
    def moving_boxes(model):  # non-zero box deltas, so the box head's whole path is compared
        model.bbox_embed.layers[-1].weight.normal_(0, 0.1)
    for name, a, b in eval_outputs_float64(model_cfg(**VARIANTS[variant]), moving_boxes):
        # not 1e-12: both trees compute the pixels' sine codes in float32 (sin differs by an ulp between the
        # frameworks); measured 1.2e-9
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(1.0, np.abs(a).max()), err_msg=name)


def no_exact_zero_norms(model):
    """The "gn" backbone starts the last norm of every residual branch at weight = bias = 0, so a channel whose
    shortcut is all zeros (killed by the previous ReLU) sits exactly on ReLU's kink. There the trees part: in
    the C5 variant, Paddle's float64 run gave that norm's weight and bias gradients of ~1e-32 where torch's are
    exactly 0, so after one SGD step the ReLU is open in Paddle only and the channel gets a real gradient
    (measured: 80% relative difference in one norm's gradients at step 2, every other parameter within 3e-8).
    Small random weights move the branches off the kink."""
    for m in model.backbone.modules():
        if isinstance(m, torch.nn.GroupNorm) and not m.weight.any():
            m.weight.normal_(0, 0.1, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_losses_gradients_and_sgd_steps_float64(variant):
    pair = TrainingPair({"model": model_cfg(**VARIANTS[variant])}, "float64", lr=1e-2, prepare=no_exact_zero_norms)
    terms, grads = pair.step(BATCH, 0)
    assert len(terms) == 9
    for name, (a, b) in terms.items():  # measured 4e-11 relative
        assert abs(a - b) <= 1e-6 * max(abs(a), 1e-3), (name, a, b)
    # every parameter's gradient within 1e-5 of its own scale (floored at 1e-6 of the largest gradient: the key
    # biases' gradients are mathematically zero, softmax ignores a constant logit shift); measured 5e-8
    assert gradient_error(grads) <= 1e-5, max_relative(grads)[:3]
    moved, diff = pair.sgd_drift(BATCH, range(1, 5))
    assert moved > 1e-2 and diff <= 1e-8, (moved, diff)  # measured 0.17 and 5e-11
