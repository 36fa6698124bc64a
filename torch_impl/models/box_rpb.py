"""Plain-DETR's box relative position bias (BoxRPB) and the global cross-attention that adds it to its logits
(Lin et al., "DETR Does Not Need Multi-Scale or Locality Design", ICCV 2023).

Every query attends to every pixel of one feature map; what points a query at its box is a learned bias on the
attention logits, a function of where each pixel centre lies relative to the box's edges. The bias is decomposed
over the two axes, so the MLPs see Q (W + H) inputs instead of Q H W.

Names and defaults follow the release (github.com/impiga/Plain-DETR, models/global_rpe_decomp_decoder.py):
cpb_mlp1 is the x MLP, cpb_mlp2 the y MLP, each Linear(2, hidden) + ReLU + Linear(hidden, n_heads, no bias)
(a per-head constant would not change a softmax); projections q, k, v, proj; hidden 512, stride 16, rpe_type
"linear" (raw pixel offsets, the release's default and the one all its BoxRPB configs use).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

RPE_TYPES = ("linear", "abs_log8")


def _cpb_mlp(hidden_dim, n_heads):
    """[..., 2] -> [..., n_heads]: Linear(2, hidden) + ReLU + Linear(hidden, n_heads) without bias."""
    return nn.Sequential(nn.Linear(2, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, n_heads, bias=False))


class BoxRPB(nn.Module):
    """Box relative position bias of Q boxes over the pixels of an H x W feature map of stride s.

    Pixel (i, j) has centre (px, py) = ((j + 0.5) s, (i + 0.5) s); a box is (x1, y1, x2, y2) in pixels of the
    image the feature map covers (with padding: of the padded image, W s x H s). For head h,

        bias[b, h, q, i W + j] = cpb_mlp1(f([x1 - px, x2 - px]))[h] + cpb_mlp2(f([y1 - py, y2 - py]))[h]

    with f(d) = d for rpe_type "linear" (the release's default: no normalization) and
    f(d) = sign(d) log2(|d| + 1) / 3 (= / log2 8) for "abs_log8".

    forward(boxes [B, Q, 4] (x1, y1, x2, y2) in pixels, spatial_shape (H, W)) -> bias [B, n_heads, Q, H * W]
    (row-major pixels, as a flattened [B, C, H, W] map).
    """

    def __init__(self, n_heads=8, rpe_hidden_dim=512, feature_stride=16, rpe_type="linear"):
        super().__init__()
        if rpe_type not in RPE_TYPES:
            raise ValueError(f"rpe_type must be one of {RPE_TYPES}, got {rpe_type!r}")
        self.n_heads, self.feature_stride, self.rpe_type = n_heads, feature_stride, rpe_type
        self.cpb_mlp1 = _cpb_mlp(rpe_hidden_dim, n_heads)
        self.cpb_mlp2 = _cpb_mlp(rpe_hidden_dim, n_heads)

    def _axis_bias(self, mlp, low, high, n):
        """One axis: low, high [B, Q] box edges in pixels, n pixels along it -> [B, n_heads, Q, n]."""
        centres = (torch.arange(n, dtype=low.dtype, device=low.device) + 0.5) * self.feature_stride
        delta = torch.stack([low[..., None] - centres, high[..., None] - centres], -1)  # [B, Q, n, 2]
        if self.rpe_type == "abs_log8":
            delta = torch.sign(delta) * torch.log2(delta.abs() + 1.0) / 3.0
        return mlp(delta).permute(0, 3, 1, 2)

    def axis_biases(self, boxes, spatial_shape):
        """The two factors: boxes [B, Q, 4], spatial_shape (H, W) -> (bias_x [B, n_heads, Q, W],
        bias_y [B, n_heads, Q, H]); forward's bias at pixel (i, j) is bias_x[..., j] + bias_y[..., i]."""
        h, w = spatial_shape
        bias_x = self._axis_bias(self.cpb_mlp1, boxes[..., 0], boxes[..., 2], w)
        bias_y = self._axis_bias(self.cpb_mlp2, boxes[..., 1], boxes[..., 3], h)
        return bias_x, bias_y

    def forward(self, boxes, spatial_shape):
        bias_x, bias_y = self.axis_biases(boxes, spatial_shape)
        return (bias_y[..., :, None] + bias_x[..., None, :]).flatten(-2)


class GlobalCrossAttention(BoxRPB):
    """Multi-head cross-attention of Q queries over the H W pixels of one feature map, with the BoxRPB of each
    query's box added to its logits: per head h (d = D / n_heads),

        out = proj(concat_h softmax(q_h k_h^T / sqrt(d) + bias_h + pad) v_h),  q = q(query), k = k(key), v = v(value)

    pad = -inf at padded pixels (the release adds -100 there; -inf gives them exactly zero weight).
    A BoxRPB subclass so that the parameters are the release's GlobalCrossAttention's, names and order:
    cpb_mlp1, cpb_mlp2, q, k, v, proj (the release's attention and projection dropouts are 0 and are left out).

    forward(query [B, Q, D], key [B, H W, D], value [B, H W, D], boxes [B, Q, 4] (x1, y1, x2, y2) in pixels,
    spatial_shape (H, W), key_padding_mask bool [B, H W] True = padded pixel, or None) -> [B, Q, D].
    Every query must see at least one pixel.
    """

    def __init__(self, d_model=256, n_heads=8, rpe_hidden_dim=512, feature_stride=16, rpe_type="linear"):
        if d_model % n_heads:
            raise ValueError(f"model.hidden_dim ({d_model}) must be divisible by model.nheads ({n_heads})")
        super().__init__(n_heads, rpe_hidden_dim, feature_stride, rpe_type)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.proj = nn.Linear(d_model, d_model)

    def _heads(self, x):
        """[B, N, D] -> [B, n_heads, N, D / n_heads]."""
        b, n, d = x.shape
        return x.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, query, key, value, boxes, spatial_shape, key_padding_mask=None):
        bias = super().forward(boxes, spatial_shape)  # [B, h, Q, H W]
        if key_padding_mask is not None:
            bias = bias.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        q, k, v = self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        if torch.compiler.is_exporting():
            # written out: torch.export decomposes the fused kernel with a float mask into math whose output
            # layout differs from the traced one, and the reshape below then fails
            out = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]) + bias, -1) @ v
        else:  # torch's fused kernel, scale 1 / sqrt(d) as the release's qk_scale default (see attention.attend)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # [B, h, Q, d]
        return self.proj(out.transpose(1, 2).flatten(2))
