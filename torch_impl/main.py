"""`train.sh --framework torch` and `test.sh --framework torch`: set-up, epochs, checkpoints, evaluation.

Distributed: `torchrun --nproc_per_node N -m common.launch train --framework torch -c CONFIG` (gloo on CPU,
nccl on GPU); batch_size is per process.
"""
import logging
import os
import random

import numpy as np
import torch

from common.checkpoint import BEST, LAST, resolve_resume
from common.data.build import build_dataset, build_loader
from common.data.subset import Subset
from common.errors import UserError
from common.evaluation.evaluator import DetectionEvaluator, report, write_eval_json
from common.log import MetricsWriter
from common.run import prepare_run
from torch_impl import distributed as D
from torch_impl.checkpoint import SUFFIX, is_valid_checkpoint, load_checkpoint, load_weights, save_checkpoint
from torch_impl.engine import TrainState, evaluate, train_one_epoch
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


def build_val(cfg, rank, world_size):
    val_ds = Subset(build_dataset(cfg.data, "val", train=False), cfg.eval.max_images)
    loader = build_loader(cfg.data, val_ds, cfg.eval.batch_size, train=False, seed=cfg.train.seed,
                          rank=rank, world_size=world_size)
    return val_ds, loader


def run_eval(model, postprocessor, cfg, val_ds, val_loader, device):
    evaluator = DetectionEvaluator(val_ds, cfg.eval)
    return evaluate(model, postprocessor, val_loader, evaluator, device, output_dir=cfg.output_dir)


def train(args) -> None:
    rank = int(os.environ.get("RANK", "0"))
    cfg = prepare_run(args.config, args.opt, splits=("train", "val"), rank=rank)
    device = select_device(cfg.device)
    D.init_distributed(device)
    rank, world = D.get_rank(), D.get_world_size()
    seed_everything(cfg.train.seed)  # same init on every rank; DDP also broadcasts rank 0's weights

    train_ds = build_dataset(cfg.data, "train", train=True)
    train_loader = build_loader(cfg.data, train_ds, cfg.train.batch_size, train=True, seed=cfg.train.seed,
                                rank=rank, world_size=world)
    val_ds, val_loader = build_val(cfg, rank, world)
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

    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %s parameters, %d trainable; %d training images, %d validation images; device %s, "
                "%d process(es)", f"{n_params:,}", sum(p.numel() for p in model.parameters() if p.requires_grad),
                len(train_ds), len(val_ds), device, world)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True)
    scaler = torch.amp.GradScaler("cuda") if cfg.train.amp and device.type == "cuda" else None
    metrics = MetricsWriter(cfg.output_dir, rank)
    last_path = os.path.join(cfg.output_dir, LAST + SUFFIX)
    best_ap, result = -1.0, None
    meta = {"config": os.path.basename(cfg._config_file)}

    def checkpoint(path):
        if rank == 0:
            save_checkpoint(path, model, optimizer, scheduler, state.epoch, state.step_in_epoch, state.iteration, meta)

    while state.epoch < cfg.train.epochs:
        train_loader.set_epoch(state.epoch, start_batch=state.step_in_epoch)
        stopped = train_one_epoch(net, criterion, train_loader, optimizer, device, state, cfg.train, metrics, scaler)
        if not stopped or state.step_in_epoch >= len(train_loader):
            scheduler.step()
            state.epoch += 1
            state.step_in_epoch = 0
        if stopped or state.epoch % max(cfg.train.checkpoint_interval, 1) == 0 or state.epoch == cfg.train.epochs:
            checkpoint(last_path)
        last = stopped or state.epoch == cfg.train.epochs
        if last or (cfg.train.eval_interval and state.epoch % cfg.train.eval_interval == 0 and state.step_in_epoch == 0):
            result = run_eval(model, postprocessor, cfg, val_ds, val_loader, device)
            if rank == 0:
                metrics.write(kind="eval", epoch=state.epoch, iteration=state.iteration, **_numbers(result))
                if result["bbox_AP"] > best_ap:
                    best_ap = result["bbox_AP"]
                    checkpoint(os.path.join(cfg.output_dir, BEST + SUFFIX))
        if stopped:
            logger.info("stopped at train.max_iters=%d", cfg.train.max_iters)
            break
    if rank == 0 and result is not None:
        write_eval_json(cfg.output_dir, _numbers(result), epoch=state.epoch, iteration=state.iteration,
                        checkpoint=last_path, framework="torch")
        print(report(result), flush=True)
        logger.info("wrote %s", os.path.join(cfg.output_dir, "eval.json"))
    D.cleanup()


def test(args) -> None:
    rank = int(os.environ.get("RANK", "0"))
    cfg = prepare_run(args.config, args.opt, splits=("val",), rank=rank)
    device = select_device(cfg.device)
    D.init_distributed(device)
    val_ds, val_loader = build_val(cfg, D.get_rank(), D.get_world_size())
    model, _, postprocessor = build_model(cfg)
    load_weights(model, args.resume)
    model.to(device)
    result = run_eval(model, postprocessor, cfg, val_ds, val_loader, device)
    if D.get_rank() == 0:
        write_eval_json(cfg.output_dir, _numbers(result), checkpoint=os.path.abspath(args.resume), framework="torch")
        print(report(result), flush=True)
    D.cleanup()


def _numbers(metrics):
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}
