"""A small BoxRPB / GlobalCrossAttention case and its direct numpy references (float64, loops, no decomposition),
shared by tests/torch_impl/test_torch_box_rpb.py, tests/paddle_impl/test_paddle_box_rpb.py and
tests/test_box_rpb_parity.py. Weights are given in torch's layout (Linear weight [out, in])."""
import math

import numpy as np

D, HEADS, HIDDEN, STRIDE = 16, 4, 8, 4
B, Q, H, W = 2, 5, 3, 6  # H != W and asymmetric boxes, so that swapping x and y shows


def inputs(seed=0):
    """{query [B, Q, D], key, value [B, H W, D], boxes [B, Q, 4] pixels, mask bool [B, H W]} float64 numpy.

    The image is W STRIDE x H STRIDE = 24 x 12 px; boxes reach outside it (offsets of both signs and edges
    beyond the map). Image 1 is padded: its last row and last two columns are True (padded) in `mask`."""
    rng = np.random.default_rng(seed)
    corner = rng.uniform(-6.0, 22.0, (B, Q, 2)) * [1.0, 0.5]
    size = rng.uniform(1.0, 14.0, (B, Q, 2)) * [1.0, 0.6]
    mask = np.zeros((B, H, W), dtype=bool)
    mask[1, -1:, :] = True
    mask[1, :, -2:] = True
    return {"query": rng.normal(size=(B, Q, D)), "key": rng.normal(size=(B, H * W, D)),
            "value": rng.normal(size=(B, H * W, D)), "boxes": np.concatenate([corner, corner + size], -1),
            "mask": mask.reshape(B, H * W)}


def _linear(x, weights, name):
    y = x @ weights[f"{name}.weight"].T
    return y + weights[f"{name}.bias"] if f"{name}.bias" in weights else y


def _mlp(x, weights, name):
    """cpb_mlp1 / cpb_mlp2: [2] -> [n_heads]."""
    return _linear(np.maximum(_linear(x, weights, f"{name}.0"), 0.0), weights, f"{name}.2")


def _f(d, rpe_type):
    return d if rpe_type == "linear" else math.copysign(math.log2(abs(d) + 1.0), d) / math.log2(8.0)


def box_rpb_direct(weights, boxes, rpe_type="linear"):
    """bias [B, HEADS, Q, H W], one query and pixel at a time from the formula in BoxRPB's docstring."""
    out = np.zeros((B, HEADS, Q, H * W))
    for b in range(B):
        for q in range(Q):
            x1, y1, x2, y2 = boxes[b, q]
            for i in range(H):
                for j in range(W):
                    px, py = (j + 0.5) * STRIDE, (i + 0.5) * STRIDE
                    bx = _mlp(np.array([_f(x1 - px, rpe_type), _f(x2 - px, rpe_type)]), weights, "cpb_mlp1")
                    by = _mlp(np.array([_f(y1 - py, rpe_type), _f(y2 - py, rpe_type)]), weights, "cpb_mlp2")
                    out[b, :, q, i * W + j] = bx + by
    return out


def attention_direct(weights, query, key, value, boxes, mask=None, rpe_type="linear"):
    """GlobalCrossAttention [B, Q, D], per image, head and query: a softmax over the unpadded pixels only."""
    bias = box_rpb_direct(weights, boxes, rpe_type)
    q, k, v = _linear(query, weights, "q"), _linear(key, weights, "k"), _linear(value, weights, "v")
    d = D // HEADS
    out = np.zeros((B, Q, D))
    for b in range(B):
        keep = np.ones(H * W, dtype=bool) if mask is None else ~mask[b]
        for h in range(HEADS):
            cols = slice(h * d, (h + 1) * d)
            for n in range(Q):
                logits = k[b][keep][:, cols] @ q[b, n, cols] / math.sqrt(d) + bias[b, h, n][keep]
                p = np.exp(logits - logits.max())
                out[b, n, cols] = (p / p.sum()) @ v[b][keep][:, cols]
    return _linear(out, weights, "proj")


def release_names():
    """The release's GlobalCrossAttention state dict (models/global_rpe_decomp_decoder.py), in order, with the
    shapes (torch layout) of this case."""
    names = []
    for mlp in ("cpb_mlp1", "cpb_mlp2"):
        names += [(f"{mlp}.0.weight", (HIDDEN, 2)), (f"{mlp}.0.bias", (HIDDEN,)), (f"{mlp}.2.weight", (HEADS, HIDDEN))]
    for proj in ("q", "k", "v", "proj"):
        names += [(f"{proj}.weight", (D, D)), (f"{proj}.bias", (D,))]
    return names
