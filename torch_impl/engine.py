"""One training epoch and one evaluation pass (PyTorch). Plain loops; the bookkeeping is in main.py."""
import logging
import math
from dataclasses import dataclass
from typing import Dict

import numpy as np
import torch

from common.evaluation.evaluator import DetectionEvaluator
from common.log import MetricsWriter, progress
from common.meters import Meters, log_keys
from torch_impl import distributed as D
from torch_impl.models.build import targets_to_tensors

logger = logging.getLogger("torch_impl")


@dataclass
class TrainState:
    """Where training is: the epoch in progress, batches of it done, global iteration, skipped steps."""
    epoch: int = 0
    step_in_epoch: int = 0
    iteration: int = 0
    skipped_steps: int = 0


def to_device(batch: Dict, device: torch.device):
    """numpy batch -> (images [B,3,H,W], masks [B,H,W] bool, targets as tensors)."""
    images = torch.from_numpy(batch["images"]).to(device, non_blocking=True)
    masks = torch.from_numpy(batch["masks"]).to(device, non_blocking=True)
    return images, masks, targets_to_tensors(batch["targets"], device)


def compute_loss(model, criterion, batch, device, seed: int, iteration: int, amp: bool = False):
    """Forward + criterion of one numpy batch -> (total loss, {term: weighted loss}).

    The box-count normalizer is averaged over ranks, so with DDP's gradient averaging N processes of batch b
    give the gradients of one process with batch N * b (tests/torch_impl/test_torch_distributed.py).
    """
    images, masks, targets = to_device(batch, device)
    with torch.autocast(device_type=device.type, enabled=amp):
        outputs = model(images, masks, targets)
    num_boxes = sum(len(t["labels"]) for t in batch["targets"])
    num_boxes = D.all_reduce_mean(torch.tensor(float(num_boxes), device=device)).clamp(min=1.0).item()
    # One-to-many subsampling randomness tied to (seed, rank, iteration): a resumed run draws the same.
    rng = np.random.default_rng([seed, D.get_rank(), iteration])
    losses = criterion(outputs, targets, num_boxes, rng=rng)
    return sum(losses.values()), losses


def train_one_epoch(model, criterion, loader, optimizer, device, state: TrainState, train_cfg,
                    metrics: MetricsWriter, scaler=None) -> bool:
    """Trains until the loader ends or `train.max_iters` is reached; returns True when max_iters stopped it."""
    model.train()
    criterion.train()
    meters = Meters(window=train_cfg.log_interval)
    amp = scaler is not None
    rank = D.get_rank()
    bar = progress(loader, desc=f"epoch {state.epoch}", total=len(loader) - state.step_in_epoch, rank=rank)
    for batch in bar:
        loss, losses = compute_loss(model, criterion, batch, device, train_cfg.seed, state.iteration, amp)
        # Every rank must agree to skip, or the others would wait for its gradients forever.
        finite = D.all_reduce_mean(torch.isfinite(loss).float().detach()).item() == 1.0
        optimizer.zero_grad(set_to_none=True)
        if not finite:
            state.skipped_steps += 1
            logger.warning("iteration %d: non-finite loss, step skipped (%d so far)", state.iteration,
                           state.skipped_steps)
        else:
            if amp:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if train_cfg.clip_max_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg.clip_max_norm)
            if amp:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
        state.iteration += 1
        state.step_in_epoch += 1
        meters.update(loss=loss.item() if finite else math.nan,
                      **{k: v.item() for k, v in losses.items()})
        if state.iteration % train_cfg.log_interval == 0:
            lr = optimizer.param_groups[0]["lr"]
            logger.info("epoch %d iter %d  lr %.2e  %s", state.epoch, state.iteration, lr,
                        meters.format(log_keys(meters.smoothed())))
            bar.set_postfix(loss=f"{meters.smoothed()['loss']:.3f}")
            metrics.write(kind="train", epoch=state.epoch, iteration=state.iteration, lr=lr, **meters.smoothed())
        if train_cfg.max_iters and state.iteration >= train_cfg.max_iters:
            loader.close()  # stop this pass's workers now, not when the generator is collected
            return True
    return False


@torch.no_grad()
def evaluate(model, postprocessor, loader, evaluator: DetectionEvaluator, device, output_dir=None):
    """Runs the model over `loader`, gathers detections on rank 0; returns the COCO metrics there (None elsewhere)."""
    model.eval()
    rank = D.get_rank()
    for batch in progress(loader, desc="eval", rank=rank):
        images, masks, _ = to_device(batch, device)
        outputs = model(images, masks)
        orig_sizes = torch.from_numpy(np.stack([t["orig_size"] for t in batch["targets"]])).to(device)
        detections = postprocessor(outputs, orig_sizes)
        evaluator.add([t["image_id"] for t in batch["targets"]],
                      [{k: v.cpu().numpy() for k, v in d.items()} for d in detections])
    gathered = D.all_gather_objects(evaluator.per_image)
    if rank != 0:
        return None
    return evaluator.summarize(gathered, output_dir)
