"""A small SAP-DETR side-directed Gaussian (SDG) case and its direct numpy reference (float64, loops over heads,
queries and pixels, the release's formulation: the offset is picked by a max over the two signed sides), shared by
tests/torch_impl/test_torch_side_gaussian.py, tests/paddle_impl/test_paddle_side_gaussian.py and
tests/test_side_gaussian_parity.py. Weights are given in torch's layout (Linear weight [out, in])."""
import numpy as np

D, HEADS = 16, 4
B, Q, H, W = 2, 5, 3, 6  # H != W, so that swapping x and y shows


def inputs(seed=0):
    """{tgt [B, Q, D], point [B, Q, 2] (x, y) cells, sides [B, Q, 4] (l, t, r, b) cells} float64 numpy; points
    inside and outside the map, sides of different lengths so that the chosen side shows."""
    rng = np.random.default_rng(seed)
    return {"tgt": rng.normal(size=(B, Q, D)), "point": rng.uniform(-1.0, 7.0, (B, Q, 2)) * [1.0, 0.5],
            "sides": rng.uniform(0.2, 4.0, (B, Q, 4))}


def gaussian_mapping(weights, tgt):
    """gaussian_proj: Linear + ReLU, Linear + ReLU, Linear. [B, Q, D] -> [B, Q, 4 HEADS]."""
    x = tgt
    for i in range(3):
        x = x @ weights[f"gaussian_proj.layers.{i}.weight"].T + weights[f"gaussian_proj.layers.{i}.bias"]
        x = np.maximum(x, 0.0) if i < 2 else x
    return x


def sdg_direct(weights, tgt, point, sides, shape=(H, W)):
    """bias [B, heads, Q, H W] of a map of `shape` (H, W), one head, query and pixel at a time, as the release
    computes it: the signed sides (-l, -t) and (r, b) times the offset, the larger of the two picked with its
    sign."""
    mapping = gaussian_mapping(weights, tgt)
    (b_size, q_size, _), heads, (h_size, w_size) = tgt.shape, mapping.shape[-1] // 4, shape
    out = np.zeros((b_size, heads, q_size, h_size * w_size))
    for b in range(b_size):
        for q in range(q_size):
            for h in range(heads):
                centre, scale = [], []
                for axis in range(2):
                    o = np.tanh(mapping[b, q, 2 * h + axis])
                    candidates = [-sides[b, q, axis] * o, sides[b, q, 2 + axis] * o]
                    k = int(np.argmax(candidates))
                    centre.append(point[b, q, axis] + candidates[k] * (2 * k - 1))
                    scale.append(mapping[b, q, 2 * heads + 2 * h + axis])
                for i in range(h_size):
                    for j in range(w_size):
                        dx, dy = j + 0.5 - centre[0], i + 0.5 - centre[1]
                        out[b, h, q, i * w_size + j] = -abs(dx * dx * scale[0] ** 2 + dy * dy * scale[1] ** 2) / 8.0
    return out
