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


ACCUMULATORS = ("moment1_0", "moment2_0", "beta1_pow_acc_0", "beta2_pow_acc_0")


def _train(classes, shapes, dtype, steps, weight_decay=0.05):
    """Parameters and the last optimizer after `steps` AdamW steps on fixed random gradients, with classes[0] for the
    first steps and, from step steps // 2 + 1 on, classes[1] loaded from classes[0]'s state_dict (a checkpoint
    moving between the two). Two groups (lr multipliers 1 and 0.1) and a step-decay schedule (lr / 10 after step 1).
    """
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(steps)]
    params = [paddle.create_parameter(list(a.shape), dtype, default_initializer=paddle.nn.initializer.Assign(a))
              for a in init]

    state, switch = None, steps // 2 + 1
    for cls, phase in ((classes[0], range(switch)), (classes[1], range(switch, steps))):
        # a fresh name scope, as in a new process: the accumulators (created at the first step) end in _0 again
        with paddle.utils.unique_name.guard():
            scheduler = paddle.optimizer.lr.MultiStepDecay(1e-2, milestones=[1], gamma=0.1)
            groups = [{"params": params[:2], "learning_rate": 1.0}, {"params": params[2:], "learning_rate": 0.1}]
            opt = cls(learning_rate=scheduler, parameters=groups, weight_decay=weight_decay)
            if state is not None:
                opt.set_state_dict(state)
            for i in phase:
                paddle.add_n([(p * paddle.to_tensor(a)).sum() for p, a in zip(params, grads[i])]).backward()
                opt.step()
                opt.clear_grad()
                if i == 1:
                    scheduler.step()
            state = opt.state_dict()
    return params, opt


@pytest.fixture
def spy(monkeypatch):
    """Counts the calls of the fused op."""
    counter = {"calls": 0}
    real = paddle_optim.paddle_cpu_layers.adamw

    def counting(*args, **kwargs):
        counter["calls"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(paddle_optim.paddle_cpu_layers, "adamw", counting)
    return counter


def _assert_same(ours, theirs, atol):
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=atol)


def test_fused_step_equals_paddles_adamw(spy):
    # sizes across the op's 32768-element work chunks, a scalar, a matrix
    shapes = [(70001,), (1,), (3, 4), (32768,)]
    ours, ours_opt = _train([paddle_optim.AdamW] * 2, shapes, "float32", 5)
    assert spy["calls"] == 5
    theirs, their_opt = _train([paddle.optimizer.AdamW] * 2, shapes, "float32", 5)
    assert spy["calls"] == 5
    _assert_same(ours, theirs, 1e-6)  # float32 rounding of the same arithmetic: measured <= 6e-8 after 5 steps
    assert np.abs(ours[0].numpy() - theirs[0].numpy()).max() < 1e-3 < np.abs(ours[0].numpy()).max()
    # the same accumulators, named after the parameters: checkpoints are interchangeable
    for state, params in ((ours_opt.state_dict(), ours), (their_opt.state_dict(), theirs)):
        assert set(state) == {f"{p.name}_{a}" for p in params for a in ACCUMULATORS} | {"LR_Scheduler"}
    for p, q in zip(ours, theirs):
        for a in ACCUMULATORS:
            np.testing.assert_allclose(ours_opt.state_dict()[f"{p.name}_{a}"].numpy(),
                                       their_opt.state_dict()[f"{q.name}_{a}"].numpy(), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("order", ["fused_then_paddle", "paddle_then_fused"])
def test_checkpoints_move_between_fused_and_paddles_adamw(spy, order):
    classes = [paddle_optim.AdamW, paddle.optimizer.AdamW]
    shapes = [(5, 3), (7,), (2,)]
    moved, _ = _train(classes if order == "fused_then_paddle" else classes[::-1], shapes, "float32", 5)
    assert spy["calls"] == (3 if order == "fused_then_paddle" else 2)
    reference, _ = _train([paddle.optimizer.AdamW] * 2, shapes, "float32", 5)
    _assert_same(moved, reference, 1e-6)


def test_other_dtypes_take_paddles_step(spy):
    ours, _ = _train([paddle_optim.AdamW] * 2, [(4, 3), (5,)], "float64", 3)
    theirs, _ = _train([paddle.optimizer.AdamW] * 2, [(4, 3), (5,)], "float64", 3)
    assert spy["calls"] == 0
    _assert_same(ours, theirs, 0.0)


def test_per_group_weight_decay_takes_paddles_step(spy):
    params = [paddle.create_parameter([3], "float32") for _ in range(2)]
    opt = paddle_optim.AdamW(learning_rate=1e-2, weight_decay=0.1,
                             parameters=[{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}])
    paddle.add_n([p.sum() for p in params]).backward()
    opt.step()
    assert spy["calls"] == 0


@pytest.mark.parametrize("max_norm", [0.1, 1e3])
def test_clip_grad_norm_float64_path_matches_the_op(max_norm):
    """float32 gradients go through the C++ op, float64 through Paddle ops: the same norm and scaling."""
    shapes = [(40000,), (3, 4), (1,)]
    rng = np.random.default_rng(5)
    grads = [rng.standard_normal(s) for s in shapes]
    results = {}
    for dtype in ("float32", "float64"):
        params = [paddle.create_parameter(list(s), dtype) for s in shapes]
        paddle.add_n([(p * paddle.to_tensor(g.astype(dtype))).sum() for p, g in zip(params, grads)]).backward()
        norm = paddle_optim.clip_grad_norm(params, max_norm)
        results[dtype] = (float(norm), [p.grad.numpy().astype(np.float64) for p in params])
    expected = np.sqrt(sum((g ** 2).sum() for g in grads))
    assert results["float32"][0] == pytest.approx(expected, rel=1e-6)
    assert results["float64"][0] == pytest.approx(expected, rel=1e-12)
    for a, b in zip(results["float32"][1], results["float64"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
