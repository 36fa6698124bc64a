"""Paddle checkpoints: `NAME.pdparams` (the model's state dict, as Paddle tools expect) and `NAME.pdopt`
(optimizer, lr scheduler, position in training, RNG state, meta), written atomically together.

Both files are written to temp files and only then renamed over the old pair (common/checkpoint.atomic_files),
so a failed write (disk full) leaves the old pair as it was. The .pdopt records the CRC-32 of the .pdparams it
belongs to: a crash between the two renames leaves a pair that `is_valid_checkpoint` rejects, and
`--resume auto` falls back to the `.prev` pair. Fine-tuning (`-t`) and `test.sh` read only the .pdparams.
"""
import logging
import os
import zlib
from typing import Dict, Optional

import paddle

from common.checkpoint import atomic_files, error_text
from common.errors import UserError

logger = logging.getLogger("paddle_impl")

SUFFIX = ".pdparams"
OPT_SUFFIX = ".pdopt"


def opt_path(path: str) -> str:
    """The .pdopt companion of a .pdparams path (`x.pdparams.prev` -> `x.pdopt.prev`)."""
    head, sep, tail = path.rpartition(SUFFIX)
    if not sep:
        raise UserError(f"a Paddle checkpoint's name ends in {SUFFIX}, got {path}")
    return head + OPT_SUFFIX + tail


def _crc32(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(block, crc)
    return crc


def save_checkpoint(path: str, model: paddle.nn.Layer, optimizer=None, scheduler=None, epoch: int = 0,
                    step_in_epoch: int = 0, iteration: int = 0, meta: Optional[Dict] = None) -> None:
    state = {
        "epoch": int(epoch),
        "step_in_epoch": int(step_in_epoch),
        "iteration": int(iteration),
        "rng": paddle.get_rng_state(),
        "meta": dict(meta or {}, framework="paddle"),
    }
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        state["lr_scheduler"] = scheduler.state_dict()
    with atomic_files([path, opt_path(path)]) as (params_tmp, opt_tmp):
        paddle.save(model.state_dict(), params_tmp)
        state["params_crc32"] = _crc32(params_tmp)
        paddle.save(state, opt_tmp)


def _load(path: str):
    if not os.path.isfile(path):  # paddle.load says ValueError for a missing file
        raise UserError(f"checkpoint not found: {path}")
    try:
        return paddle.load(path)
    except Exception as e:  # paddle raises several types for truncated / foreign files
        raise UserError(f"cannot read checkpoint {path}: {error_text(e)}") from None


def load_params(path: str) -> Dict:
    """The model state dict of a .pdparams file; UserError naming the file when it is missing or unreadable."""
    state = _load(path)
    if not isinstance(state, dict) or not state or not all(isinstance(v, paddle.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a Paddle state dict (.pdparams)")
    return state


def load_checkpoint(path: str) -> Dict:
    """{"model": state dict, **the .pdopt entries} of a checkpoint pair; UserError when either file is missing,
    unreadable, or the .pdopt belongs to another .pdparams."""
    model = load_params(path)
    state = _load(opt_path(path))
    if not isinstance(state, dict) or "iteration" not in state:
        raise UserError(f"{opt_path(path)} is not a training state of this project")
    if state.get("params_crc32") != _crc32(path):
        raise UserError(f"{opt_path(path)} does not belong to {path} (CRC-32 mismatch: an interrupted save or a "
                        "damaged file)")
    return dict(state, model=model)


def is_valid_checkpoint(path: str) -> bool:
    try:
        load_checkpoint(path)
        return True
    except UserError:
        return False


def load_weights(model: paddle.nn.Layer, path: str, strict: bool = True) -> None:
    """Loads a .pdparams state dict into `model`; mismatches are a UserError listing the keys."""
    state = load_params(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {list(state[k].shape)} vs {list(v.shape)}" for k, v in own.items()
              if k in state and list(state[k].shape) != list(v.shape)]
    if shapes:
        raise UserError(f"{path} does not fit this model's config: {len(shapes)} shape mismatches (checkpoint vs "
                        f"model), e.g. {shapes[:3]}")
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys (e.g. {missing[:3]})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[:3]})")
    if problems and strict:
        raise UserError(f"{path} does not fit this model's config: " + "; ".join(problems))
    for p in problems:
        logger.warning("%s: %s", path, p)
    model.set_state_dict({k: v for k, v in state.items() if k in own})
