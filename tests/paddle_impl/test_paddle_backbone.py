"""Paddle ResNet backbone: the torch tests' mirror, plus parity with torch_impl's backbone (weights copied by
convert/rules.py) for every norm, BatchNorm running statistics, masks on odd sizes, and loading torchvision files."""
import sys

import numpy as np
import paddle
import pytest
import torch

from common.errors import UserError
from convert.frameworks import torch_module_to_paddle
from paddle_impl.models.backbone import Backbone, FrozenBatchNorm2d, ResNet, load_pretrained
from torch_impl.models import backbone as tb


def test_frozen_bn_equals_eval_batchnorm():
    paddle.seed(0)
    bn = paddle.nn.BatchNorm2D(6, epsilon=1e-5)
    bn.weight.set_value(paddle.uniform([6], min=0.5, max=2))
    bn.bias.set_value(paddle.randn([6]))
    bn._mean.set_value(paddle.randn([6]))
    bn._variance.set_value(paddle.uniform([6], min=0.1, max=3))
    bn.eval()
    frozen = FrozenBatchNorm2d(6)
    frozen.set_state_dict(bn.state_dict())  # same names: weight, bias, _mean, _variance
    x = paddle.randn([2, 6, 5, 7])
    np.testing.assert_allclose(frozen(x).numpy(), bn(x).numpy(), atol=1e-6, rtol=1e-6)
    assert set(dict(frozen.named_buffers())) == {"weight", "bias", "_mean", "_variance"}
    assert list(frozen.parameters()) == []


def test_resnet18_torchvision_layout():
    sd = ResNet("resnet18").state_dict()
    # torchvision's resnet18 has 122 entries: these 100 plus 20 num_batches_tracked and fc.weight / fc.bias
    assert len(sd) == 100
    assert sd["conv1.weight"].shape == [64, 3, 7, 7]
    assert sd["layer1.0.conv1.weight"].shape == [64, 64, 3, 3]
    assert sd["layer2.0.downsample.0.weight"].shape == [128, 64, 1, 1]
    assert sd["layer2.0.downsample.1._variance"].shape == [128]
    assert sd["layer4.1.bn2.bias"].shape == [512]
    assert "layer1.0.downsample.0.weight" not in sd


def test_resnet50_bottleneck_layout():
    sd = ResNet("resnet50").state_dict()
    assert sd["layer1.0.conv3.weight"].shape == [256, 64, 1, 1]
    assert sd["layer1.0.downsample.0.weight"].shape == [256, 64, 1, 1]
    assert sd["layer3.5.conv2.weight"].shape == [256, 256, 3, 3]
    assert "layer3.6.conv1.weight" not in sd
    assert sum(int(np.prod(v.shape)) for k, v in sd.items() if "_mean" not in k and "_variance" not in k
               and "bn" not in k and "downsample.1" not in k) == 23454912  # conv weights of torchvision resnet50


@pytest.mark.parametrize("norm", ["frozen_bn", "bn", "gn"])
def test_state_dict_keys_match_torch_by_the_rule(norm):
    from convert.rules import torch_name_to_paddle

    for name in ("resnet18", "resnet50"):
        torch_keys = [torch_name_to_paddle(k) for k in tb.Backbone(name, norm=norm).state_dict()
                      if not k.endswith("num_batches_tracked")]
        assert torch_keys == list(Backbone(name, norm=norm).state_dict())  # same names, same order


@pytest.mark.parametrize("name, channels", [("resnet18", [128, 256, 512]), ("resnet50", [512, 1024, 2048])])
def test_backbone_levels_strides_and_masks(name, channels):
    bb = Backbone(name, frozen_stages=1, num_levels=3)
    assert bb.num_channels == channels and bb.strides == [8, 16, 32]
    images = paddle.randn([2, 3, 64, 96])
    masks = np.zeros((2, 64, 96), dtype=bool)
    masks[1, :, 64:] = True  # right third of image 1 is padding
    out = bb(images, paddle.to_tensor(masks))
    for (x, m), c, s in zip(out, channels, [8, 16, 32]):
        assert x.shape == [2, c, 64 // s, 96 // s] and m.shape == [2, 64 // s, 96 // s]
        assert m.dtype == paddle.bool
        m = m.numpy()
        assert not m[0].any()
        assert m[1, :, (64 // s):].all() and not m[1, :, :(64 // s)].any()


def test_dilation_keeps_c5_at_stride_16():
    bb = Backbone("resnet50", dilation=True, num_levels=1)
    assert bb.strides == [16] and bb.num_channels == [2048]
    x, _ = bb(paddle.randn([1, 3, 64, 64]), paddle.zeros([1, 64, 64], dtype="bool"))[0]
    assert x.shape == [1, 2048, 4, 4]
    assert list(bb.body.layer4[0].conv2._dilation) == [1, 1] and list(bb.body.layer4[1].conv2._dilation) == [2, 2]
    with pytest.raises(ValueError, match="resnet50 or resnet101"):
        Backbone("resnet18", dilation=True)


@pytest.mark.parametrize("stages, frozen", [(-1, []), (0, ["conv1"]), (1, ["conv1", "layer1"]),
                                             (4, ["conv1", "layer1", "layer2", "layer3", "layer4"])])
def test_frozen_stages(stages, frozen):
    bb = Backbone("resnet18", frozen_stages=stages)
    for name, p in bb.body.named_parameters():
        assert p.stop_gradient == (name.split(".")[0] in frozen), name


def test_frozen_params_get_no_grad_and_are_not_trainable():
    bb = Backbone("resnet18", frozen_stages=1, norm="gn")  # gn: the stem's bn1 has parameters, which train
    out = bb(paddle.randn([1, 3, 32, 32]), paddle.zeros([1, 32, 32], dtype="bool"))
    sum(x.sum() for x, _ in out).backward()
    trainable = [n for n, p in bb.named_parameters() if not p.stop_gradient]  # what the optimizer receives
    assert "body.bn1.weight" in trainable and "body.layer2.0.conv1.weight" in trainable
    for name, p in bb.named_parameters():
        frozen = name.split(".")[1] in ("conv1", "layer1")
        assert (name in trainable) == (not frozen), name
        assert (p.grad is None) == frozen, name


def test_random_init_resnet50_is_finite():
    paddle.seed(0)
    out = Backbone("resnet50")(paddle.randn([1, 3, 64, 64]), paddle.zeros([1, 64, 64], dtype="bool"))
    assert all(bool(paddle.isfinite(x).all()) for x, _ in out)


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_last_norm_of_each_branch_starts_at_zero(norm):
    body = ResNet("resnet50", norm=norm)
    for block in body.layer2:
        assert not block.bn3.weight.numpy().any() and block.bn2.weight.numpy().all()
    assert ResNet("resnet18", norm=norm).layer1[1].bn2.weight.numpy().sum() == 0
    assert ResNet("resnet18").layer1[1].bn2.weight.numpy().all()  # frozen_bn keeps the identity scale


def test_conv_init_is_kaiming_fan_out():
    paddle.seed(0)
    w = ResNet("resnet50").layer4[0].conv2.weight.numpy()  # fan_out = 512 * 3 * 3
    assert abs(w.std() / np.sqrt(2 / (512 * 9)) - 1) < 0.01 and abs(w.mean()) < 1e-3


# ---------------------------------------------------------------- parity with torch_impl


def _randomize_norms(module, seed):
    """Random affine parameters and statistics for every norm (at init they are identities or zeros)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in module.state_dict().items():
            if v.ndim != 1:
                continue
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) * 1.5 + 0.5)
            elif k.endswith("weight"):
                v.copy_(torch.rand(v.shape, generator=g) + 0.5)
            else:  # bias, running_mean
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)


def _inputs(seed=0, shape=(2, 3, 67, 93)):
    """Images with odd sizes and a padding mask (image 1 padded on the right and the bottom)."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal(shape).astype("float32")
    masks = np.zeros((shape[0],) + shape[2:], dtype=bool)
    masks[1, :, 61:] = True
    masks[1, 50:, :] = True
    return images, masks


def _pair(name, norm, frozen_stages=1, num_levels=3):
    torch.manual_seed(0)
    torch_bb = tb.Backbone(name, frozen_stages=frozen_stages, num_levels=num_levels, norm=norm)
    _randomize_norms(torch_bb, seed=1)
    paddle_bb = Backbone(name, frozen_stages=frozen_stages, num_levels=num_levels, norm=norm)
    torch_module_to_paddle(torch_bb, paddle_bb)
    return torch_bb, paddle_bb


def _assert_features_close(torch_out, paddle_out, atol_scale=1e-5):
    """Features: |paddle - torch| <= 1e-4 * |torch| + atol_scale * max|torch| elementwise. Masks: identical.

    Measured max|paddle - torch| / max|torch| (float32): 1e-6 .. 4e-6 for frozen_bn, bn (eval), gn and resnet18 bn
    (train); 1e-4 at C5 for resnet50 bn in train mode, where batch statistics over 2 x 3 x 3 values amplify
    rounding: torch float32 itself is 8e-5 away from torch float64 there (and Paddle 7e-5).
    """
    assert len(torch_out) == len(paddle_out)
    for (tx, tm), (px, pm) in zip(torch_out, paddle_out):
        tx = tx.detach().numpy()
        np.testing.assert_allclose(px.numpy(), tx, rtol=1e-4, atol=atol_scale * np.abs(tx).max())
        assert pm.dtype == paddle.bool
        np.testing.assert_array_equal(pm.numpy(), tm.numpy())


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("norm, train", [("frozen_bn", False), ("bn", False), ("bn", True), ("gn", True)])
def test_features_and_masks_match_torch(name, norm, train):
    torch_bb, paddle_bb = _pair(name, norm)
    torch_bb.train(train)
    paddle_bb.train() if train else paddle_bb.eval()
    images, masks = _inputs()
    torch_out = torch_bb(torch.from_numpy(images), torch.from_numpy(masks))
    paddle_out = paddle_bb(paddle.to_tensor(images), paddle.to_tensor(masks))
    deep_batch_stats = (name, norm, train) == ("resnet50", "bn", True)
    _assert_features_close(torch_out, paddle_out, 3e-4 if deep_batch_stats else 1e-5)
    if norm == "bn":  # running statistics: updated in train mode (torch's unbiased rule), untouched in eval
        # Deep layers see the features' float32 differences: measured worst relative difference 1e-6 (resnet18),
        # 6e-5 (resnet50, variances; means near 0 differ by <= 1e-5 absolute). test_running_stats_after_one_
        # batchnorm_step_match_torch checks the rule itself to 1e-6.
        rtol, atol = (1e-4, 2e-5) if deep_batch_stats else (1e-5, 1e-6)
        pd_state = paddle_bb.state_dict()
        for k, v in torch_bb.state_dict().items():
            if k.endswith(("running_mean", "running_var")):
                leaf = "_mean" if k.endswith("running_mean") else "_variance"
                np.testing.assert_allclose(pd_state[k.rsplit(".", 1)[0] + "." + leaf].numpy(), v.numpy(),
                                           rtol=rtol, atol=atol, err_msg=k)


def test_running_stats_after_one_batchnorm_step_match_torch():
    """One BatchNorm2D in train mode, statistics from a tiny batch (n = 2 * 3 * 5: the unbiased factor is large)."""
    from paddle_impl.models.backbone import make_norm

    x = np.random.default_rng(0).standard_normal((2, 8, 3, 5)).astype("float32") * 3 + 1
    t_bn, p_bn = tb.make_norm("bn", 8), make_norm("bn", 8)
    _randomize_norms(t_bn, seed=2)
    torch_module_to_paddle(t_bn, p_bn)
    for _ in range(2):  # the second step also checks the momentum
        ty, py = t_bn(torch.from_numpy(x)), p_bn(paddle.to_tensor(x))
    np.testing.assert_allclose(py.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p_bn._mean.numpy(), t_bn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(p_bn._variance.numpy(), t_bn.running_var.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        p_bn(paddle.ones([1, 8, 1, 1]))


@pytest.mark.parametrize("norm", ["bn", "gn"])
def test_gradients_match_torch(norm):
    """Gradients of a random projection of the features w.r.t. the first trainable conv and the last norm."""
    torch_bb, paddle_bb = _pair("resnet18", norm, frozen_stages=0)
    images, masks = _inputs(shape=(2, 3, 45, 51))
    proj = [np.random.default_rng(i).standard_normal((1, c, 1, 1)).astype("float32")
            for i, c in enumerate(torch_bb.num_channels)]
    t_loss = sum((x * torch.from_numpy(w)).sum()
                 for (x, _), w in zip(torch_bb(torch.from_numpy(images), torch.from_numpy(masks)), proj))
    t_loss.backward()
    p_loss = sum((x * paddle.to_tensor(w)).sum()
                 for (x, _), w in zip(paddle_bb(paddle.to_tensor(images), paddle.to_tensor(masks)), proj))
    p_loss.backward()
    p_params = dict(paddle_bb.named_parameters())
    for name in ("body.layer1.0.conv1.weight", "body.layer4.1.bn2.weight", "body.layer2.0.downsample.1.bias"):
        t_grad = dict(torch_bb.named_parameters())[name].grad.numpy()
        np.testing.assert_allclose(p_params[name].grad.numpy(), t_grad, rtol=1e-4,
                                   atol=1e-5 * np.abs(t_grad).max(), err_msg=name)
    assert p_params["body.conv1.weight"].grad is None


@pytest.mark.parametrize("hw", [(1, 1), (3, 5), (17, 9), (40, 23), (67, 93)])
def test_mask_downsampling_matches_torch_on_odd_sizes(hw):
    rng = np.random.default_rng(hw[0])
    masks = rng.random((3, 67, 93)) > 0.5
    t = torch.nn.functional.interpolate(torch.from_numpy(masks)[None].float(), size=hw)[0].bool().numpy()
    # the same computation as Backbone.forward
    p = paddle.nn.functional.interpolate(paddle.to_tensor(masks)[None].astype("float32"), size=list(hw),
                                         mode="nearest")[0].astype("bool").numpy()
    np.testing.assert_array_equal(p, t)


# ---------------------------------------------------------------- load_pretrained


def _torchvision_style_state_dict(name):
    torch.manual_seed(1)
    sd = {k: torch.randn_like(v) for k, v in tb.ResNet(name).state_dict().items()}
    for k in [k for k in sd if k.endswith("running_var")]:
        sd[k] = sd[k].abs() + 0.1
        sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    return sd


def test_load_pretrained_reports_ignored_keys(tmp_path):
    sd = _torchvision_style_state_dict("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    body = ResNet("resnet18")
    ignored = load_pretrained(body, str(path))
    assert "fc.weight" in ignored and "fc.bias" in ignored
    assert len(ignored) == 22 and sum(k.endswith("num_batches_tracked") for k in ignored) == 20
    renamed = {k.replace("running_mean", "_mean").replace("running_var", "_variance"): v for k, v in sd.items()}
    for k, v in body.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), renamed[k].numpy(), err_msg=k)


def test_load_pretrained_pdparams_with_the_same_keys(tmp_path):
    """A Paddle file: the body's own names (BatchNorm stats as _mean / _variance) plus an ignored fc."""
    paddle.seed(3)
    src = ResNet("resnet18")
    state = {k: paddle.randn(v.shape) for k, v in src.state_dict().items()}
    state["fc.weight"], state["fc.bias"] = paddle.randn([512, 1000]), paddle.randn([1000])
    path = str(tmp_path / "resnet18.pdparams")
    paddle.save(state, path)
    body = ResNet("resnet18")
    assert load_pretrained(body, path) == ["fc.bias", "fc.weight"]
    for k, v in body.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), state[k].numpy(), err_msg=k)


def test_load_pretrained_safetensors_and_wrapped_state_dict(tmp_path):
    from safetensors.torch import save_file

    sd = _torchvision_style_state_dict("resnet18")
    save_file(sd, str(tmp_path / "r18.safetensors"))
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pth")
    for file in ("r18.safetensors", "wrapped.pth"):
        body = ResNet("resnet18")
        assert len(load_pretrained(body, str(tmp_path / file))) == 22
        np.testing.assert_array_equal(body.state_dict()["layer2.0.downsample.1._variance"].numpy(),
                                      sd["layer2.0.downsample.1.running_var"].numpy())


def test_load_pretrained_from_a_detector_checkpoint(tmp_path):
    """The ResNet inside a detector checkpoint starts a backbone that builds fewer stages: a Paddle checkpoint's
    .pdparams (backbone.body.*, BatchNorm stats as _mean / _variance) and a torch one (the release's
    backbone.0.body.*, running_mean / running_var); the detector's other keys are left out."""
    paddle.seed(5)
    body = {k: paddle.randn(v.shape) for k, v in ResNet("resnet18", norm="bn").state_dict().items()}
    paddle.save({**{"backbone.body." + k: v for k, v in body.items()}, "transformer.level_embed": paddle.randn([3, 8])},
                str(tmp_path / "det.pdparams"))
    torch_names = {k.replace("_mean", "running_mean").replace("_variance", "running_var"): k for k in body}
    torch.save({"model": {**{"backbone.0.body." + t: torch.from_numpy(body[k].numpy()) for t, k in torch_names.items()},
                          "class_embed.0.weight": torch.randn(6, 8)}}, tmp_path / "det.pth")
    for file in ("det.pdparams", "det.pth"):
        target = ResNet("resnet18", norm="bn", last_stage=3)
        ignored = load_pretrained(target, str(tmp_path / file))
        names = body if file == "det.pdparams" else torch_names  # the file's own names
        assert ignored == sorted(k for k in names if k.startswith("layer4."))
        for k, v in target.state_dict().items():
            np.testing.assert_array_equal(v.numpy(), body[k].numpy(), err_msg=f"{file}: {k}")


def test_pretrained_pth_gives_torch_features(tmp_path):
    """The torch backbone's body saved as a torchvision .pth (with fc and counters) -> the same features."""
    torch.manual_seed(0)
    torch_bb = tb.Backbone("resnet18", norm="frozen_bn")
    _randomize_norms(torch_bb, seed=4)
    sd = dict(torch_bb.body.state_dict())
    for k in [k for k in sd if k.endswith("running_var")]:
        sd[k.replace("running_var", "num_batches_tracked")] = torch.tensor(7)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    torch.save(sd, tmp_path / "r18.pth")
    paddle_bb = Backbone("resnet18", norm="frozen_bn")
    load_pretrained(paddle_bb.body, str(tmp_path / "r18.pth"))
    images, masks = _inputs(seed=5)
    _assert_features_close(torch_bb(torch.from_numpy(images), torch.from_numpy(masks)),
                           paddle_bb(paddle.to_tensor(images), paddle.to_tensor(masks)))


def test_load_pretrained_errors_name_the_problem(tmp_path):
    sd = _torchvision_style_state_dict("resnet18")
    del sd["layer3.1.conv2.weight"]
    torch.save(sd, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="missing.pth.*missing.*layer3.1.conv2.weight"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "missing.pth"))
    torch.save(_torchvision_style_state_dict("resnet18"), tmp_path / "r18.pth")
    with pytest.raises(ValueError, match="r18.pth.*does not fit"):  # a resnet18 file for a resnet34
        load_pretrained(ResNet("resnet34"), str(tmp_path / "r18.pth"))
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="cannot read"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "nope.pdparams"))
    sd = _torchvision_style_state_dict("resnet18")
    sd["layer1.0.bn1.weight"] = torch.ones(3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"shape mismatch at layer1.0.bn1.weight: file \(3,\), model \(64,\)"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "shape.pth"))


def test_load_pretrained_pth_without_torch_is_a_user_error(tmp_path, monkeypatch):
    torch.save(_torchvision_style_state_dict("resnet18"), tmp_path / "r18.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(UserError, match="r18.pth.*needs torch"):
        load_pretrained(ResNet("resnet18"), str(tmp_path / "r18.pth"))
