"""Process-group set-up for `python -m paddle.distributed.launch` (gloo on CPU, NCCL on GPU) and the few
collectives the engine needs.

Single-process runs need nothing: every helper here degrades to the identity when no group is initialized.
Multi-node: `python -m paddle.distributed.launch --nnodes N --master HOST:PORT --nproc_per_node G ...`
(run the same command on every node).
"""
import os
from typing import Any, List

import paddle
import paddle.distributed as dist

_initialized = False


def launched_world_size() -> int:
    """The number of processes paddle.distributed.launch started (1 when run directly)."""
    return int(os.environ.get("PADDLE_TRAINERS_NUM", "1"))


def init_distributed() -> None:
    """Joins the process group when launched by paddle.distributed.launch with more than one process."""
    global _initialized
    if launched_world_size() <= 1 or _initialized:
        return
    dist.init_parallel_env()
    _initialized = True


def is_dist() -> bool:
    return _initialized


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_device_index() -> int:
    return int(os.environ.get("PADDLE_LOCAL_DEVICE_IDS", os.environ.get("FLAGS_selected_gpus", "0")).split(",")[0])


def all_reduce_mean(value: paddle.Tensor) -> paddle.Tensor:
    """The mean of `value` over ranks (a new tensor)."""
    if not is_dist():
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / get_world_size()


def all_gather_objects(obj: Any) -> List[Any]:
    """A list of every rank's `obj` (picklable), in rank order."""
    if not is_dist():
        return [obj]
    out: List[Any] = []
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    global _initialized
    if is_dist():
        dist.destroy_process_group()
        _initialized = False
