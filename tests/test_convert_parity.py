"""Training parity: same initial weights and batches -> same loss terms, gradients and parameters after 20 SGD
steps in both trees (dropout off), on the tiny demo-style model with denoising, the C-decoder and the ice loss."""
import os

import numpy as np
import pytest
import torch

from common.data.build import build_train_loader
from convert.models import resolve_config
from convert.parity import TrainingPair, max_relative

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, "configs", "demo.yml")


@pytest.fixture(scope="module")
def setup(tiny):
    """(config, two training batches of the tiny dataset at 64 px); torch on one thread meanwhile, as Paddle
    (float64 convolutions on two threads of a busy 2-core machine were 5x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    cfg = resolve_config(DEMO, tiny + ["data.train.scales=[64]", "data.train.max_size=80", "model.loss.type=ice",
                                       "model.num_classes=6", "model.num_queries=15"])
    assert cfg["model"]["dropout"] == 0.0 and cfg["model"]["dn"]["enabled"] and cfg["model"]["dac"]["enabled"]
    _, loader = build_train_loader(cfg)
    loader.set_epoch(0)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == 2:
            break
    loader.close()
    yield cfg, batches
    torch.set_num_threads(threads)


def off_pixel_centres(model):
    """The deformable-attention init puts sampling points exactly on pixel centres of the proposals' grid, where
    bilinear sampling has a kink and each framework takes the location gradient from its own side; small
    random offset weights move them off it (as the trained model's are)."""
    for name, p in model.named_parameters():
        if name.endswith("sampling_offsets.weight"):
            p.normal_(0, 0.01, generator=torch.Generator().manual_seed(0))


def _grads_close(grads, rtol, floor):
    """Each parameter's gradient within rtol of its own scale; scales are floored at `floor` times the largest
    gradient so that mathematically-zero gradients (a conv bias before a one-channel-per-group GroupNorm: pure
    rounding noise) are compared in absolute terms. -> worst [(ratio, name)]."""
    floor = floor * max(np.abs(g_t).max() for g_t, _ in grads.values())
    worst = sorted(((np.abs(g_t - g_p).max() / max(np.abs(g_t).max(), floor), n)
                    for n, (g_t, g_p) in grads.items()), reverse=True)
    assert worst[0][0] <= rtol, worst[:3]
    return worst


def test_float64_losses_gradients_and_20_sgd_steps(setup):
    cfg, batches = setup
    pair = TrainingPair(cfg, "float64", lr=5e-3, prepare=off_pixel_centres)
    terms, grads = pair.step(batches[0], 0)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_dn", "loss_ce_c", "loss_ce_enc"} <= set(terms)
    for name, (a, b) in terms.items():
        assert abs(a - b) <= 1e-6 * max(abs(a), 1e-3), (name, a, b)  # measured 1.3e-7 (float32 anchors)
    _grads_close(grads, rtol=1e-5, floor=1e-6)  # measured 1.6e-7
    assert sum(np.abs(g).max() > 0 for g, _ in grads.values()) > 0.6 * len(grads)
    before = pair.parameters()
    for it in range(1, 20):
        pair.step(batches[it % 2], it)
    after = pair.parameters()
    moved = max(np.abs(a_t - before[n][0]).max() for n, (a_t, _) in after.items())
    worst = max(np.abs(a_t - a_p).max() for a_t, a_p in after.values())
    # measured: moved 0.06, largest difference 9e-9
    assert moved > 1e-2 and worst <= 1e-7, (moved, worst, max_relative(after)[:3])


def test_float32_first_step(setup):
    """float32 as trained, one step: loss terms within 1e-5 and gradients within 1e-3 relative. (Multi-step
    float32 runs are not compared: a near-tie in the two-stage top-k may reorder queries in one framework.)"""
    cfg, batches = setup
    pair = TrainingPair(cfg, "float32", prepare=off_pixel_centres)
    terms, grads = pair.step(batches[1], 0, update=False)
    for name, (a, b) in terms.items():
        assert abs(a - b) <= 1e-5 * max(abs(a), 1.0), (name, a, b)  # measured 1.1e-7
    _grads_close(grads, rtol=1e-3, floor=1e-4)  # measured 3.8e-6
