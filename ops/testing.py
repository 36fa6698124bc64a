"""Random ms_deform_attn inputs as numpy arrays, for tests and benchmarks of both frameworks."""
import numpy as np


def level_start_index(spatial_shapes):
    """int64 [L, 2] (H, W) -> int64 [L], the first token of each level."""
    sizes = np.asarray(spatial_shapes, dtype=np.int64).prod(1)
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def random_inputs(rng, batch, heads, head_dim, queries, spatial_shapes, points, dtype="float32", margin=0.25):
    """(value [B, S, M, D], spatial_shapes int64 [L, 2], level_start_index int64 [L],
    sampling_locations [B, Q, M, L, P, 2] uniform in [-margin, 1 + margin], attention_weights [B, Q, M, L, P]
    softmaxed over L * P), in `dtype`.
    """
    shapes = np.asarray(spatial_shapes, dtype=np.int64).reshape(-1, 2)
    n_levels, tokens = len(shapes), int(shapes.prod(1).sum())
    value = rng.standard_normal((batch, tokens, heads, head_dim))
    locations = rng.uniform(-margin, 1 + margin, (batch, queries, heads, n_levels, points, 2))
    logits = rng.standard_normal((batch, queries, heads, n_levels * points))
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    weights = weights.reshape(batch, queries, heads, n_levels, points)
    return (value.astype(dtype), shapes, level_start_index(shapes), locations.astype(dtype),
            weights.astype(dtype))


def encoder_shapes(height=800, width=1333, strides=(8, 16, 32, 64)):
    """[L, 2] feature map sizes of a ResNet backbone at `strides` for a height x width input."""
    return np.array([[-(-height // s), -(-width // s)] for s in strides], dtype=np.int64)
