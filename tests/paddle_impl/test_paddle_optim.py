"""The Paddle optimizer and schedule take the same steps as torch's: parameter groups, weight decay, global-norm
clipping over all groups, the step decay."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
import torch

from paddle_impl import optim as paddle_optim
from torch_impl import optim as torch_optim

NAMES = ["backbone.body.conv1.weight", "transformer.encoder.layers.0.self_attn.sampling_offsets.weight",
         "class_embed.0.weight"]


class TorchParams(torch.nn.Module):
    def __init__(self, init):
        super().__init__()
        self.values = torch.nn.ParameterList(torch.nn.Parameter(torch.from_numpy(init[n].copy())) for n in NAMES)

    def named_parameters(self, *args, **kwargs):
        return list(zip(NAMES, self.values))


class PaddleParams(paddle.nn.Layer):
    def __init__(self, init):
        super().__init__()
        self.values = paddle.nn.ParameterList(
            [paddle.create_parameter(init[n].shape, "float32", default_initializer=paddle.nn.initializer.Assign(init[n]))
             for n in NAMES])

    def named_parameters(self, *args, **kwargs):
        return list(zip(NAMES, self.values))


@pytest.mark.parametrize("clip", [0.0, 0.5])
def test_steps_match_torch(clip):
    cfg = SimpleNamespace(lr=1e-2, lr_backbone=1e-3, lr_linear_proj_mult=0.1, weight_decay=1e-1, clip_max_norm=clip,
                          lr_drop=[2], lr_gamma=0.1)
    rng = np.random.default_rng(0)
    init = {n: rng.standard_normal((3, 4)).astype(np.float32) for n in NAMES}
    tm, pm = TorchParams(init), PaddleParams(init)
    topt = torch_optim.build_optimizer(tm, cfg)
    tsched = torch_optim.build_scheduler(topt, cfg)
    psched = paddle_optim.build_scheduler(cfg)
    popt = paddle_optim.build_optimizer(pm, cfg, psched)
    params = [p for _, p in pm.named_parameters()]
    for step in range(4):
        grads = {n: rng.standard_normal((3, 4)).astype(np.float32) for n in NAMES}
        for n, p in tm.named_parameters():
            p.grad = torch.from_numpy(grads[n].copy())
        paddle.add_n([(p * paddle.to_tensor(grads[n].copy())).sum() for n, p in pm.named_parameters()]).backward()
        if clip:  # what the engines do
            torch.nn.utils.clip_grad_norm_([p for _, p in tm.named_parameters()], clip)
            paddle_optim.clip_grad_norm(params, clip)
        topt.step()
        popt.step()
        popt.clear_grad()
        if step % 2 == 1:  # an "epoch" of two steps
            tsched.step()
            psched.step()
        assert topt.param_groups[0]["lr"] == pytest.approx(psched.get_lr(), rel=1e-12)
        for (n, tp), (_, pp) in zip(tm.named_parameters(), pm.named_parameters()):
            # float32 rounding of the same arithmetic; measured <= 5e-7 after 4 steps
            np.testing.assert_allclose(pp.numpy(), tp.detach().numpy(), rtol=0, atol=2e-6, err_msg=n)
    moved = np.abs(pm.values[2].numpy() - init[NAMES[2]]).max()
    assert moved > 1e-3  # the comparison is of parameters that did move


def test_frozen_parameters_are_left_out():
    cfg = SimpleNamespace(lr=1e-2, lr_backbone=1e-3, lr_linear_proj_mult=0.1, weight_decay=1e-4, clip_max_norm=0.1,
                          lr_drop=[2], lr_gamma=0.1)
    pm = PaddleParams({n: np.zeros((3, 4), np.float32) for n in NAMES})
    pm.values[0].stop_gradient = True
    opt = paddle_optim.build_optimizer(pm, cfg, paddle_optim.build_scheduler(cfg))
    assert len(opt._parameter_list) == 2


@pytest.mark.parametrize("max_norm", [0.1, 1e3])
def test_clip_grad_norm_matches_paddles_own(max_norm):
    """The engine's clip == paddle.nn.utils.clip_grad_norm_ (returned norm and clipped gradients), clipping
    (0.1) and not (1e3); parameters without a gradient are skipped."""
    shapes = [(3, 4), (7,), (2, 3, 5), (4,)]
    results = []
    for clip in (paddle_optim.clip_grad_norm, paddle.nn.utils.clip_grad_norm_):
        params = [paddle.create_parameter(s, "float32") for s in shapes]
        rng_ = np.random.default_rng(1)
        paddle.add_n([(p * paddle.to_tensor(rng_.standard_normal(p.shape).astype(np.float32))).sum()
                      for p in params[:3]]).backward()
        norm = clip(params, max_norm)
        assert params[3].grad is None
        results.append((float(norm), [p.grad.numpy() for p in params[:3]]))
    (ours, ours_grads), (theirs, their_grads) = results
    assert ours == pytest.approx(theirs, rel=1e-6)
    if max_norm < ours:  # the gradients were scaled down to the norm asked for
        assert np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in ours_grads)) == pytest.approx(max_norm, rel=1e-5)
    for a, b in zip(ours_grads, their_grads):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)
