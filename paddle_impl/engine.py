"""The Paddle side of the training and evaluation loops in common/loop.py: one step, one prediction, a checkpoint."""
from typing import Dict

import numpy as np
import paddle

from common.loop import TrainState, step_rngs
from paddle_impl import distributed as D
from paddle_impl.checkpoint import save_checkpoint
from paddle_impl.models.build import targets_to_tensors
from paddle_impl.optim import clip_grad_norm


def to_device(batch: Dict):
    """numpy batch -> (images [B,3,H,W], masks [B,H,W] bool, targets as tensors) on the current device."""
    return paddle.to_tensor(batch["images"]), paddle.to_tensor(batch["masks"]), targets_to_tensors(batch["targets"])


def compute_loss(model, criterion, batch, seed: int, iteration: int, amp: bool = False):
    """Forward + criterion of one numpy batch -> (total loss, {term: weighted loss}).

    The box-count normalizer is averaged over ranks, so with DataParallel's gradient averaging N processes of
    batch b give the gradients of one process with batch N * b (tests/paddle_impl/test_paddle_distributed.py).
    """
    images, masks, targets = to_device(batch)
    dn_rng, loss_rng = step_rngs(seed, D.get_rank(), iteration)
    with paddle.amp.auto_cast(enable=amp):
        outputs = model(images, masks, targets, dn_rng=dn_rng)
    num_boxes = sum(len(t["labels"]) for t in batch["targets"])
    num_boxes = max(D.all_reduce_mean(paddle.to_tensor(float(num_boxes))).item(), 1.0)
    losses = criterion(outputs, targets, num_boxes, rng=loss_rng)
    return paddle.add_n(list(losses.values())), losses


class Trainer:
    """common.loop.Trainer for Paddle. `net` is the model as trained (DataParallel-wrapped when distributed),
    `model` the bare one (saved, evaluated); `scaler` a GradScaler when AMP is on (GPU only)."""

    def __init__(self, model, net, criterion, postprocessor, optimizer, scheduler, train_cfg=None, scaler=None,
                 meta=None):
        self.model, self.net, self.criterion, self.postprocessor = model, net, criterion, postprocessor
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_cfg, self.scaler, self.meta = train_cfg, scaler, meta
        self.rank = D.get_rank()
        self.params = [p for p in model.parameters() if not p.stop_gradient]

    def train_step(self, batch, iteration):
        self.net.train()
        self.criterion.train()
        cfg, scaler = self.train_cfg, self.scaler
        loss, losses = compute_loss(self.net, self.criterion, batch, cfg.seed, iteration, amp=scaler is not None)
        # Every rank must agree to skip, or the others would wait for its gradients forever.
        finite = D.all_reduce_mean(paddle.isfinite(loss).astype("float32")).item() == 1.0
        terms = {k: v.item() for k, v in losses.items()}
        if not finite:
            self.optimizer.clear_grad()
            return None, terms
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.clip_max_norm > 0:
            clip_grad_norm(self.params, cfg.clip_max_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.clear_grad()
        return loss.item(), terms

    def lr(self):
        return self.optimizer.get_lr()

    def end_epoch(self):
        self.scheduler.step()

    def save(self, path, state: TrainState):
        save_checkpoint(path, self.model, self.optimizer, self.scheduler, state.epoch, state.step_in_epoch,
                        state.iteration, self.meta)

    @paddle.no_grad()
    def predict(self, batch):
        self.model.eval()
        images, masks, _ = to_device(batch)
        outputs = self.model(images, masks)
        orig_sizes = paddle.to_tensor(np.stack([t["orig_size"] for t in batch["targets"]]))
        return [{k: v.numpy() for k, v in d.items()} for d in self.postprocessor(outputs, orig_sizes)]

    def gather(self, obj):
        return D.all_gather_objects(obj)

    def any_rank(self, flag):
        if not D.is_dist():
            return bool(flag)
        return D.all_reduce_mean(paddle.to_tensor(float(flag))).item() > 0
