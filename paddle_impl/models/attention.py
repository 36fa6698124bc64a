"""The two attention modules of the transformer: multi-scale deformable attention and plain multi-head attention.

Both own their parameters under the official DAC-DETR names (sampling_offsets / attention_weights / value_proj /
output_proj; in_proj_weight / in_proj_bias / out_proj) and spell out their math, mirroring torch_impl.
`attend` is the one scaled dot-product attention over heads (masks in torch's convention, True = blocked), used by
MultiheadAttention and by Conditional DETR's decoder, which projects its queries and keys itself.
Linear layers are layers.Linear (torch's default init; see docs/paddle_vs_torch.md).
"""
import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from ops.paddle_ms_deform_attn import ms_deform_attn

from .layers import Linear


class MSDeformAttn(nn.Layer):
    """Multi-scale deformable attention (Deformable DETR): each query samples n_points per head and level
    around its reference point and mixes them with softmaxed weights.

    forward(query [B, Nq, D], reference_points [B, Nq, L, 2] (x, y) or [B, Nq, L, 4] (cx, cy, w, h) in [0, 1],
    value [B, S, D], spatial_shapes int64 [L, 2], level_start_index int64 [L], padding_mask bool [B, S] or None)
    -> [B, Nq, D]. With 4-d references the offsets are scaled by half the box size / n_points.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4, backend="auto"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.hidden_dim ({d_model}) must be divisible by model.nheads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.backend = backend
        self.sampling_offsets = Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = Linear(d_model, d_model)
        self.output_proj = Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Offsets start as rings of points in n_heads directions (point i at distance i + 1), uniform weights."""
        zeros, xavier = nn.initializer.Constant(0.0), nn.initializer.XavierUniform()
        zeros(self.sampling_offsets.weight)
        thetas = paddle.arange(self.n_heads, dtype="float32") * (2.0 * math.pi / self.n_heads)
        grid = paddle.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / paddle.amax(grid.abs(), axis=-1, keepdim=True)
        grid = grid.reshape([self.n_heads, 1, 1, 2]).tile([1, self.n_levels, self.n_points, 1])
        grid = grid * paddle.arange(1, self.n_points + 1, dtype="float32").reshape([1, 1, -1, 1])
        self.sampling_offsets.bias.set_value(grid.flatten().astype(self.sampling_offsets.bias.dtype))
        zeros(self.attention_weights.weight)
        zeros(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            xavier(proj.weight)
            zeros(proj.bias)

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index, padding_mask=None):
        b, nq, _ = query.shape
        s = value.shape[1]
        h, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.reshape([b, s, h, self.d_model // h])
        offsets = self.sampling_offsets(query).reshape([b, nq, h, lv, p, 2])
        weights = F.softmax(self.attention_weights(query).reshape([b, nq, h, lv * p]), -1).reshape([b, nq, h, lv, p])
        if reference_points.dtype != offsets.dtype:  # float32 encoder grid in a float64 model: no implicit promotion
            reference_points = reference_points.astype(offsets.dtype)
        if reference_points.shape[-1] == 2:
            sizes = spatial_shapes
            if isinstance(sizes, list):  # while exporting: symbolic sizes (DeformableTransformer.level_index)
                sizes = paddle.to_tensor(spatial_shapes, dtype="int64")
            normalizer = paddle.stack([sizes[:, 1], sizes[:, 0]], -1).astype(offsets.dtype)  # W, H
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape}")
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, backend=self.backend)
        return self.output_proj(out)


def _additive(mask, dtype):
    """bool mask (True = blocked) -> 0 / -inf of `dtype`, same shape."""
    return paddle.zeros_like(mask, dtype=dtype).masked_fill(mask, float("-inf"))


def attend(q, k, v, n_heads, attn_mask=None, key_padding_mask=None, dropout=None, bias=None):
    """Scaled dot-product attention of projected inputs, per head: softmax(q_h k_h^T / sqrt(dk) + masks) v_h.

    q [B, Nq, h * dk], k [B, Nk, h * dk], v [B, Nk, h * dv], attn_mask bool [Nq, Nk] and key_padding_mask bool
    [B, Nk] (True = blocked; Paddle's own attention APIs read True as "attend", and paddle.nn.MultiHeadAttention
    has no key padding mask) or None, dropout: a layer applied to the attention weights, bias: float
    [B, h, Nq, Nk] added to the scaled logits (SAP-DETR's Gaussian) or None -> [B, Nq, h * dv] (heads
    concatenated). The masks are added as 0 / -inf. Every query must see at least one key.
    Written out, where torch's `attend` calls its fused kernel: Paddle's F.scaled_dot_product_attention runs this
    same math on CPU (1.2x faster forward + backward in a measurement) and picks its flash-attention op elsewhere
    (docs/paddle_vs_torch.md).
    """
    b, nq, _ = q.shape
    nk = k.shape[1]
    dk, dv = q.shape[-1] // n_heads, v.shape[-1] // n_heads
    q = q.reshape([b, nq, n_heads, dk]).transpose([0, 2, 1, 3])
    k = k.reshape([b, nk, n_heads, dk]).transpose([0, 2, 1, 3])
    v = v.reshape([b, nk, n_heads, dv]).transpose([0, 2, 1, 3])
    scores = paddle.matmul(q, k, transpose_y=True) / math.sqrt(dk)  # [B, h, Nq, Nk]
    if bias is not None:
        scores = scores + bias
    if attn_mask is not None:
        scores = scores + _additive(attn_mask, scores.dtype)
    if key_padding_mask is not None:
        scores = scores + _additive(key_padding_mask[:, None, None, :], scores.dtype)
    attn = F.softmax(scores, axis=-1)
    if dropout is not None:
        attn = dropout(attn)
    return paddle.matmul(attn, v).transpose([0, 2, 1, 3]).reshape([b, nq, n_heads * dv])


class MultiheadAttention(nn.Layer):
    """Scaled dot-product multi-head attention with a packed input projection in torch.nn.MultiheadAttention's
    parameter layout: in_proj_weight [3D, D] = (q, k, v) rows (torch's [out, in], kept so that weight conversion
    copies it unchanged), in_proj_bias [3D], out_proj.

    forward(query [B, Nq, D], key [B, Nk, D], value [B, Nk, D], attn_mask bool [Nq, Nk] True = blocked, or None,
    key_padding_mask bool [B, Nk] True = padded key, or None) -> [B, Nq, D]. The mask convention is the torch
    tree's (and common/denoising.py's); see `attend`.
    """

    def __init__(self, d_model, n_heads, dropout=0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.hidden_dim ({d_model}) must be divisible by model.nheads ({n_heads})")
        self.n_heads = n_heads
        self.in_proj_weight = self.create_parameter([3 * d_model, d_model],
                                                    default_initializer=nn.initializer.XavierUniform())
        self.in_proj_bias = self.create_parameter([3 * d_model], is_bias=True,
                                                  default_initializer=nn.initializer.Constant(0.0))
        self.out_proj = Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.initializer.Constant(0.0)(self.out_proj.bias)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None):
        d = query.shape[-1]
        w, bias = self.in_proj_weight, self.in_proj_bias

        def project(x, rows):  # with rows of the packed [3D, D] weight: [B, n, D] -> [B, n, D]
            return paddle.matmul(x, w[rows], transpose_y=True) + bias[rows]

        out = attend(project(query, slice(0, d)), project(key, slice(d, 2 * d)), project(value, slice(2 * d, 3 * d)),
                     self.n_heads, attn_mask, key_padding_mask, self.dropout)
        return self.out_proj(out)
