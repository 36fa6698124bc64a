"""Process-group set-up for torchrun (gloo on CPU, nccl on GPU) and the few collectives the engine needs.

Single-process runs need nothing: every helper here degrades to the identity when no group is initialized.
Multi-node: `torchrun --nnodes N --node_rank R --master_addr HOST --master_port P --nproc_per_node G ...`.
"""
import datetime
import os
from typing import Any, List

import torch
import torch.distributed as dist

TIMEOUT = datetime.timedelta(minutes=30)


def init_distributed(device: torch.device) -> None:
    """Joins the process group when launched by torchrun (RANK/WORLD_SIZE set)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def local_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
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
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()
