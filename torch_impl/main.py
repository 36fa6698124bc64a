"""`train.sh --framework torch` and `test.sh --framework torch`: set-up, then the loop of common/loop.py.

Distributed: `torchrun --nproc_per_node N -m common.launch train --framework torch -c CONFIG` (gloo on CPU,
nccl on GPU); batch_size is per process.
"""
import logging
import os
import random

import numpy as np
import torch

from common.checkpoint import resolve_resume
from common.data.build import build_train_loader, build_val_loader
from common.errors import UserError
from common.evaluation.evaluator import DetectionEvaluator
from common.loop import TrainState, evaluate, finish, fit
from common.run import prepare_run
from torch_impl import distributed as D
from torch_impl.checkpoint import SUFFIX, is_valid_checkpoint, load_checkpoint, load_weights
from torch_impl.engine import Trainer
from torch_impl.models.build import build_model
from torch_impl.optim import build_optimizer, build_scheduler

logger = logging.getLogger("torch_impl")


def select_device(name: str) -> torch.device:
    if name in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={name}, but this torch build sees no GPU; use -o device=cpu")
        return torch.device("cuda", D.local_device_index())
    if name == "auto" and torch.cuda.is_available():
        return torch.device("cuda", D.local_device_index())
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(args) -> None:
    cfg = prepare_run(args.config, args.opt, splits=("train", "val"), rank=int(os.environ.get("RANK", "0")),
                      framework="torch")
    device = select_device(cfg.device)
    D.init_distributed(device)
    rank, world = D.get_rank(), D.get_world_size()
    seed_everything(cfg.train.seed)  # same init on every rank; DDP also broadcasts rank 0's weights

    train_ds, train_loader = build_train_loader(cfg, rank, world)
    val_ds, val_loader = build_val_loader(cfg, rank, world)
    model, criterion, postprocessor = build_model(cfg)
    model.to(device)
    criterion.to(device)
    if args.tune:
        load_weights(model, args.tune)
        logger.info("fine-tuning from %s", args.tune)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)
    state = TrainState()
    resume = resolve_resume(args.resume, cfg.output_dir, SUFFIX, is_valid_checkpoint)
    if resume:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["lr_scheduler"])
        state = TrainState(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["iteration"])
        torch.set_rng_state(ckpt["rng"])
        logger.info("resumed from %s (epoch %d, iteration %d)", resume, state.epoch, state.iteration)
    elif args.resume == "auto":
        logger.info("--resume auto: no checkpoint in %s, starting fresh", cfg.output_dir)

    logger.info("model: %s parameters, %s trainable; %d training images, %d validation images; device %s, "
                "%d process(es)", f"{sum(p.numel() for p in model.parameters()):,}",
                f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,}", len(train_ds), len(val_ds),
                device, world)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp and device.type == "cuda" else None
    trainer = Trainer(model, net, criterion, postprocessor, optimizer, scheduler, device, cfg.train, scaler,
                      meta={"config": os.path.basename(cfg._config_file)})
    fit(trainer, cfg, state, train_loader, lambda: evaluate(trainer, val_loader, DetectionEvaluator(val_ds, cfg.eval),
                                                            cfg.output_dir), SUFFIX, "torch")
    D.cleanup()


def test(args) -> None:
    cfg = prepare_run(args.config, args.opt, splits=("val",), rank=int(os.environ.get("RANK", "0")),
                      framework="torch")
    device = select_device(cfg.device)
    D.init_distributed(device)
    val_ds, val_loader = build_val_loader(cfg, D.get_rank(), D.get_world_size())
    model, _, postprocessor = build_model(cfg)
    load_weights(model, args.resume)
    model.to(device)
    trainer = Trainer(model, model, None, postprocessor, None, None, device)
    result = evaluate(trainer, val_loader, DetectionEvaluator(val_ds, cfg.eval), cfg.output_dir, draw=args.draw)
    if D.get_rank() == 0:
        finish(cfg.output_dir, result, "torch", os.path.abspath(args.resume))
    D.cleanup()
