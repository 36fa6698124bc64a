"""Swin backbone: official layout, shapes with padding, shifted-window masking against a brute-force reference,
stochastic depth, frozen stages, ImageNet-checkpoint loading, and the detector built with it."""
import math

import pytest
import torch
import torch.nn.functional as F

from common.config import load_config
from torch_impl.models.build import build_model
from torch_impl.models.swin import (ARCHS, DropPath, PatchMerging, SwinBackbone, SwinTransformer,
                                    SwinTransformerBlock, load_pretrained, relative_position_index,
                                    shifted_window_mask)

# Params (M) of the ImageNet classifiers (1000-class head, final norm), Swin paper Table 1 / the official model
# zoo: T 28, S 50, B 88, L 197 (window 7 at 224 px and window 12 at 384 px alike).
PAPER_PARAMS_M = {"swin_tiny": 28, "swin_small": 50, "swin_base": 88, "swin_base_window12": 88, "swin_large": 197,
                  "swin_large_window12": 197}


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return SwinBackbone("swin_tiny", drop_path_rate=0.2).eval()


def classifier_state(body, num_classes=1000):
    """An ImageNet-release-like state dict from a detection trunk: no normK, plus head.*, norm.* and the fixed
    shifted-window masks the classification model registers (blocks with a shift; 224 px, window 7)."""
    state = {k: v.clone() for k, v in body.state_dict().items() if not k.startswith(("norm1.", "norm2.", "norm3."))}
    c = body.num_features[-1]
    state.update({"norm.weight": torch.ones(c), "norm.bias": torch.zeros(c), "head.weight": torch.randn(num_classes, c),
                  "head.bias": torch.zeros(num_classes)})
    for i, layer in enumerate(body.layers[:3]):  # stage 4 is 7x7 at 224 px: no shift there
        for j in range(1, len(layer.blocks), 2):
            state[f"layers.{i}.blocks.{j}.attn_mask"] = torch.zeros(64 // 4 ** i, 49, 49)
    return state


def test_official_layout(tiny):
    sd = tiny.body.state_dict()
    keys = list(sd)
    assert keys[:8] == ["patch_embed.proj.weight", "patch_embed.proj.bias", "patch_embed.norm.weight",
                        "patch_embed.norm.bias", "layers.0.blocks.0.norm1.weight", "layers.0.blocks.0.norm1.bias",
                        "layers.0.blocks.0.attn.relative_position_bias_table",
                        "layers.0.blocks.0.attn.relative_position_index"]
    assert keys[-6:] == ["norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias", "norm3.weight", "norm3.bias"]
    assert len(keys) == 187 and "norm0.weight" not in sd
    assert sd["patch_embed.proj.weight"].shape == (96, 3, 4, 4)
    assert sd["layers.0.blocks.1.attn.qkv.weight"].shape == (288, 96)
    assert sd["layers.0.blocks.1.attn.relative_position_bias_table"].shape == (169, 3)
    assert sd["layers.2.blocks.5.attn.relative_position_index"].dtype == torch.int64
    assert sd["layers.2.blocks.5.mlp.fc1.weight"].shape == (1536, 384)
    assert sd["layers.1.downsample.reduction.weight"].shape == (384, 768)
    assert "layers.1.downsample.reduction.bias" not in sd and "layers.3.downsample.norm.weight" not in sd
    assert sd["layers.1.downsample.norm.weight"].shape == (768,)
    # the index is a persistent buffer (the official checkpoints contain it), not a parameter
    assert "layers.0.blocks.0.attn.relative_position_index" not in dict(tiny.body.named_parameters())


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_sizes_channels_and_param_counts(name):
    """Every size, built on the meta device (no memory, no init): channels, strides, output shapes of an odd
    image, and the parameter count of the equivalent ImageNet classifier against the published one."""
    embed_dim, _, _, window = ARCHS[name]
    with torch.device("meta"):
        bb = SwinBackbone(name)
        outs = bb(torch.empty(1, 3, 100, 75), torch.zeros(1, 100, 75, dtype=torch.bool))
    assert bb.num_channels == [2 * embed_dim, 4 * embed_dim, 8 * embed_dim] and bb.strides == [8, 16, 32]
    assert [tuple(x.shape) for x, _ in outs] == [(1, 2 * embed_dim, 13, 10), (1, 4 * embed_dim, 7, 5),
                                                 (1, 8 * embed_dim, 4, 3)]
    assert bb.body.layers[0].blocks[0].attn.relative_position_bias_table.shape[0] == (2 * window - 1) ** 2
    n = sum(p.numel() for p in bb.parameters())
    c = 8 * embed_dim
    classifier = n - 2 * sum(bb.num_channels) + 2 * c + c * 1000 + 1000  # - norm1..3 + norm + head
    assert round(classifier / 1e6) == PAPER_PARAMS_M[name]


@pytest.mark.parametrize("h, w", [(64, 64), (70, 45), (33, 97)])
def test_shapes_padding_and_masks(tiny, h, w):
    images = torch.randn(2, 3, h, w)
    masks = torch.zeros(2, h, w, dtype=torch.bool)
    masks[1, :, w // 2:] = True
    out = tiny(images, masks)
    size = (math.ceil(h / 4), math.ceil(w / 4))
    for (x, m), c in zip(out, [192, 384, 768]):
        size = ((size[0] + 1) // 2, (size[1] + 1) // 2)
        assert x.shape == (2, c) + size and m.shape == (2,) + size and torch.isfinite(x).all()
        assert torch.equal(m, F.interpolate(masks[None].float(), size=size)[0].bool())
        assert not m[0].any() and m[1].any()


def test_single_level():
    bb = SwinBackbone("swin_tiny", num_levels=1).eval()
    assert bb.num_channels == [768] and bb.strides == [32] and bb.body.out_indices == (3,)
    assert not hasattr(bb.body, "norm1") and hasattr(bb.body, "norm3")
    (x, m), = bb(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
    assert x.shape == (1, 768, 2, 2) and m.shape == (1, 2, 2)
    with pytest.raises(ValueError, match="num_levels"):
        SwinBackbone("swin_tiny", num_levels=2)


def test_relative_position_index_brute_force():
    ws = 3
    index = relative_position_index(ws)
    for i in range(ws * ws):
        for j in range(ws * ws):
            dy, dx = i // ws - j // ws, i % ws - j % ws
            assert index[i, j] == (dy + ws - 1) * (2 * ws - 1) + (dx + ws - 1)
    assert index.max() == (2 * ws - 1) ** 2 - 1


def brute_force_allowed(hp, wp, ws, shift):
    """bool [hp*wp, hp*wp] over tokens in original (unrolled) coordinates: True where token q is in token p's
    shifted window and both come from the same side of the roll (no token pair brought together by the
    wrap-around). Plain loops: the definition, not the implementation."""
    n = hp * wp
    allowed = torch.zeros(n, n, dtype=torch.bool)
    for p in range(n):
        r, c = divmod(p, wp)
        sr, sc = (r - shift) % hp, (c - shift) % wp
        for q in range(n):
            r2, c2 = divmod(q, wp)
            sr2, sc2 = (r2 - shift) % hp, (c2 - shift) % wp
            same_window = sr // ws == sr2 // ws and sc // ws == sc2 // ws
            same_side = (r < shift) == (r2 < shift) and (c < shift) == (c2 < shift)
            allowed[p, q] = same_window and same_side
    return allowed


@pytest.mark.parametrize("hp, wp, ws", [(14, 21, 7), (7, 7, 7), (24, 12, 12)])
def test_shifted_window_mask_brute_force(hp, wp, ws):
    shift = ws // 2
    mask = shifted_window_mask(hp, wp, ws, shift)  # [nW, N, N], windows of the rolled map in row-major order
    assert mask.shape == (hp * wp // ws ** 2, ws * ws, ws * ws)
    assert set(mask.unique().tolist()) <= {0.0, -100.0}
    allowed = brute_force_allowed(hp, wp, ws, shift)
    # token k of rolled window w sits at rolled (row, col) -> original ((row + shift) % hp, (col + shift) % wp)
    nww = wp // ws
    for w in range(mask.shape[0]):
        orig = []
        for k in range(ws * ws):
            row, col = (w // nww) * ws + k // ws, (w % nww) * ws + k % ws
            orig.append(((row + shift) % hp) * wp + (col + shift) % wp)
        orig = torch.tensor(orig)
        assert torch.equal(mask[w] == 0, allowed[orig][:, orig]), w


def reference_block(blk, x, h, w):
    """The block computed token by token from its definition: each token attends to the tokens
    brute_force_allowed gives it (padding included), with the bias of their offset. x [1, h*w, C]."""
    ws, s = blk.window, blk.shift
    hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
    c = x.shape[-1]
    xn = F.pad(blk.norm1(x).reshape(1, h, w, c), (0, 0, 0, wp - w, 0, hp - h)).reshape(hp * wp, c)
    heads = blk.attn.num_heads
    q, k, v = blk.attn.qkv(xn).reshape(hp * wp, 3, heads, c // heads).unbind(1)
    logits = torch.einsum("phd,qhd->hpq", q * blk.attn.scale, k)
    rows, cols = torch.arange(hp * wp) // wp, torch.arange(hp * wp) % wp
    srow, scol = (rows - s) % hp, (cols - s) % wp  # offsets in the rolled frame (= original ones where allowed)
    dy = (srow[:, None] - srow[None, :]).clamp(-(ws - 1), ws - 1) + ws - 1
    dx = (scol[:, None] - scol[None, :]).clamp(-(ws - 1), ws - 1) + ws - 1
    logits = logits + blk.attn.relative_position_bias_table[dy * (2 * ws - 1) + dx].permute(2, 0, 1)
    logits = logits.masked_fill(~brute_force_allowed(hp, wp, ws, s), float("-inf"))
    out = torch.einsum("hpq,qhd->phd", logits.softmax(-1), v).reshape(hp, wp, c)[:h, :w].reshape(1, h * w, c)
    y = x + blk.attn.proj(out)
    return y + blk.mlp(blk.norm2(y))


@pytest.mark.parametrize("h, w, shift", [(14, 14, 3), (10, 12, 3), (10, 12, 0)])
def test_block_matches_brute_force(h, w, shift):
    torch.manual_seed(1)
    blk = SwinTransformerBlock(32, 2, 7, shift).eval()
    x = torch.randn(1, h * w, 32)
    hp, wp = -(-h // 7) * 7, -(-w // 7) * 7
    with torch.no_grad():
        got = blk(x, h, w, shifted_window_mask(hp, wp, 7, 3))
        want = reference_block(blk, x, h, w)
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)


def test_shifted_block_never_mixes_regions():
    """Perturbing the top-left token changes, after a shifted block, exactly the tokens that share its region of
    the bottom-right rolled window: the 3 x 3 corner, not the tokens rolled next to it from the other borders."""
    torch.manual_seed(2)
    blk = SwinTransformerBlock(32, 2, 7, 3).eval()
    with torch.no_grad():  # weights of order 1, so that every attention weight is far above rounding
        for p in blk.attn.parameters():
            p.normal_(0.0, 0.2)
    mask = shifted_window_mask(14, 14, 7, 3)
    x = torch.randn(1, 196, 32)
    x2 = x.clone()
    x2[0, 0] += torch.randn(32)  # not a constant: norm1 would remove it
    with torch.no_grad():
        changed = ((blk(x2, 14, 14, mask) - blk(x, 14, 14, mask)).abs().amax(-1) > 1e-6)[0].reshape(14, 14)
    expected = torch.zeros(14, 14, dtype=torch.bool)
    expected[:3, :3] = True
    assert torch.equal(changed, expected)


@pytest.mark.parametrize("h, w", [(6, 8), (7, 5)])
def test_patch_merging_official_order(h, w):
    """Channels in the official order: the (even row, even col), (odd, even), (even, odd), (odd, odd) tokens of
    each 2 x 2 neighbourhood, after zero padding to even sizes."""
    torch.manual_seed(11)
    merge = PatchMerging(4)
    x = torch.randn(2, h * w, 4)
    xp = F.pad(x.reshape(2, h, w, 4), (0, 0, 0, w % 2, 0, h % 2))
    cat = torch.cat([xp[:, 0::2, 0::2], xp[:, 1::2, 0::2], xp[:, 0::2, 1::2], xp[:, 1::2, 1::2]], -1)
    want = merge.reduction(merge.norm(cat.reshape(2, -1, 16)))
    assert torch.allclose(merge(x, h, w), want, atol=1e-6)


def test_drop_path():
    torch.manual_seed(3)
    dp = DropPath(0.5)
    x = torch.ones(4000, 3)
    assert torch.equal(dp.eval()(x), x)
    y = dp.train()(x)
    kept = y[:, 0] > 0
    assert torch.equal(y[kept], torch.full_like(y[kept], 2.0)) and (y[~kept] == 0).all()  # whole samples
    assert abs(kept.float().mean().item() - 0.5) < 0.05


def test_drop_path_rates_and_eval_determinism(tiny):
    rates = [blk.drop_path.drop_prob for layer in tiny.body.layers for blk in layer.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.2) and len(rates) == 12
    assert rates == sorted(rates)
    images, masks = torch.randn(2, 3, 64, 64), torch.zeros(2, 64, 64, dtype=torch.bool)
    drop_paths = [m for m in tiny.modules() if isinstance(m, DropPath)]
    with torch.no_grad():
        a, b = tiny(images, masks)[-1][0], tiny(images, masks)[-1][0]
        for m in drop_paths:
            m.drop_prob = 0.0
        ref = tiny(images, masks)[-1][0]
        for m, rate in zip(drop_paths, rates):
            m.drop_prob = rate
        assert torch.equal(a, b) and torch.equal(a, ref)
        tiny.train()
        torch.manual_seed(5)
        c = tiny(images, masks)[-1][0]
        d = tiny(images, masks)[-1][0]
        tiny.eval()
    assert not torch.allclose(c, d)


@pytest.mark.parametrize("stages, frozen", [(-1, []), (0, ["patch_embed"]), (2, ["patch_embed", "layers.0",
                                                                                   "layers.1", "norm1"]),
                                             (4, ["patch_embed", "layers", "norm1", "norm2", "norm3"])])
def test_frozen_stages(stages, frozen):
    torch.manual_seed(6)
    bb = SwinBackbone("swin_tiny", frozen_stages=stages, drop_path_rate=0.2).train()
    is_frozen = {n: n.startswith(tuple(f + "." for f in frozen)) for n, _ in bb.body.named_parameters()}
    for name, p in bb.body.named_parameters():
        assert p.requires_grad == (not is_frozen[name]), name
    for i, layer in enumerate(bb.body.layers):  # no stochastic depth in frozen stages (they are constants)
        for blk in layer.blocks:
            assert (blk.drop_path.drop_prob == 0.0) or (i >= stages), (i, stages)
    if stages < 4:
        sum(x.square().mean() for x, _ in bb(torch.randn(1, 3, 64, 64), torch.zeros(1, 64, 64, dtype=torch.bool))
            ).backward()
        for name, p in bb.body.named_parameters():
            assert (p.grad is None) == is_frozen[name], name
    with pytest.raises(ValueError, match="frozen_stages"):
        SwinBackbone("swin_tiny", frozen_stages=5)


def test_load_imagenet_checkpoint(tiny, tmp_path):
    path = tmp_path / "swin_tiny_patch4_window7_224.pth"
    state = classifier_state(tiny.body)
    torch.save({"model": state}, path)  # the Microsoft releases keep the weights under `model`
    torch.manual_seed(7)
    fresh = SwinBackbone("swin_tiny")
    ignored = load_pretrained(fresh.body, str(path))
    assert set(ignored) == {"head.weight", "head.bias", "norm.weight", "norm.bias"} | {
        k for k in state if k.endswith("attn_mask")}
    loaded = fresh.body.state_dict()
    for k, v in tiny.body.state_dict().items():
        if k.startswith(("norm1.", "norm2.", "norm3.")):  # not in ImageNet files: LayerNorm init
            assert torch.equal(loaded[k], torch.ones_like(v) if k.endswith("weight") else torch.zeros_like(v)), k
        else:
            assert torch.equal(loaded[k], v), k


def test_load_errors_name_file_and_keys(tiny, tmp_path):
    state = classifier_state(tiny.body)
    bad = tmp_path / "missing.pth"
    torch.save({k: v for k, v in state.items() if k != "layers.1.blocks.0.mlp.fc2.bias"}, bad)
    with pytest.raises(ValueError, match=r"missing\.pth.*layers\.1\.blocks\.0\.mlp\.fc2\.bias"):
        load_pretrained(SwinBackbone("swin_tiny").body, str(bad))
    extra = tmp_path / "extra.pth"
    torch.save(dict(state, absolute_pos_embed=torch.zeros(1, 96, 56, 56)), extra)
    with pytest.raises(ValueError, match=r"extra\.pth.*absolute_pos_embed"):
        load_pretrained(SwinBackbone("swin_tiny").body, str(extra))
    window12 = tmp_path / "window12.pth"
    torch.save({k: (torch.zeros(529, v.shape[1]) if k.endswith("bias_table") else v) for k, v in state.items()},
               window12)
    with pytest.raises(ValueError, match=r"window12\.pth.*relative_position_bias_table.*window"):
        load_pretrained(SwinBackbone("swin_tiny").body, str(window12))
    with pytest.raises(ValueError, match=r"nowhere\.pth"):
        load_pretrained(SwinBackbone("swin_tiny").body, str(tmp_path / "nowhere.pth"))


def test_detector_with_swin_from_config(tiny, tmp_path):
    """model.backbone.name=swin_tiny builds the detector on the Swin body (input projections from its channels)
    and model.backbone.pretrained loads an ImageNet file into it; resnet configs are unchanged."""
    path = tmp_path / "swin_tiny.pth"
    torch.save({"model": classifier_state(tiny.body)}, path)
    cfg = load_config("configs/demo.yml", ["model.num_classes=3", "model.backbone.name=swin_tiny",
                                           f"model.backbone.pretrained={path}", "model.backbone.drop_path_rate=0.1"])
    model, _, _ = build_model(cfg)
    assert isinstance(model.backbone, SwinBackbone) and isinstance(model.backbone.body, SwinTransformer)
    assert [p[0].in_channels for p in model.input_proj] == [192, 384, 768]
    assert torch.equal(model.backbone.body.layers[2].blocks[3].attn.qkv.weight,
                       tiny.body.layers[2].blocks[3].attn.qkv.weight)
    assert model.backbone.body.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.1)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 80), torch.zeros(1, 64, 80, dtype=torch.bool))
    assert out["pred_boxes"].shape[:2] == (1, 100) and torch.isfinite(out["pred_logits"]).all()
    with pytest.raises(ValueError, match="dilation"):
        build_model(load_config("configs/demo.yml", ["model.num_classes=3", "model.backbone.name=swin_tiny",
                                                     "model.backbone.dilation=true"]))
