"""`train.sh --framework paddle` and `test.sh --framework paddle`: set-up, then the loop of common/loop.py.

Distributed: `PYTHONPATH=. python -m paddle.distributed.launch --nproc_per_node N common/launch.py train
--framework paddle -c CONFIG` (Paddle's launcher runs a script, not a module); batch_size is per process.
"""
import logging
import os
import random

import numpy as np
import paddle

from common.checkpoint import resolve_resume
from common.data.build import build_train_loader, build_val_loader
from common.errors import UserError
from common.evaluation.evaluator import DetectionEvaluator
from common.loop import TrainState, evaluate, finish, fit
from common.run import prepare_run
from paddle_impl import distributed as D, use_cpu_threads
from paddle_impl.checkpoint import SUFFIX, is_valid_checkpoint, load_checkpoint, load_weights
from paddle_impl.engine import Trainer
from paddle_impl.models.build import build_model
from paddle_impl.optim import build_optimizer, build_scheduler

logger = logging.getLogger("paddle_impl")


def select_device(name: str) -> str:
    """Sets Paddle's current device from the config's `device` and returns it ("cpu" or "gpu:N")."""
    has_gpu = paddle.is_compiled_with_cuda() and paddle.device.cuda.device_count() > 0
    if name in ("gpu", "cuda") and not has_gpu:
        raise UserError(f"device={name}, but this Paddle build sees no GPU; use -o device=cpu")
    device = f"gpu:{D.local_device_index()}" if name in ("gpu", "cuda") or (name == "auto" and has_gpu) else "cpu"
    paddle.set_device(device)
    if device == "cpu":
        use_cpu_threads()
        # transpose's strided views make the copies after them very slow on CPU (docs/paddle_vs_torch.md)
        paddle.set_flags({"FLAGS_use_stride_kernel": False})
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    paddle.seed(seed)


def train(args) -> None:
    cfg = prepare_run(args.config, args.opt, splits=("train", "val"),
                      rank=int(os.environ.get("PADDLE_TRAINER_ID", "0")), framework="paddle")
    device = select_device(cfg.device)
    D.init_distributed()
    rank, world = D.get_rank(), D.get_world_size()
    seed_everything(cfg.train.seed)  # same init on every rank; DataParallel also broadcasts rank 0's weights

    train_ds, train_loader = build_train_loader(cfg, rank, world)
    val_ds, val_loader = build_val_loader(cfg, rank, world)
    model, criterion, postprocessor = build_model(cfg)
    if args.tune:
        load_weights(model, args.tune)
        logger.info("fine-tuning from %s", args.tune)
    scheduler = build_scheduler(cfg.train)
    optimizer = build_optimizer(model, cfg.train, scheduler)
    state = TrainState()
    resume = resolve_resume(args.resume, cfg.output_dir, SUFFIX, is_valid_checkpoint)
    if resume:
        ckpt = load_checkpoint(resume)
        model.set_state_dict(ckpt["model"])
        optimizer.set_state_dict(ckpt["optimizer"])
        scheduler.set_state_dict(ckpt["lr_scheduler"])
        state = TrainState(ckpt["epoch"], ckpt["step_in_epoch"], ckpt["iteration"])
        paddle.set_rng_state(ckpt["rng"])
        logger.info("resumed from %s (epoch %d, iteration %d)", resume, state.epoch, state.iteration)
    elif args.resume == "auto":
        logger.info("--resume auto: no checkpoint in %s, starting fresh", cfg.output_dir)

    logger.info("model: %s parameters, %s trainable; %d training images, %d validation images; device %s, "
                "%d process(es)", f"{sum(p.numel().item() for p in model.parameters()):,}",
                f"{sum(p.numel().item() for p in model.parameters() if not p.stop_gradient):,}", len(train_ds),
                len(val_ds), device, world)
    net = paddle.DataParallel(model, find_unused_parameters=True) if world > 1 else model
    scaler = paddle.amp.GradScaler() if cfg.train.amp and device.startswith("gpu") else None
    trainer = Trainer(model, net, criterion, postprocessor, optimizer, scheduler, cfg.train, scaler,
                      meta={"config": os.path.basename(cfg._config_file)})
    fit(trainer, cfg, state, train_loader, lambda: evaluate(trainer, val_loader, DetectionEvaluator(val_ds, cfg.eval),
                                                            cfg.output_dir), SUFFIX, "paddle")
    D.cleanup()


def test(args) -> None:
    cfg = prepare_run(args.config, args.opt, splits=("val",), rank=int(os.environ.get("PADDLE_TRAINER_ID", "0")),
                      framework="paddle")
    select_device(cfg.device)
    D.init_distributed()
    val_ds, val_loader = build_val_loader(cfg, D.get_rank(), D.get_world_size())
    model, _, postprocessor = build_model(cfg)
    load_weights(model, args.resume)
    trainer = Trainer(model, model, None, postprocessor, None, None)
    result = evaluate(trainer, val_loader, DetectionEvaluator(val_ds, cfg.eval), cfg.output_dir, draw=args.draw)
    if D.get_rank() == 0:
        finish(cfg.output_dir, result, "paddle", os.path.abspath(args.resume))
    D.cleanup()
