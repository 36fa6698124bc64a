"""Weight files as numpy state dicts: torch `.pth`, Paddle `.pdparams`, and the neutral `.safetensors`.

Every reader returns `{name: numpy array}` in the layout of the file's framework (Paddle files: Paddle names and
[in, out] Linear weights); conversion between layouts is convert/rules.py's job. Writers are atomic
(common/checkpoint.atomic_save). What is read, and what is not:

- torch: a checkpoint of this project ({"model": ..., training entries}), an official release checkpoint
  ({"model", "optimizer", ..., "args": argparse.Namespace}), a plain state dict, or {"state_dict": ...}. Files
  are read with `weights_only=True`; the Namespace of release checkpoints is allowed explicitly (it only holds
  the training arguments), anything else that needs unpickling arbitrary objects is refused unless the user
  passes `trust_pickle=True` (`--trust-pickle`). Only the weights are kept: optimizer, scheduler and RNG state
  are never converted.
- Paddle: `X.pdparams` (a plain state dict); the `X.pdopt` training state next to it is not read.
- safetensors: the neutral format, always torch names and layout (see NEUTRAL_LAYOUT), so that either framework
  reads it; its metadata says where it came from.
"""
import argparse
import os
from typing import Dict, Optional, Tuple

import numpy as np

from common.checkpoint import atomic_save
from common.errors import UserError

TORCH_SUFFIXES = (".pth", ".pt")
PADDLE_SUFFIX = ".pdparams"
SAFETENSORS_SUFFIX = ".safetensors"
NEUTRAL_LAYOUT = "torch"  # safetensors files hold torch names and [out, in] Linear weights


def kind_of(path: str) -> str:
    """'torch', 'paddle' or 'safetensors' from the file name; UserError for anything else."""
    if path.endswith(TORCH_SUFFIXES):
        return "torch"
    if path.endswith(PADDLE_SUFFIX):
        return "paddle"
    if path.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    raise UserError(f"{path}: unknown weight file type; use a name ending in .pth / .pt (torch), .pdparams "
                    "(Paddle) or .safetensors (neutral)")


def _exists(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"weight file not found: {path}")


def _first_line(e: Exception) -> str:
    return f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}"


def read_torch(path: str, trust_pickle: bool = False) -> Tuple[Dict[str, np.ndarray], Dict]:
    """-> (state dict as numpy, the other entries of the file, tensors dropped). See the module docstring."""
    import torch

    _exists(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        hint = "" if trust_pickle else (" (if the file holds other Python objects and you trust it, pass "
                                        "--trust-pickle)")
        raise UserError(f"cannot read {path}: {_first_line(e)}{hint}") from None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        state, extra = obj["model"], {k: v for k, v in obj.items() if k != "model"}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        state, extra = obj["state_dict"], {k: v for k, v in obj.items() if k != "state_dict"}
    elif isinstance(obj, dict):
        state, extra = obj, {}
    else:
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict or a checkpoint dict")
    arrays = {}
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise UserError(f"{path}: entry {k!r} of the state dict is a {type(v).__name__}, not a tensor")
        arrays[k] = v.detach().cpu().numpy()
    if not arrays:
        raise UserError(f"{path}: the state dict is empty")
    return arrays, {k: v for k, v in extra.items() if not isinstance(v, torch.Tensor)}


def write_torch(path: str, arrays: Dict[str, np.ndarray], meta: Optional[Dict] = None) -> None:
    """A weights-only checkpoint of this project: {"model": state dict, "meta": {...}} (torch_impl reads it with
    `-t` or test.sh; there is no optimizer state to resume from)."""
    import torch

    state = {"model": {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
             "meta": dict(meta or {}, framework="torch")}
    atomic_save(lambda tmp: torch.save(state, tmp), path, keep_previous=False)


def read_paddle(path: str) -> Dict[str, np.ndarray]:
    """The state dict of a .pdparams file as numpy."""
    import paddle

    _exists(path)
    try:
        state = paddle.load(path, return_numpy=True)
    except Exception as e:  # paddle raises several types for truncated / foreign files
        raise UserError(f"cannot read {path}: {_first_line(e)}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError(f"{path} is not a Paddle state dict (.pdparams)")
    return state


def write_paddle(path: str, arrays: Dict[str, np.ndarray]) -> None:
    """A .pdparams state dict (paddle_impl reads it with `-t` or test.sh). No .pdopt is written."""
    import paddle

    state = {k: paddle.to_tensor(np.array(v)) for k, v in arrays.items()}
    atomic_save(lambda tmp: paddle.save(state, tmp), path, keep_previous=False)


def read_safetensors(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """-> (state dict in the neutral layout, the file's metadata)."""
    from safetensors import safe_open

    _exists(path)
    try:
        with safe_open(path, framework="np") as f:
            meta = dict(f.metadata() or {})
            arrays = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for foreign or truncated files
        raise UserError(f"cannot read {path}: {_first_line(e)}") from None
    layout = meta.get("layout", NEUTRAL_LAYOUT)
    if layout != NEUTRAL_LAYOUT:
        raise UserError(f"{path}: layout {layout!r} in its metadata; this project reads {NEUTRAL_LAYOUT!r} only")
    return arrays, meta


def write_safetensors(path: str, arrays: Dict[str, np.ndarray], meta: Dict[str, str]) -> None:
    """A safetensors file in the neutral layout; `meta` values are strings (safetensors' rule)."""
    from safetensors.numpy import save_file

    meta = dict(meta, layout=NEUTRAL_LAYOUT)
    atomic_save(lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp,
                                      metadata={k: str(v) for k, v in meta.items()}), path, keep_previous=False)
