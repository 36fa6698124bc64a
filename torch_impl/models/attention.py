"""The two attention modules of the transformer: multi-scale deformable attention and plain multi-head attention.

Both own their parameters under the official DAC-DETR names (sampling_offsets / attention_weights / value_proj /
output_proj; in_proj_weight / in_proj_bias / out_proj) and spell out their math, so the Paddle tree mirrors them.
`attend` is the one scaled dot-product attention over heads (masks in torch's convention, True = blocked), used by
MultiheadAttention and by Conditional DETR's decoder, which projects its queries and keys itself.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from ops.torch_ms_deform_attn import ms_deform_attn


class MSDeformAttn(nn.Module):
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
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Offsets start as rings of points in n_heads directions (point i at distance i + 1), uniform weights."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]
        grid = grid.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, query, reference_points, value, spatial_shapes, level_start_index, padding_mask=None):
        b, nq, _ = query.shape
        s = value.shape[1]
        h, lv, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(value)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(b, s, h, self.d_model // h)
        offsets = self.sampling_offsets(query).view(b, nq, h, lv, p, 2)
        weights = F.softmax(self.attention_weights(query).view(b, nq, h, lv * p), -1).view(b, nq, h, lv, p)
        if reference_points.shape[-1] == 2:
            sizes = spatial_shapes
            if isinstance(sizes, list):  # while exporting: symbolic sizes (DeformableTransformer.level_index)
                sizes = torch.tensor(spatial_shapes, device=offsets.device)
            normalizer = torch.stack([sizes[:, 1], sizes[:, 0]], -1).to(offsets.dtype)  # (W, H)
            locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)
        else:
            raise ValueError(f"reference_points must end in 2 or 4 coordinates, got {reference_points.shape}")
        out = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights, backend=self.backend)
        return self.output_proj(out)


def attend(q, k, v, n_heads, attn_mask=None, key_padding_mask=None, dropout=None, bias=None):
    """Scaled dot-product attention of projected inputs, per head: softmax(q_h k_h^T / sqrt(dk) + masks) v_h.

    q [B, Nq, h * dk], k [B, Nk, h * dk], v [B, Nk, h * dv], attn_mask bool [Nq, Nk] and key_padding_mask bool
    [B, Nk] (True = blocked) or None, dropout: an nn.Dropout applied to the attention weights, bias: float
    [B, h, Nq, Nk] added to the scaled logits (SAP-DETR's Gaussian) or None -> [B, Nq, h * dv] (heads
    concatenated). Every query must see at least one key.
    torch's fused F.scaled_dot_product_attention computes it (5.5x faster forward + backward than the explicit
    softmax(q k^T) v on CPU at DAC-DETR's 1,100 decoder queries; docs/performance.md); its bool masks mean
    "attend", hence the inversions.
    """
    b, nq, _ = q.shape
    nk = k.shape[1]
    dk, dv = q.shape[-1] // n_heads, v.shape[-1] // n_heads
    q = q.view(b, nq, n_heads, dk).transpose(1, 2)
    k = k.view(b, nk, n_heads, dk).transpose(1, 2)
    v = v.view(b, nk, n_heads, dv).transpose(1, 2)
    allowed = None  # [Nq, Nk] or [B, 1, Nq or 1, Nk], True = attend
    if attn_mask is not None:
        allowed = ~attn_mask
    if key_padding_mask is not None:
        keys = ~key_padding_mask[:, None, None, :]
        allowed = keys if allowed is None else allowed & keys
    p = dropout.p if dropout is not None and dropout.training else 0.0
    if bias is not None:  # one float mask: the bias, -inf where blocked
        allowed = bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))
        if torch.compiler.is_exporting():  # written out, as box_rpb.GlobalCrossAttention does (see there)
            scores = q @ k.transpose(-2, -1) / math.sqrt(dk) + allowed
            return (torch.softmax(scores, -1) @ v).transpose(1, 2).reshape(b, nq, n_heads * dv)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)  # [B, h, Nq, dv]
    return out.transpose(1, 2).reshape(b, nq, n_heads * dv)


class MultiheadAttention(nn.Module):
    """Scaled dot-product multi-head attention with a packed input projection (torch.nn.MultiheadAttention's
    parameter layout: in_proj_weight [3D, D] = (q, k, v) rows, in_proj_bias [3D], out_proj).

    forward(query [B, Nq, D], key [B, Nk, D], value [B, Nk, D], attn_mask bool [Nq, Nk] True = blocked, or None,
    key_padding_mask bool [B, Nk] True = padded key, or None) -> [B, Nq, D]. Batch-first, unlike
    torch.nn.MultiheadAttention.
    """

    def __init__(self, d_model, n_heads, dropout=0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.hidden_dim ({d_model}) must be divisible by model.nheads ({n_heads})")
        self.n_heads = n_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query, key, value, attn_mask=None, key_padding_mask=None):
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        out = attend(F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v), self.n_heads,
                     attn_mask, key_padding_mask, self.dropout)
        return self.out_proj(out)
