"""Swin Transformer backbone (Swin-T/S/B/L) with the official parameter layout, and ImageNet-weight loading.

The trunk (`SwinTransformer`) is the detection form of Swin (Liu et al., ICCV 2021) used by DINO and the DAC-DETR
release: inputs of any size (padded to the patch size, then each stage's map to its window size), shifted windows
masked so that tokens rolled in from the opposite border never attend to each other, stochastic depth, and a
LayerNorm `normK` on every output stage K. Parameter names are the official ones (patch_embed.proj,
layers.N.blocks.M.{norm1, attn.qkv, attn.relative_position_bias_table, attn.proj, norm2, mlp.fc1, mlp.fc2},
layers.N.downsample.{reduction, norm}, norm1..norm3), Linear weights in Paddle's [in, out] layout, so a Microsoft
ImageNet checkpoint loads by name into `backbone.body` (`load_pretrained`: a torch .pth through the rule of
convert/rules.py, or a .pdparams as it is) and a DINO / DAC-DETR checkpoint's `backbone.0.body.*` maps by prefix.
The relative-position index is a persistent buffer, as in those checkpoints (they all contain it).

`SwinBackbone` is a drop-in for backbone.Backbone: same forward, `body`, `num_channels`, `strides`. Its output
levels are stages 1..3 (strides 8, 16, 32; channels 2C, 4C, 8C) or stage 3 alone.
"""
import logging
import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddle import nn

from convert.rules import torch_to_paddle

from common.swin_weights import check_tensors, split_pretrained, summarize

from .backbone import read_weights
from .layers import Linear

logger = logging.getLogger("paddle_impl")

# name: (embed_dim C, depths, num_heads, window_size). Window 7: the 224-px ImageNet checkpoints; window 12: the
# 384-px ones (swin_large_window12 = swin_large_patch4_window12_384_22k, the DAC-DETR / DINO Swin-L).
ARCHS = {
    "swin_tiny": (96, (2, 2, 6, 2), (3, 6, 12, 24), 7),
    "swin_small": (96, (2, 2, 18, 2), (3, 6, 12, 24), 7),
    "swin_base": (128, (2, 2, 18, 2), (4, 8, 16, 32), 7),
    "swin_base_window12": (128, (2, 2, 18, 2), (4, 8, 16, 32), 12),
    "swin_large": (192, (2, 2, 18, 2), (6, 12, 24, 48), 7),
    "swin_large_window12": (192, (2, 2, 18, 2), (6, 12, 24, 48), 12),
}
MASKED = -100.0  # the official additive mask value between regions of a shifted window
_TRUNC_NORMAL = nn.initializer.TruncatedNormal(std=0.02)  # cut at +-2 absolute, as torch's trunc_normal_


def relative_position_index(window):
    """int64 [N, N], N = window^2: row-major index into the [(2w-1)^2, heads] bias table of the offset (dy, dx)
    from token j to token i of a window."""
    ys, xs = np.divmod(np.arange(window * window), window)
    dy = ys[:, None] - ys[None, :] + window - 1
    dx = xs[:, None] - xs[None, :] + window - 1
    return (dy * (2 * window - 1) + dx).astype(np.int64)


def window_partition(x, window):
    """[B, H, W, C] (H, W multiples of window) -> [B * nW, window * window, C], windows in row-major order."""
    b, h, w, c = x.shape
    x = x.reshape([b, h // window, window, w // window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, window * window, c])


def window_reverse(windows, window, h, w):
    """[B * nW, window * window, C] -> [B, H, W, C] (inverse of window_partition)."""
    c = windows.shape[-1]
    x = windows.reshape([-1, h // window, w // window, window, window, c]).transpose([0, 1, 3, 2, 4, 5])
    return x.reshape([-1, h, w, c])


def shifted_window_mask(hp, wp, window, shift):
    """Additive attention mask [nW, N, N] (0 or -100) of a map of hp x wp tokens rolled by -shift.

    After the roll, the last `shift` rows (and columns) hold tokens from the opposite border; the bottom row of
    windows (and right column) therefore mixes two regions, which must not attend to each other. A token's region
    is (row band, column band) with bands [0, hp - window), [hp - window, hp - shift), [hp - shift, hp).
    """
    def bands(n):
        i = paddle.arange(n)
        return (i >= n - window).astype("int64") + (i >= n - shift).astype("int64")

    region = bands(hp).unsqueeze(1) * 3 + bands(wp).unsqueeze(0)  # [hp, wp]
    ids = window_partition(region.reshape([1, hp, wp, 1]), window)[..., 0]  # [nW, N]
    return (ids.unsqueeze(2) != ids.unsqueeze(1)).astype("float32") * MASKED


class DropPath(nn.Layer):
    """Stochastic depth: in training, zeroes a sample's residual branch with probability drop_prob and scales the
    kept ones by 1 / (1 - drop_prob); the identity in eval. x [B, ...] -> same."""

    def __init__(self, drop_prob=0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = paddle.floor(keep + paddle.rand([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype))
        return x / keep * mask

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


def _linear(in_features, out_features, bias=True):
    """Linear [in, out] initialized as the official Swin: weight N(0, 0.02) cut at +-2, bias 0. layers.Linear
    (fast bias gradient) when there is a bias."""
    if not bias:
        return nn.Linear(in_features, out_features, weight_attr=paddle.ParamAttr(initializer=_TRUNC_NORMAL),
                         bias_attr=False)
    layer = Linear(in_features, out_features)
    _TRUNC_NORMAL(layer.weight)
    nn.initializer.Constant(0.0)(layer.bias)
    return layer


class Mlp(nn.Layer):
    """fc1 - GELU - fc2. x [..., dim] -> [..., dim]."""

    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = _linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = _linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class WindowAttention(nn.Layer):
    """Multi-head self-attention inside windows, with a learned bias per head and relative offset.

    forward(x [B * nW, N, C], mask [nW, N, N] additive or None) -> [B * nW, N, C]; N = window^2.
    """

    def __init__(self, dim, window, num_heads):
        super().__init__()
        self.window = window
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = self.create_parameter(
            [(2 * window - 1) ** 2, num_heads], default_initializer=_TRUNC_NORMAL)
        self.register_buffer("relative_position_index", paddle.to_tensor(relative_position_index(window)))
        self.qkv = _linear(dim, dim * 3)
        self.proj = _linear(dim, dim)

    def forward(self, x, mask=None):
        bn, n, c = x.shape
        h = self.num_heads
        # unbind, not indexing: Paddle's slice backward writes into a zero tensor per slice, 2x slower here
        q, k, v = paddle.unbind(self.qkv(x).reshape([bn, n, 3, h, c // h]).transpose([2, 0, 3, 1, 4]))
        bias = paddle.index_select(self.relative_position_bias_table, self.relative_position_index.reshape([-1]))
        attn = paddle.matmul(q * self.scale, k, transpose_y=True) + bias.reshape([n, n, h]).transpose([2, 0, 1])
        if mask is not None:
            nw = mask.shape[0]
            attn = (attn.reshape([bn // nw, nw, h, n, n]) + mask.unsqueeze(1)).reshape([bn, h, n, n])
        x = paddle.matmul(F.softmax(attn, axis=-1), v).transpose([0, 2, 1, 3]).reshape([bn, n, c])
        return self.proj(x)


class SwinTransformerBlock(nn.Layer):
    """norm1 - (shifted) window attention - residual, norm2 - MLP - residual.

    forward(x [B, H*W, C], H, W, mask [nW, N, N] of the shifted windows, used when shift > 0) -> [B, H*W, C].
    The map is padded (bottom, right) to multiples of the window after norm1, as in the official code.
    """

    def __init__(self, dim, num_heads, window, shift, drop_path=0.0, mlp_ratio=4.0):
        super().__init__()
        self.window = window
        self.shift = shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x, h, w, mask):
        b, _, c = x.shape
        ws, s = self.window, self.shift
        shortcut = x
        x = self.norm1(x).reshape([b, h, w, c])
        pad_b, pad_r = (ws - h % ws) % ws, (ws - w % ws) % ws
        if pad_b or pad_r:  # a pad list over every dimension: constant padding, no data_format involved
            x = F.pad(x, [0, 0, 0, pad_b, 0, pad_r, 0, 0])
        hp, wp = h + pad_b, w + pad_r
        if s:
            x = paddle.roll(x, shifts=(-s, -s), axis=(1, 2))
        x = window_reverse(self.attn(window_partition(x, ws), mask if s else None), ws, hp, wp)
        if s:
            x = paddle.roll(x, shifts=(s, s), axis=(1, 2))
        if pad_b or pad_r:
            x = x[:, :h, :w]
        x = x.reshape([b, h * w, c])
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Layer):
    """2x2 neighbourhoods concatenated (padded to even sizes), LayerNorm, linear 4C -> 2C.

    forward(x [B, H*W, C], H, W) -> [B, ceil(H/2) * ceil(W/2), 2C].
    """

    def __init__(self, dim):
        super().__init__()
        self.reduction = _linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, h, w):
        b, _, c = x.shape
        x = x.reshape([b, h, w, c])
        if h % 2 or w % 2:
            x = F.pad(x, [0, 0, 0, h % 2, 0, w % 2, 0, 0])
        h2, w2 = (h + 1) // 2, (w + 1) // 2
        # channel blocks in the official order (even row, even col), (odd, even), (even, odd), (odd, odd):
        # [.., row parity, .., col parity, C] -> [.., col parity, row parity, C]
        x = x.reshape([b, h2, 2, w2, 2, c]).transpose([0, 1, 3, 4, 2, 5]).reshape([b, h2 * w2, 4 * c])
        return self.reduction(self.norm(x))


class BasicLayer(nn.Layer):
    """One stage: `depth` blocks alternating regular and shifted windows, then an optional PatchMerging.

    forward(x [B, H*W, C], H, W) -> (stage output [B, H*W, C], input of the next stage [B, H'*W', C'], H', W').
    """

    def __init__(self, dim, depth, num_heads, window, drop_path, downsample):
        super().__init__()
        self.window = window
        self.shift = window // 2
        self.blocks = nn.LayerList(
            [SwinTransformerBlock(dim, num_heads, window, 0 if i % 2 == 0 else window // 2, drop_path[i])
             for i in range(depth)])
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, h, w):
        ws = self.window
        mask = shifted_window_mask(-(-h // ws) * ws, -(-w // ws) * ws, ws, self.shift).astype(x.dtype)
        for blk in self.blocks:
            x = blk(x, h, w, mask)
        if self.downsample is None:
            return x, x, h, w
        return x, self.downsample(x, h, w), (h + 1) // 2, (w + 1) // 2


class PatchEmbed(nn.Layer):
    """Non-overlapping patch x patch convolution (input padded to multiples of patch), then LayerNorm.

    forward(images [B, 3, H, W]) -> [B, C, ceil(H/patch), ceil(W/patch)].
    """

    def __init__(self, patch, embed_dim, in_chans=3):
        super().__init__()
        self.patch = patch
        bound = 1.0 / math.sqrt(in_chans * patch * patch)  # torch's Conv2d default init
        init = paddle.ParamAttr(initializer=nn.initializer.Uniform(-bound, bound))
        self.proj = nn.Conv2D(in_chans, embed_dim, patch, stride=patch, weight_attr=init, bias_attr=init)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        p = self.patch
        pad_b, pad_r = (p - x.shape[2] % p) % p, (p - x.shape[3] % p) % p
        if pad_b or pad_r:
            x = F.pad(x, [0, 0, 0, 0, 0, pad_b, 0, pad_r])
        x = self.proj(x)
        return self.norm(x.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])


class SwinTransformer(nn.Layer):
    """Swin trunk without the classifier. images [B, 3, H, W] -> [stage K output [B, C * 2^K, H_K, W_K] for K in
    out_indices], H_K = ceil(H / 4 / 2^K). `num_features[K]` = C * 2^K.

    drop_path_rate: stochastic depth, rising linearly from 0 (first block) to this rate (last block).
    """

    def __init__(self, embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size=7,
                 drop_path_rate=0.2, out_indices=(1, 2, 3), patch_size=4):
        super().__init__()
        self.out_indices = tuple(out_indices)
        self.num_features = [embed_dim * 2 ** i for i in range(len(depths))]
        self.patch_embed = PatchEmbed(patch_size, embed_dim)
        rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
        starts = np.cumsum((0,) + tuple(depths)).tolist()
        self.layers = nn.LayerList(
            [BasicLayer(self.num_features[i], depths[i], num_heads[i], window_size, rates[starts[i]:starts[i + 1]],
                        downsample=i < len(depths) - 1) for i in range(len(depths))])
        for i in self.out_indices:
            self.add_sublayer(f"norm{i}", nn.LayerNorm(self.num_features[i]))

    def forward(self, x):
        x = self.patch_embed(x)
        h, w = x.shape[2:]
        x = x.flatten(2).transpose([0, 2, 1])
        outs = []
        for i, layer in enumerate(self.layers):
            out, x, h_next, w_next = layer(x, h, w)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.reshape([-1, h, w, self.num_features[i]]).transpose([0, 3, 1, 2]))
            h, w = h_next, w_next
        return outs


class SwinBackbone(nn.Layer):
    """Swin body returning stages 1-3 (strides 8, 16, 32) or stage 3 alone, with downsampled padding masks.

    forward(images [B, 3, H, W], masks bool [B, H, W] True = padding) -> list of (feature [B, C_l, H_l, W_l],
    mask bool [B, H_l, W_l]); `num_channels` and `strides` describe the levels (as backbone.Backbone).
    """

    def __init__(self, name="swin_tiny", frozen_stages=-1, num_levels=3, drop_path_rate=0.2):
        super().__init__()
        if name not in ARCHS:
            raise ValueError(f"model.backbone.name: unknown backbone {name!r}; choose one of {sorted(ARCHS)}")
        if num_levels not in (1, 3):
            raise ValueError(f"Swin backbone: num_levels must be 1 or 3, got {num_levels}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"model.backbone.drop_path_rate must be in [0, 1), got {drop_path_rate}")
        embed_dim, depths, num_heads, window = ARCHS[name]
        out_indices = (1, 2, 3)[3 - num_levels:]
        self.body = SwinTransformer(embed_dim, depths, num_heads, window, drop_path_rate, out_indices)
        self.num_channels = [self.body.num_features[i] for i in out_indices]
        self.strides = [8, 16, 32][3 - num_levels:]
        self.freeze(frozen_stages)

    def freeze(self, frozen_stages):
        """Stops gradients (and stochastic depth) of stage 0 = patch_embed and stages 1..frozen_stages =
        layers.0..layers.{frozen_stages-1} with their output norms; -1 freezes nothing. (ResNet's numbering:
        the official Swin code's frozen_stages k + 1 is this k.)"""
        if not -1 <= frozen_stages <= 4:
            raise ValueError(f"model.backbone.frozen_stages must be in -1..4, got {frozen_stages}")
        body = self.body
        stages = [[body.patch_embed]] + [[layer] + ([getattr(body, f"norm{i}")] if i in body.out_indices else [])
                                         for i, layer in enumerate(body.layers)]
        for stage in stages[:frozen_stages + 1]:
            for module in stage:
                for p in module.parameters():
                    p.stop_gradient = True
                for m in module.sublayers(include_self=True):  # the official code keeps frozen stages in eval mode
                    if isinstance(m, DropPath):
                        m.drop_prob = 0.0

    def forward(self, images, masks):
        out = []
        for x in self.body(images):
            # Same nearest rule as torch's default (source index floor(i * in / out)); interpolate needs floats.
            m = F.interpolate(masks[None].astype("float32"), size=x.shape[-2:], mode="nearest")[0].astype("bool")
            out.append((x, m))
        return out


# Entries of ImageNet classification checkpoints that the detection trunk does not use: the classifier, the
# final LayerNorm, and the fixed shifted-window masks of the 224/384-px inputs (computed here per input size).
def load_pretrained(body, path):
    """Loads a Swin state dict (Microsoft ImageNet .pth, `model` entry, or a detection trunk; .pdparams in Paddle
    layout) into `body` (a SwinTransformer); returns the ignored keys. head.*, norm.* and *.attn_mask are
    ignored; the output norms normK.* keep their initialization when the file has none (ImageNet files)."""
    state, layout = read_weights(path)
    own = body.state_dict()
    used, ignored, kept = split_pretrained(state, own, path)
    state = {k: state[k] for k in used}
    shapes = {k: tuple(own[k].shape) for k in used}
    indices = {k: v.numpy() for k, v in own.items() if k.endswith("relative_position_index")}
    if layout == "torch":  # Linear weights [out, in] -> [in, out] by the conversion rule
        linear = {f"{name}.weight" for name, sub in body.named_sublayers() if isinstance(sub, nn.Linear)} & set(used)
        check_tensors(state, {k: s[::-1] if k in linear else s for k, s in shapes.items()}, indices, path)
        state = torch_to_paddle(state, shapes, linear)
    check_tensors(state, shapes, indices, path)
    for k, v in state.items():
        own[k].set_value(paddle.to_tensor(np.asarray(v)).astype(own[k].dtype))
    logger.info("backbone: loaded %s (%d tensors); ignored %s; kept at init: %s", path, len(used),
                summarize(ignored), summarize(kept))
    return ignored
