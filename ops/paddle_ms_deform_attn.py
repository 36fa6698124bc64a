"""Multi-scale deformable attention in PaddlePaddle: grid_sample reference and the C++/CUDA kernel."""
import paddle
import paddle.nn.functional as F

from ops.backend import LazyKernel
from ops.validate import as_int_list, check_inputs, dtype_name

_kernel = LazyKernel("paddle")


def _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Check shapes and dtypes; return (B, S, M, D, Q, L, P)."""
    for name, t in (("value", value), ("spatial_shapes", spatial_shapes),
                    ("level_start_index", level_start_index),
                    ("sampling_locations", sampling_locations), ("attention_weights", attention_weights)):
        if not isinstance(t, paddle.Tensor):
            raise ValueError(f"{name} must be a paddle.Tensor, got {type(t).__name__}")
    concrete = paddle.in_dynamic_mode()  # static graphs (export) have no values to read
    return check_inputs(
        value.shape, spatial_shapes.shape, level_start_index.shape, sampling_locations.shape,
        attention_weights.shape, [dtype_name(t.dtype) for t in (value, sampling_locations, attention_weights)],
        [dtype_name(t.dtype) for t in (spatial_shapes, level_start_index)],
        spatial_shapes.numpy() if concrete else None, level_start_index.numpy() if concrete else None)


def ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Pure grid_sample formulation (Deformable DETR); differentiable, exportable.

    value [B, S, M, D], spatial_shapes int64 [L, 2] (H, W), level_start_index int64 [L] (either may also be
    a list of Python ints, which export graphs keep as constants),
    sampling_locations [B, Q, M, L, P, 2] (x, y) in [0, 1], attention_weights [B, Q, M, L, P]
    -> [B, Q, M * D]
    """
    b, _, m, d = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    # grid_sample with align_corners=False maps -1 / +1 to the outer pixel edges, so loc in [0, 1] -> 2 loc - 1
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, ((h, w), start) in enumerate(zip(as_int_list(spatial_shapes), as_int_list(level_start_index))):
        # [B, H*W, M, D] -> [B*M, D, H, W]
        value_l = value[:, start:start + h * w].transpose([0, 2, 3, 1]).reshape([b * m, d, h, w])
        # [B, Q, M, P, 2] -> [B*M, Q, P, 2]
        grid_l = grids[:, :, :, lvl].transpose([0, 2, 1, 3, 4]).reshape([b * m, q, n_points, 2])
        sampled.append(F.grid_sample(value_l, grid_l, mode="bilinear", padding_mode="zeros",
                                     align_corners=False))  # [B*M, D, Q, P]
    weights = attention_weights.transpose([0, 2, 1, 3, 4]).reshape([b * m, 1, q, n_levels * n_points])
    out = (paddle.stack(sampled, axis=-2).flatten(-2) * weights).sum(-1)  # [B*M, D, Q]
    return out.reshape([b, m * d, q]).transpose([0, 2, 1])


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                   backend="auto"):
    """Multi-scale deformable attention; same shapes as ms_deform_attn_reference -> [B, Q, M * D].

    backend: "reference" (grid_sample), "kernel" (compiled op, RuntimeError if it cannot be built),
    "auto" (kernel when it builds, else reference after one warning on logger "ops").
    spatial_shapes and level_start_index as lists: the level sizes of a graph being captured for export
    (symbolic ints, see DeformableTransformer), which only the reference path can slice with.
    """
    if isinstance(spatial_shapes, list):
        if backend == "kernel":
            raise ValueError("ms_deform_attn: the kernel needs tensor spatial_shapes; export runs the reference "
                             "path (model.deform_attn_backend=reference)")
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    _validate(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    if _kernel.resolve(backend) == "reference":
        return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations,
                                        attention_weights)
    return _kernel.load().ms_deform_attn(value.contiguous(), spatial_shapes.contiguous(),
                                         level_start_index.contiguous(), sampling_locations.contiguous(),
                                         attention_weights.contiguous())
