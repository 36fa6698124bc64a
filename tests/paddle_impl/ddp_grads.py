"""Loss and gradients of one training step of a tiny DAC-DETR on a fixed global batch of 4 images, computed by
2 processes of `python -m paddle.distributed.launch` (each taking images rank::world) or by one plain process;
written to `--out` (.npz, from rank 0).

Used by test_paddle_distributed.py; the case (config overrides, batch) is tests/distributed_case.py, shared with
tests/torch_impl/ddp_grads.py.
"""
import argparse
import os

import numpy as np
import paddle

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(out):
    from common.config import load_config
    from paddle_impl import distributed as D
    from paddle_impl.engine import compute_loss
    from paddle_impl.models.build import build_model
    from tests.distributed_case import OVERRIDES, global_batch

    paddle.set_device("cpu")
    D.init_distributed()
    rank, world = D.get_rank(), D.get_world_size()
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yml"), OVERRIDES)
    paddle.seed(0)
    model, criterion, _ = build_model(cfg)
    net = model if world == 1 else paddle.DataParallel(model, find_unused_parameters=True)
    batch = global_batch()
    mine = {"images": batch["images"][rank::world], "masks": batch["masks"][rank::world],
            "targets": batch["targets"][rank::world]}
    net.train()
    loss, _ = compute_loss(net, criterion, mine, seed=0, iteration=0)
    loss.backward()
    mean_loss = D.all_reduce_mean(loss.detach())
    if rank == 0:
        grads = {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}
        np.savez(out, loss=mean_loss.numpy(), **{"grad/" + k: v for k, v in grads.items()})
    D.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    run(parser.parse_args().out)
