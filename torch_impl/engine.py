"""The torch side of the training and evaluation loops in common/loop.py: one step, one prediction, a checkpoint."""
from typing import Dict

import numpy as np
import torch

from common.loop import TrainState, step_rngs
from torch_impl import distributed as D
from torch_impl.checkpoint import save_checkpoint
from torch_impl.models.build import targets_to_tensors


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
    dn_rng, loss_rng = step_rngs(seed, D.get_rank(), iteration)
    with torch.autocast(device_type=device.type, enabled=amp):
        outputs = model(images, masks, targets, dn_rng=dn_rng)
    num_boxes = sum(len(t["labels"]) for t in batch["targets"])
    num_boxes = D.all_reduce_mean(torch.tensor(float(num_boxes), device=device)).clamp(min=1.0).item()
    losses = criterion(outputs, targets, num_boxes, rng=loss_rng)
    return sum(losses.values()), losses


class Trainer:
    """common.loop.Trainer for torch. `net` is the model as trained (DDP-wrapped when distributed), `model` the
    bare one (saved, evaluated); `scaler` a GradScaler when AMP is on (CUDA only)."""

    def __init__(self, model, net, criterion, postprocessor, optimizer, scheduler, device, train_cfg=None,
                 scaler=None, meta=None):
        self.model, self.net, self.criterion, self.postprocessor = model, net, criterion, postprocessor
        self.optimizer, self.scheduler, self.device = optimizer, scheduler, device
        self.train_cfg, self.scaler, self.meta = train_cfg, scaler, meta
        self.rank = D.get_rank()

    def train_step(self, batch, iteration):
        self.net.train()
        self.criterion.train()
        cfg, scaler = self.train_cfg, self.scaler
        loss, losses = compute_loss(self.net, self.criterion, batch, self.device, cfg.seed, iteration,
                                    amp=scaler is not None)
        # Every rank must agree to skip, or the others would wait for its gradients forever.
        finite = D.all_reduce_mean(torch.isfinite(loss).float().detach()).item() == 1.0
        self.optimizer.zero_grad(set_to_none=True)
        terms = {k: v.item() for k, v in losses.items()}
        if not finite:
            return None, terms
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if cfg.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_max_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        return loss.item(), terms

    def lr(self):
        return self.optimizer.param_groups[0]["lr"]

    def end_epoch(self):
        self.scheduler.step()

    def save(self, path, state: TrainState):
        save_checkpoint(path, self.model, self.optimizer, self.scheduler, state.epoch, state.step_in_epoch,
                        state.iteration, self.meta)

    @torch.no_grad()
    def predict(self, batch):
        self.model.eval()
        images, masks, _ = to_device(batch, self.device)
        outputs = self.model(images, masks)
        orig_sizes = torch.from_numpy(np.stack([t["orig_size"] for t in batch["targets"]])).to(self.device)
        return [{k: v.cpu().numpy() for k, v in d.items()} for d in self.postprocessor(outputs, orig_sizes)]

    def gather(self, obj):
        return D.all_gather_objects(obj)

    def any_rank(self, flag):
        if not D.is_dist():
            return bool(flag)
        return D.all_reduce_mean(torch.tensor(float(flag), device=self.device)).item() > 0
