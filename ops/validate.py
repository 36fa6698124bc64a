"""Framework-free input checks shared by the torch and paddle entry points."""
import numpy as np

FLOAT_DTYPES = ("float32", "float64")


def dtype_name(dtype):
    """'torch.float32' / 'paddle.float32' / 'float32' -> 'float32'."""
    return str(dtype).rsplit(".", 1)[-1]


def check_inputs(value_shape, shapes_shape, starts_shape, loc_shape, attn_shape, dtypes, index_dtypes,
                 spatial_shapes=None, level_start_index=None):
    """Raise ValueError naming the offending argument; return (B, S, M, D, Q, L, P).

    value_shape, shapes_shape, starts_shape, loc_shape, attn_shape: shapes of value (B, S, M, D),
        spatial_shapes (L, 2), level_start_index (L,), sampling_locations (B, Q, M, L, P, 2) and
        attention_weights (B, Q, M, L, P)
    dtypes            dtype names of (value, sampling_locations, attention_weights)
    index_dtypes      dtype names of (spatial_shapes, level_start_index)
    spatial_shapes, level_start_index: their values as int arrays, or None when not known yet (graph
        capture), which skips the checks against S
    """
    value_shape, loc_shape, attn_shape = tuple(value_shape), tuple(loc_shape), tuple(attn_shape)
    if len(value_shape) != 4:
        raise ValueError(f"value must be [B, S, heads, head_dim], got shape {list(value_shape)}")
    b, s, m, d = value_shape
    if len(loc_shape) != 6 or loc_shape[-1] != 2:
        raise ValueError(f"sampling_locations must be [B, Q, heads, L, P, 2], got shape {list(loc_shape)}")
    if len(attn_shape) != 5:
        raise ValueError(f"attention_weights must be [B, Q, heads, L, P], got shape {list(attn_shape)}")
    q, l, p = loc_shape[1], loc_shape[3], loc_shape[4]
    if loc_shape[0] != b or loc_shape[2] != m:
        raise ValueError(f"sampling_locations shape {list(loc_shape)} does not match value shape "
                         f"{list(value_shape)} in batch or heads (dims 0 and 2)")
    if attn_shape != loc_shape[:5]:
        raise ValueError(f"attention_weights shape {list(attn_shape)} must equal sampling_locations "
                         f"shape without its last dim, {list(loc_shape[:5])}")
    names = ("value", "sampling_locations", "attention_weights")
    for name, dt in zip(names, dtypes):
        if dt not in FLOAT_DTYPES:
            raise ValueError(f"{name} must be float32 or float64, got {dt}")
    if len(set(dtypes)) != 1:
        raise ValueError("value, sampling_locations and attention_weights must share one dtype, got "
                         + ", ".join(f"{n}={dt}" for n, dt in zip(names, dtypes)))
    for name, dt in zip(("spatial_shapes", "level_start_index"), index_dtypes):
        if dt != "int64":
            raise ValueError(f"{name} must be int64, got {dt}")
    if tuple(shapes_shape) != (l, 2):
        raise ValueError(f"spatial_shapes must be [L, 2] with L={l} levels (from sampling_locations), "
                         f"got shape {list(shapes_shape)}")
    if tuple(starts_shape) != (l,):
        raise ValueError(f"level_start_index must be [L] with L={l}, got shape {list(starts_shape)}")
    if spatial_shapes is None or level_start_index is None:
        return b, s, m, d, q, l, p
    shapes, starts = np.asarray(spatial_shapes), np.asarray(level_start_index)
    if (shapes <= 0).any():
        raise ValueError(f"spatial_shapes must be positive, got {shapes.tolist()}")
    sizes = shapes[:, 0] * shapes[:, 1]
    if int(sizes.sum()) != s:
        raise ValueError(f"sum of H*W over spatial_shapes {shapes.tolist()} is {int(sizes.sum())}, "
                         f"but value has S={s} tokens")
    expected = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    if not np.array_equal(starts, expected):
        raise ValueError(f"level_start_index {starts.tolist()} must be the running sum of H*W, "
                         f"{expected.tolist()}")
    return b, s, m, d, q, l, p


def as_int_list(index):
    """int tensor of either framework, numpy array, or nested sequence of ints -> nested list of ints.

    Sequence elements are kept as they are: during export they are the graph's symbolic sizes (torch SymInt,
    Paddle Value), which int() would freeze to the traced value or reject."""
    if hasattr(index, "tolist"):
        return index.tolist()
    return [list(row) if isinstance(row, (list, tuple)) else row for row in index]
