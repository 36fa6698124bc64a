"""Loss and gradients of one training step of a tiny DAC-DETR on a fixed global batch of 4 images, computed by
`--world` gloo processes (each taking images rank::world) or by one plain process; written to `--out`.

Used by test_torch_distributed.py. Denoising is off and the one-to-many cap disabled because both draw
random numbers per batch, which would differ between one batch of 4 and two of 2 by construction.
"""
import argparse
import os
import socket

import numpy as np
import torch
import torch.multiprocessing as mp

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OVERRIDES = ["model.num_classes=3", "model.backbone.name=resnet18", "model.hidden_dim=32", "model.nheads=2",
             "model.enc_layers=1", "model.dec_layers=2", "model.dim_feedforward=64", "model.num_queries=20",
             "model.num_feature_levels=2", "model.dn.enabled=false", "model.dac.positive_fraction=1.0",
             "model.dac.sample_queries=null", "model.deform_attn_backend=reference", "device=cpu"]


def global_batch():
    """4 images of 96x96 (no padding) with 3, 1, 2 and 0 boxes: rank 0 of 2 gets 5 boxes, rank 1 gets 1 (one
    image without any), so a per-rank box normalizer would show."""
    rng = np.random.default_rng(0)
    targets = []
    for n in (3, 1, 2, 0):
        centres = rng.uniform(0.3, 0.7, (n, 2))
        sizes = rng.uniform(0.1, 0.4, (n, 2))
        targets.append({"labels": rng.integers(0, 3, n).astype(np.int64),
                        "boxes": np.concatenate([centres, sizes], 1).astype(np.float32)})
    images = rng.standard_normal((4, 3, 96, 96)).astype(np.float32)
    return {"images": images, "masks": np.zeros((4, 96, 96), dtype=bool), "targets": targets}


def run(rank, world, port, out):
    from common.config import load_config
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
