"""Torch checkpoints: tensors and plain types only (`torch.load(weights_only=True)` reads them), atomic writes.

A checkpoint is a dict: `model` (state dict), `optimizer`, `lr_scheduler`, `epoch` (the epoch in progress),
`step_in_epoch` (batches of it already done), `iteration` (global), `rng` (torch CPU generator state) and
`meta` (config name, framework). Fine-tuning (`-t`) reads only `model`.
"""
import logging
import os
import zipfile
from typing import Dict, Optional

import torch

from common.checkpoint import atomic_save, error_text
from common.errors import UserError

logger = logging.getLogger("torch_impl")

SUFFIX = ".pth"


def save_checkpoint(path: str, model: torch.nn.Module, optimizer=None, scheduler=None, epoch: int = 0,
                    step_in_epoch: int = 0, iteration: int = 0, meta: Optional[Dict] = None) -> None:
    state = {
        "model": model.state_dict(),
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "iteration": int(iteration),
        "rng": torch.get_rng_state(),
        "meta": dict(meta or {}, framework="torch"),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["lr_scheduler"] = scheduler.state_dict()
    atomic_save(lambda tmp: torch.save(state, tmp), path)


def check_crc(path: str) -> None:
    """UserError when a record of the zip file torch.save writes fails its stored CRC-32: torch.load does not
    check them, so a damaged tensor would load silently. Files in torch's older non-zip format have none."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserError(f"cannot read checkpoint {path}: {error_text(e)}") from None
    if bad is not None:
        raise UserError(f"checkpoint is corrupt: {path} (CRC-32 mismatch in its record {bad})")


def load_checkpoint(path: str) -> Dict:
    """The checkpoint dict; UserError naming the file when it is missing, truncated, corrupt or not a checkpoint."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    check_crc(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated / foreign files
        raise UserError(f"cannot read checkpoint {path}: {error_text(e)}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a checkpoint of this project (no 'model' entry)")
    return state


def is_valid_checkpoint(path: str) -> bool:
    try:
        load_checkpoint(path)
        return True
    except UserError:
        return False


def load_weights(model: torch.nn.Module, path: str, strict: bool = True) -> None:
    """Loads the `model` entry of a checkpoint into `model`; mismatches are a UserError listing the keys."""
    state = load_checkpoint(path)["model"]
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise UserError(f"{path} does not fit this model's config: {' '.join(str(e).split())[:400]}") from None
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} keys (e.g. {result.missing_keys[:3]})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} keys (e.g. {result.unexpected_keys[:3]})")
    if problems and strict:
        raise UserError(f"{path} does not fit this model's config: " + "; ".join(problems))
    for p in problems:
        logger.warning("%s: %s", path, p)
