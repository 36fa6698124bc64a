"""SAP-DETR's side-directed Gaussian (SDG) attention bias (Liu et al., "SAP-DETR: Bridging the Gap Between Salient
Points and Queries-Based Transformer Detector for Fast Model Convergency", CVPR 2023).

Each query has a salient point and the distances from it to the four sides of its box. Per head, the query's
content predicts an offset o in (-1, 1) per axis (tanh) and a scale s per axis; the head's Gaussian is centred at
the point moved by o times the distance to the side it points at (right / bottom for o > 0, left / top
otherwise), and its log-density over the feature-map pixels is added to the cross-attention logits:

    bias[b, h, q, i W + j] = -((j + 0.5 - cx)^2 sx^2 + (i + 0.5 - cy)^2 sy^2) / 8

with (cx, cy) = point + o * side, everything in feature-map cells. The bias is decomposed over the two axes (a
sum of an x and a y term), so it costs O(Q (H + W)) before the final broadcast.

Names follow the release (github liuyang-ict/SAP-DETR, models/SAP_DETR/transformer.py): gaussian_proj, an MLP
d_model -> d_model -> 4 n_heads (3 layers) whose outputs are (ox, oy) per head, then (sx, sy) per head.
Mirrors torch_impl.
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from .dac_detr import MLP


class SideDirectedGaussian(nn.Layer):
    """forward(tgt [B, Q, D] the queries' content, point [B, Q, 2] (x, y), sides [B, Q, 4] (left, top, right,
    bottom) distances from the point, both in feature-map cells, spatial_shape (H, W))
    -> bias [B, n_heads, Q, H * W] (row-major pixels, as a flattened [B, C, H, W] map)."""

    def __init__(self, d_model=256, n_heads=8):
        super().__init__()
        self.n_heads = n_heads
        self.gaussian_proj = MLP(d_model, d_model, 4 * n_heads, 3)

    def centres_and_scales(self, tgt, point, sides):
        """-> (centre [B, Q, n_heads, 2] in cells, scale [B, Q, n_heads, 2]) of every head's Gaussian."""
        b, q, _ = tgt.shape
        mapping = self.gaussian_proj(tgt)
        offset = F.tanh(mapping[..., :2 * self.n_heads]).reshape([b, q, self.n_heads, 2])
        scale = mapping[..., 2 * self.n_heads:].reshape([b, q, self.n_heads, 2])
        toward = paddle.where(offset > 0, sides[:, :, None, 2:].expand_as(offset),  # the side o points at
                              sides[:, :, None, :2].expand_as(offset))
        return point[:, :, None] + offset * toward, scale

    def axis_biases(self, tgt, point, sides, spatial_shape):
        """The two factors: -> (bias_x [B, n_heads, Q, W], bias_y [B, n_heads, Q, H]); forward's bias at pixel
        (i, j) is bias_x[..., j] + bias_y[..., i]."""
        h, w = spatial_shape
        centre, scale = self.centres_and_scales(tgt, point, sides)
        axes = []
        for k, n in ((0, w), (1, h)):
            pixels = paddle.arange(n, dtype=tgt.dtype) + 0.5
            d = (pixels - centre[..., k, None]) * scale[..., k, None]  # [B, Q, n_heads, n]
            axes.append(-(d * d).transpose([0, 2, 1, 3]) / 8.0)
        return axes[0], axes[1]

    def forward(self, tgt, point, sides, spatial_shape):
        bias_x, bias_y = self.axis_biases(tgt, point, sides, spatial_shape)
        return (bias_y[..., :, None] + bias_x[..., None, :]).flatten(-2)
