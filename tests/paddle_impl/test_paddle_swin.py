"""Swin backbone (Paddle): the torch tests' checks, plus parity with torch_impl/models/swin.py on converted weights
(features and gradients) and loading the same ImageNet-layout checkpoint (.pth and .pdparams) into both trees."""
import math

import numpy as np
import paddle
import pytest
import torch

from common.config import load_config
from convert.frameworks import paddle_linear_weights, torch_module_to_paddle
from paddle_impl.models.build import build_model
from paddle_impl.models.swin import (ARCHS, DropPath, SwinBackbone, SwinTransformer, SwinTransformerBlock,
                                     load_pretrained, relative_position_index, shifted_window_mask)
from torch_impl.models import swin as torch_swin


@pytest.fixture(scope="module")
def pair():
    """(torch Swin-T, Paddle Swin-T with the torch weights), both in eval mode."""
    torch.manual_seed(0)
    tb = torch_swin.SwinBackbone("swin_tiny", drop_path_rate=0.2).eval()
    pb = SwinBackbone("swin_tiny", drop_path_rate=0.2)
    torch_module_to_paddle(tb, pb)
    pb.eval()
    return tb, pb


def inputs(b, h, w, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((b, 3, h, w)).astype("float32")
    masks = np.zeros((b, h, w), bool)
    masks[-1, :, w // 2:] = True
    return images, masks


def classifier_state(body, num_classes=1000):
    """An ImageNet-release-like torch state dict from a torch trunk (see the torch test of the same name)."""
    state = {k: v.clone() for k, v in body.state_dict().items() if not k.startswith(("norm1.", "norm2.", "norm3."))}
    c = body.num_features[-1]
    state.update({"norm.weight": torch.ones(c), "norm.bias": torch.zeros(c), "head.weight": torch.randn(num_classes, c),
                  "head.bias": torch.zeros(num_classes)})
    for i, layer in enumerate(body.layers[:3]):
        for j in range(1, len(layer.blocks), 2):
            state[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(64 // 4 ** i, 49, 49)
    return state


def test_same_layout_as_torch(pair):
    tb, pb = pair
    t_state, p_state = tb.body.state_dict(), pb.body.state_dict()
    assert list(p_state) == list(t_state)  # no BatchNorm: the names are identical, in the same order
    linear = paddle_linear_weights(pb.body)
    assert "layers.1.downsample.reduction.weight" in linear and "layers.0.blocks.0.mlp.fc2.weight" in linear
    for k, v in p_state.items():
        want = tuple(t_state[k].shape)[::-1] if k in linear else tuple(t_state[k].shape)
        assert tuple(v.shape) == want, k
    assert p_state["layers.0.blocks.0.attn.relative_position_index"].dtype == paddle.int64
    assert "layers.0.blocks.0.attn.relative_position_index" not in dict(pb.body.named_parameters())
    assert ARCHS == torch_swin.ARCHS


def test_own_index_equals_torch():
    for ws in (7, 12):
        assert np.array_equal(relative_position_index(ws), torch_swin.relative_position_index(ws))
    pb = SwinTransformer(16, (2, 2), (1, 2), 12, out_indices=(1,))
    np.testing.assert_array_equal(pb.layers[1].blocks[1].attn.relative_position_index.numpy(),
                                  torch_swin.relative_position_index(12))


@pytest.mark.parametrize("h, w", [(64, 64), (70, 45), (33, 97)])
def test_shapes_padding_and_masks(pair, h, w):
    _, pb = pair
    images, masks = inputs(2, h, w)
    out = pb(paddle.to_tensor(images), paddle.to_tensor(masks))
    size = (math.ceil(h / 4), math.ceil(w / 4))
    for (x, m), c in zip(out, [192, 384, 768]):
        size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        assert tuple(x.shape) == (2, c) + size and tuple(m.shape) == (2,) + size
        assert np.isfinite(x.numpy()).all()
        want = torch.nn.functional.interpolate(torch.from_numpy(masks)[None].float(), size=size)[0].bool()
        np.testing.assert_array_equal(m.numpy(), want.numpy())


def test_single_level():
    bb = SwinBackbone("swin_tiny", num_levels=1)
    bb.eval()
    assert bb.num_channels == [768] and bb.strides == [32] and bb.body.out_indices == (3,)
    images, masks = inputs(1, 64, 64)
    (x, m), = bb(paddle.to_tensor(images), paddle.to_tensor(masks))
    assert tuple(x.shape) == (1, 768, 2, 2) and tuple(m.shape) == (1, 2, 2)


@pytest.mark.parametrize("hp, wp, ws", [(14, 21, 7), (7, 7, 7), (24, 12, 12)])
def test_shifted_window_mask_equals_torch(hp, wp, ws):
    """The torch mask is checked against a brute-force definition in the torch tests; Paddle's is the same."""
    got = shifted_window_mask(hp, wp, ws, ws // 2).numpy()
    np.testing.assert_array_equal(got, torch_swin.shifted_window_mask(hp, wp, ws, ws // 2).numpy())


def test_shifted_block_never_mixes_regions():
    paddle.seed(2)
    blk = SwinTransformerBlock(32, 2, 7, 3)
    blk.eval()
    for p in blk.attn.parameters():  # weights of order 1, so that every attention weight is far above rounding
        p.set_value(paddle.normal(0.0, 0.2, p.shape))
    mask = shifted_window_mask(14, 14, 7, 3)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 196, 32)).astype("float32")
    x2 = x.copy()
    x2[0, 0] += rng.standard_normal(32).astype("float32")
    with paddle.no_grad():
        diff = (blk(paddle.to_tensor(x2), 14, 14, mask) - blk(paddle.to_tensor(x), 14, 14, mask)).abs().numpy()
    changed = (diff.max(-1) > 1e-6)[0].reshape(14, 14)
    expected = np.zeros((14, 14), bool)
    expected[:3, :3] = True
    np.testing.assert_array_equal(changed, expected)


def test_drop_path():
    paddle.seed(3)
    dp = DropPath(0.5)
    x = paddle.ones([4000, 3])
    dp.eval()
    assert np.array_equal(dp(x).numpy(), x.numpy())
    dp.train()
    y = dp(x).numpy()
    kept = y[:, 0] > 0
    assert (y[kept] == 2.0).all() and (y[~kept] == 0).all()
    assert abs(kept.mean() - 0.5) < 0.05


def test_drop_path_rates_and_eval_determinism(pair):
    _, pb = pair
    rates = [blk.drop_path.drop_prob for layer in pb.body.layers for blk in layer.blocks]
    assert rates == [blk.drop_path.drop_prob for layer in pair[0].body.layers for blk in layer.blocks]
    images, masks = (paddle.to_tensor(a) for a in inputs(2, 64, 64))
    with paddle.no_grad():
        a, b = pb(images, masks)[-1][0].numpy(), pb(images, masks)[-1][0].numpy()
        assert np.array_equal(a, b)
        pb.train()
        paddle.seed(5)
        c, d = pb(images, masks)[-1][0].numpy(), pb(images, masks)[-1][0].numpy()
        pb.eval()
    assert not np.allclose(c, d)


@pytest.mark.parametrize("stages, frozen", [(-1, []), (2, ["patch_embed", "layers.0", "layers.1", "norm1"]),
                                             (4, ["patch_embed", "layers", "norm1", "norm2", "norm3"])])
def test_frozen_stages(stages, frozen):
    paddle.seed(6)
    bb = SwinBackbone("swin_tiny", frozen_stages=stages, drop_path_rate=0.2)
    bb.train()
    is_frozen = {n: n.startswith(tuple(f + "." for f in frozen)) for n, _ in bb.body.named_parameters()}
    for name, p in bb.body.named_parameters():
        assert p.stop_gradient == is_frozen[name], name
    for i, layer in enumerate(bb.body.layers):
        for blk in layer.blocks:
            assert (blk.drop_path.drop_prob == 0.0) or (i >= stages), (i, stages)
    if stages < 4:
        images, masks = (paddle.to_tensor(a) for a in inputs(1, 64, 64))
        sum(x.square().mean() for x, _ in bb(images, masks)).backward()
        for name, p in bb.body.named_parameters():
            assert (p.grad is None) == is_frozen[name], name


@pytest.mark.parametrize("h, w", [(64, 64), (70, 45)])
def test_parity_with_torch_features(pair, h, w):
    tb, pb = pair
    images, masks = inputs(2, h, w, seed=1)
    with torch.no_grad():
        t_out = tb(torch.from_numpy(images), torch.from_numpy(masks))
    p_out = pb(paddle.to_tensor(images), paddle.to_tensor(masks))
    for (tx, tm), (px, pm) in zip(t_out, p_out):
        tx = tx.numpy()
        # measured: <= 1.1e-6 of the largest magnitude
        assert np.abs(px.numpy() - tx).max() <= 1e-5 * np.abs(tx).max()
        np.testing.assert_array_equal(pm.numpy(), tm.numpy())


GRAD_PARAMS = ["patch_embed.proj.weight", "layers.0.blocks.1.attn.relative_position_bias_table",
               "layers.0.blocks.1.attn.qkv.bias", "layers.1.downsample.reduction.weight",
               "layers.2.blocks.5.mlp.fc1.weight", "norm3.weight"]


def test_parity_with_torch_gradients():
    """Training mode (drop path 0: deterministic) through Paddle's training-time Linear, on an odd size."""
    torch.manual_seed(8)
    tb = torch_swin.SwinBackbone("swin_tiny", drop_path_rate=0.0).train()
    pb = SwinBackbone("swin_tiny", drop_path_rate=0.0)
    torch_module_to_paddle(tb, pb)
    pb.train()
    images, masks = inputs(1, 70, 45, seed=2)
    weights = [np.random.default_rng(i).standard_normal((1, c, 1, 1)).astype("float32") for i, c in
               enumerate(tb.num_channels)]
    sum((x * torch.from_numpy(wt)).sum() for (x, _), wt in zip(tb(torch.from_numpy(images),
                                                                   torch.from_numpy(masks)), weights)).backward()
    sum((x * paddle.to_tensor(wt)).sum() for (x, _), wt in zip(pb(paddle.to_tensor(images),
                                                                   paddle.to_tensor(masks)), weights)).backward()
    t_params, p_params = dict(tb.body.named_parameters()), dict(pb.body.named_parameters())
    linear = paddle_linear_weights(pb.body)
    for name in GRAD_PARAMS:
        tg = t_params[name].grad.numpy()
        pg = p_params[name].grad.numpy()
        pg = pg.T if name in linear else pg
        # measured: <= 8e-7 of the largest magnitude
        assert np.abs(pg - tg).max() <= 1e-5 * np.abs(tg).max(), name


def test_parity_window12_small_trunk():
    """Window 12 (shift 6), as the Swin-L of the release, on a narrow trunk: maps padded to 24 x 36 at stage 1."""
    torch.manual_seed(9)
    tb = torch_swin.SwinTransformer(32, (2, 2, 2, 2), (1, 2, 4, 8), 12, drop_path_rate=0.0).eval()
    pb = SwinTransformer(32, (2, 2, 2, 2), (1, 2, 4, 8), 12, drop_path_rate=0.0)
    torch_module_to_paddle(tb, pb)
    pb.eval()
    images, _ = inputs(2, 96, 100, seed=3)
    with torch.no_grad():
        t_out = tb(torch.from_numpy(images))
    for tx, px in zip(t_out, pb(paddle.to_tensor(images))):
        assert np.abs(px.numpy() - tx.numpy()).max() <= 1e-5 * np.abs(tx.numpy()).max()


def test_load_imagenet_checkpoint_pth_and_pdparams(pair, tmp_path):
    """The same ImageNet-layout file (a torch .pth with `model`) loads into both trees with the same result; its
    Paddle-layout .pdparams twin loads as it is."""
    tb, _ = pair
    state = classifier_state(tb.body)
    pth = tmp_path / "swin_tiny_patch4_window7_224.pth"
    torch.save({"model": state}, pth)
    torch.manual_seed(10)
    t_fresh = torch_swin.SwinBackbone("swin_tiny").eval()
    torch_swin.load_pretrained(t_fresh.body, str(pth))
    p_fresh = SwinBackbone("swin_tiny")
    p_fresh.eval()
    ignored = load_pretrained(p_fresh.body, str(pth))
    assert set(ignored) == {"head.weight", "head.bias", "norm.weight", "norm.bias"} | {
        k for k in state if k.endswith("attn_mask")}
    images, masks = inputs(1, 64, 72, seed=4)
    with torch.no_grad():
        t_out = t_fresh(torch.from_numpy(images), torch.from_numpy(masks))
    p_out = p_fresh(paddle.to_tensor(images), paddle.to_tensor(masks))
    for (tx, _), (px, _) in zip(t_out, p_out):
        assert np.abs(px.numpy() - tx.numpy()).max() <= 1e-5 * np.abs(tx.numpy()).max()
    pdparams = tmp_path / "swin_tiny.pdparams"
    paddle.save({k: v for k, v in p_fresh.body.state_dict().items() if not k.startswith("norm")}, str(pdparams))
    p_twin = SwinBackbone("swin_tiny")
    load_pretrained(p_twin.body, str(pdparams))
    for k, v in p_fresh.body.state_dict().items():
        np.testing.assert_array_equal(p_twin.body.state_dict()[k].numpy(), v.numpy(), err_msg=k)


def test_load_errors_name_file_and_keys(pair, tmp_path):
    state = classifier_state(pair[0].body)
    body = SwinBackbone("swin_tiny").body
    bad = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "layers.1.blocks.0.mlp.fc2.bias"}, bad)
    with pytest.raises(ValueError, match=r"missing\.pth.*layers\.1\.blocks\.0\.mlp\.fc2\.bias"):
        load_pretrained(body, str(bad))
    window12 = tmp_path / "window12.pth"
    torch.save({k: (torch.zeros(529, v.shape[1]) if k.endswith("bias_table") else v) for k, v in state.items()},
               window12)
    with pytest.raises(ValueError, match=r"window12\.pth.*relative_position_bias_table.*window"):
        load_pretrained(body, str(window12))
    transposed = tmp_path / "transposed.pdparams"  # a torch-layout state saved as .pdparams: Linear shapes differ
    paddle.save({k: v.numpy() for k, v in state.items()}, str(transposed))
    with pytest.raises(ValueError, match=r"transposed\.pdparams.*shape mismatch"):
        load_pretrained(body, str(transposed))
    with pytest.raises(ValueError, match=r"nowhere\.pdparams"):
        load_pretrained(body, str(tmp_path / "nowhere.pdparams"))


def test_detector_with_swin_from_config(pair, tmp_path):
    tb, _ = pair
    path = tmp_path / "swin_tiny.pth"
    torch.save({"model": classifier_state(tb.body)}, path)
    cfg = load_config("configs/demo.yml", ["model.num_classes=3", "model.backbone.name=swin_tiny",
                                           f"model.backbone.pretrained={path}", "model.backbone.drop_path_rate=0.1"])
    model, _, _ = build_model(cfg)
    assert isinstance(model.backbone, SwinBackbone) and isinstance(model.backbone.body, SwinTransformer)
    assert [p[0].weight.shape[1] for p in model.input_proj] == [192, 384, 768]
    np.testing.assert_array_equal(model.backbone.body.layers[2].blocks[3].attn.qkv.weight.numpy(),
                                  tb.body.layers[2].blocks[3].attn.qkv.weight.detach().numpy().T)
    assert model.backbone.body.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.1)
    model.eval()
    images, masks = inputs(1, 64, 80)
    with paddle.no_grad():
        out = model(paddle.to_tensor(images), paddle.to_tensor(masks))
    assert tuple(out["pred_boxes"].shape[:2]) == (1, 100) and np.isfinite(out["pred_logits"].numpy()).all()

