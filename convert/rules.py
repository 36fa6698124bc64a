"""The one rule that maps a torch_impl state dict onto a paddle_impl one, and back.

The two trees register the same parameters under the same names, so conversion is a rule, not a map:

- BatchNorm statistics: torch `running_mean` / `running_var` <-> Paddle `_mean` / `_variance` (both BatchNorm2D
  and the frozen BatchNorm of the backbone use these names); torch's `num_batches_tracked` has no Paddle twin and
  is dropped (restored as 0 on the way back).
- Linear weights: torch stores [out, in], Paddle [in, out]; the weight of every `paddle.nn.Linear` is transposed.
  Everything else (convolutions, embeddings, norms, MultiheadAttention's packed `in_proj_weight`, which both
  trees keep in torch's [3D, D] layout) is copied as is.

Arrays are numpy here; the framework-specific wrappers live in convert/frameworks.py.
"""
from typing import Dict, Iterable, Set

import numpy as np

from common.resnet_weights import COUNTER_SUFFIX as TORCH_ONLY_SUFFIX  # BatchNorm's step counter: torch only

_BN = {"running_mean": "_mean", "running_var": "_variance"}
_BN_BACK = {v: k for k, v in _BN.items()}


class ConversionError(ValueError):
    """The two state dicts do not describe the same model; the message lists the keys to look at, and the
    complete lists are kept in `missing`, `unexpected` and `mismatched` ("name: shape vs shape")."""

    def __init__(self, message, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)


def _rename(name: str, table: Dict[str, str]) -> str:
    head, _, leaf = name.rpartition(".")
    leaf = table.get(leaf, leaf)
    return f"{head}.{leaf}" if head else leaf


def torch_name_to_paddle(name: str) -> str:
    return _rename(name, _BN)


def paddle_name_to_torch(name: str) -> str:
    return _rename(name, _BN_BACK)


def _check_keys(got: Iterable[str], expected: Dict[str, tuple], source: str) -> None:
    got = set(got)
    missing = sorted(set(expected) - got)
    unexpected = sorted(got - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing in {source} (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} not in the target model (e.g. {unexpected[:5]})")
        raise ConversionError("state dicts do not match: " + "; ".join(parts), missing, unexpected)


def torch_to_paddle(arrays: Dict[str, np.ndarray], target_shapes: Dict[str, tuple],
                    linear_weights: Set[str]) -> Dict[str, np.ndarray]:
    """torch state dict as numpy -> Paddle state dict as numpy.

    target_shapes: the Paddle model's {name: shape}; linear_weights: its names of Linear weights (transposed).
    Raises ConversionError listing missing, unexpected or shape-mismatched keys.
    """
    renamed = {torch_name_to_paddle(k): v for k, v in arrays.items() if not k.endswith(TORCH_ONLY_SUFFIX)}
    _check_keys(renamed, target_shapes, "the torch weights")
    out, bad = {}, []
    for name, value in renamed.items():
        value = np.ascontiguousarray(value.T) if name in linear_weights else value
        if tuple(value.shape) != tuple(target_shapes[name]):
            bad.append(f"{name}: {tuple(value.shape)} vs {tuple(target_shapes[name])}")
        out[name] = value
    if bad:
        raise ConversionError(f"{len(bad)} shape mismatches (converted vs Paddle model): {bad[:5]}", mismatched=bad)
    return out


def paddle_to_torch(arrays: Dict[str, np.ndarray], target_shapes: Dict[str, tuple],
                    linear_weights: Set[str]) -> Dict[str, np.ndarray]:
    """Paddle state dict as numpy -> torch state dict as numpy (the inverse of torch_to_paddle).

    target_shapes: the torch model's {name: shape} (num_batches_tracked entries are filled with 0);
    linear_weights: the Paddle names of Linear weights.
    """
    out = {paddle_name_to_torch(k): (np.ascontiguousarray(v.T) if k in linear_weights else v)
           for k, v in arrays.items()}
    for name in target_shapes:
        if name.endswith(TORCH_ONLY_SUFFIX) and name not in out:
            out[name] = np.zeros((), dtype=np.int64)
    _check_keys(out, target_shapes, "the Paddle weights")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(target_shapes[k])}" for k, v in out.items()
           if tuple(v.shape) != tuple(target_shapes[k])]
    if bad:
        raise ConversionError(f"{len(bad)} shape mismatches (converted vs torch model): {bad[:5]}", mismatched=bad)
    return out


def check_state(arrays: Dict[str, np.ndarray], target_shapes: Dict[str, tuple], source: str) -> None:
    """Same names and shapes as the model (no layout change); ConversionError listing what differs."""
    _check_keys(arrays, target_shapes, source)
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(target_shapes[k])}" for k, v in arrays.items()
           if tuple(v.shape) != tuple(target_shapes[k])]
    if bad:
        raise ConversionError(f"{len(bad)} shape mismatches ({source} vs the model): {bad[:5]}", mismatched=bad)
