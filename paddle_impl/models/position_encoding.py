"""Sine position encoding of feature maps (DETR / Deformable-DETR), aware of the padding mask."""
import math

import paddle
from paddle import nn


def _inverse_frequencies(num_pos_feats, temperature):
    """T^(2 floor(k / 2) / F) for k = 0 .. F-1 -> float32 [F]."""
    half = (paddle.arange(num_pos_feats, dtype="int64") // 2).astype("float32")
    return paddle.pow(paddle.full([num_pos_feats], temperature, "float32"), 2 * half / num_pos_feats)


class PositionEmbeddingSine(nn.Layer):
    """Normalized sine/cosine encoding of (y, x) over the valid (unpadded) region of each image.

    Coordinates are cumulative counts of valid pixels, shifted by -0.5 (pixel centres) and divided by the
    valid extent, times `scale`, so the same relative position gets the same code whatever the padding.
    normalize=False: not divided (the cell index times `scale`, Plain-DETR's "sine_unnorm").
    forward(mask bool [B, H, W] True = padding) -> float32 [B, 2 * num_pos_feats, H, W] (y features, then x).
    """

    def __init__(self, num_pos_feats=128, temperature=10000.0, scale=2 * math.pi, normalize=True):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.scale = scale
        self.normalize = normalize

    def forward(self, mask):
        not_mask = (~mask).astype("float32")
        y = not_mask.cumsum(1)
        x = not_mask.cumsum(2)
        if self.normalize:
            eps = 1e-6
            y = (y - 0.5) / (y[:, -1:, :] + eps) * self.scale
            x = (x - 0.5) / (x[:, :, -1:] + eps) * self.scale
        else:
            y, x = (y - 0.5) * self.scale, (x - 0.5) * self.scale
        dim_t = _inverse_frequencies(self.num_pos_feats, self.temperature)
        pos_x = x[..., None] / dim_t
        pos_y = y[..., None] / dim_t
        pos_x = paddle.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), axis=4).flatten(3)
        pos_y = paddle.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), axis=4).flatten(3)
        return paddle.concat((pos_y, pos_x), axis=3).transpose([0, 3, 1, 2])


# These two run unconverted in static graphs (export): Paddle's AST conversion re-creates a function in a module
# where the default `math.pi` is undefined (NameError); they have no control flow to convert.
@paddle.jit.not_to_static
def sine_embedding(coords, num_pos_feats=128, temperature=10000.0, scale=2 * math.pi):
    """Sine encoding of each coordinate in [0, 1], with PositionEmbeddingSine's frequencies: a point (y, x) gets
    the code of the feature-map pixel at that place.

    coords [..., K] -> [..., K * num_pos_feats] (one block per coordinate, sin/cos interleaved).
    """
    dim_t = _inverse_frequencies(num_pos_feats, temperature).astype(coords.dtype)
    pos = coords[..., None] * scale / dim_t  # [..., K, F]
    return paddle.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), axis=-1).flatten(len(coords.shape) - 1)


@paddle.jit.not_to_static
def box_sine_embedding(boxes, num_pos_feats=128, temperature=10000.0, scale=2 * math.pi):
    """Sine encoding of each coordinate of unnormalized (logit-space) boxes, as in two-stage query selection.

    boxes [B, N, 4] logits of cxcywh -> [B, N, 4 * num_pos_feats] (cx, cy, w, h blocks, sin/cos interleaved).
    """
    return sine_embedding(paddle.nn.functional.sigmoid(boxes), num_pos_feats, temperature, scale)


ANCHOR_PE_TEMPERATURE = 10000.0  # DAB-DETR's anchor codes (gen_sineembed_for_position), not configurable


def anchor_code(anchor, d_model):
    """PE of anchor boxes. anchor [..., 4] (x, y, w, h) in [0, 1] -> [..., 2 * d_model]: (y, x, w, h) blocks of
    d_model / 2 sin/cos-interleaved features, the (y, x) half laid out as PositionEmbeddingSine's pixel codes."""
    coords = paddle.concat([anchor[..., 1:2], anchor[..., 0:1], anchor[..., 2:]], -1)
    return sine_embedding(coords, d_model // 2, ANCHOR_PE_TEMPERATURE)
