"""Loss and gradients of one training step of a tiny DAC-DETR on a fixed global batch of 4 images, computed by
`--world` gloo processes (each taking images rank::world) or by one plain process; written to `--out`.

Used by test_torch_distributed.py; the case (config overrides, batch) is tests/distributed_case.py.
"""
import argparse
import os
import socket

import torch
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(rank, world, port, out):
    from common.config import load_config
    from tests.distributed_case import OVERRIDES, global_batch
    from torch_impl import distributed as D
    from torch_impl.engine import compute_loss
    from torch_impl.models.build import build_model

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        D.init_distributed(torch.device("cpu"))
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yml"), OVERRIDES)
    torch.manual_seed(0)
    model, criterion, _ = build_model(cfg)
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    batch = global_batch()
    mine = {"images": batch["images"][rank::world], "masks": batch["masks"][rank::world],
            "targets": batch["targets"][rank::world]}
    net.train()
    loss, _ = compute_loss(net, criterion, mine, torch.device("cpu"), seed=0, iteration=0)
    loss.backward()
    mean_loss = D.all_reduce_mean(loss.detach())
    if rank == 0:
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        torch.save({"loss": mean_loss, "grads": grads}, out)
    D.cleanup()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.world == 1:
        run(0, 1, 0, args.out)
    else:
        mp.spawn(run, args=(args.world, free_port(), args.out), nprocs=args.world, join=True)
