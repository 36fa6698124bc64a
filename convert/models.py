"""The configs' models as conversion targets: the resolved config, and each tree's {name: shape} and Linear set.

The converter builds the model of the config in the framework(s) it needs (random init, never the pretrained
backbone file: the weights come from the file being converted) and checks the weights against it, so a file
only converts when it is exactly the config's model.
"""
import json
import os
import re
from typing import Dict, Iterable, List, Optional, Set, Tuple

import numpy as np

from common.config import load_config
from common.errors import UserError

NO_PRETRAINED = "model.backbone.pretrained=null"


def num_classes_of(arrays: Dict[str, np.ndarray], layout: str) -> Optional[int]:
    """Classes of the first classification head (`class_embed.0.weight`, or `class_embed.weight` when one head
    serves every layer as in Conditional DETR; torch [C, D] / Paddle [D, C]); None when the weights have none."""
    w = arrays.get("class_embed.0.weight", arrays.get("class_embed.weight"))
    if w is None or np.ndim(w) != 2:
        return None
    return int(w.shape[0] if layout == "torch" else w.shape[1])


def guess_overrides(arrays: Dict[str, np.ndarray], layout: str = "torch") -> List[str]:
    """`-o` settings the weights imply (torch or Paddle names), for error messages: num_classes, hidden_dim,
    dim_feedforward, num_queries, layer and level counts."""
    found = []
    n = num_classes_of(arrays, layout)
    if n is not None:
        found.append(f"model.num_classes={n}")
    level = arrays.get("transformer.level_embed")
    if level is not None:
        found += [f"model.num_feature_levels={level.shape[0]}", f"model.hidden_dim={level.shape[1]}"]
    w = arrays.get("transformer.encoder.layers.0.linear1.weight")
    if w is not None:
        found.append(f"model.dim_feedforward={w.shape[0] if layout == 'torch' else w.shape[1]}")
    for part, key in (("encoder", "enc_layers"), ("decoder", "dec_layers")):
        ids = {int(m.group(1)) for k in arrays for m in [re.match(rf"transformer\.{part}\.layers\.(\d+)\.", k)] if m}
        if ids:
            found.append(f"model.{key}={max(ids) + 1}")
    q = arrays.get("query_embed.weight")
    if q is not None:
        found.append(f"model.num_queries={q.shape[0]}")
    return found


def resolve_config(path: str, overrides: Iterable[str] = (), arrays: Optional[Dict[str, np.ndarray]] = None,
                   layout: str = "torch"):
    """The config at `path` with `overrides`; model.num_classes, when the config leaves it unset, is read from
    the weights' class head (or a UserError says what to pass)."""
    overrides = list(overrides) + [NO_PRETRAINED]
    cfg = load_config(path, overrides)
    if cfg["model"]["num_classes"] is None:
        n = num_classes_of(arrays, layout) if arrays is not None else None
        if n is None:
            raise UserError(f"{path} leaves model.num_classes unset and the weights have no class_embed.0.weight "
                            "to read it from; pass -o model.num_classes=N")
        cfg = load_config(path, overrides + [f"model.num_classes={n}"])
    return cfg


def build_torch(cfg, seed: int = 0):
    """The torch model of `cfg` (eval mode, init drawn from `seed`)."""
    import torch

    from torch_impl.models.build import build_model

    torch.manual_seed(seed)
    model = build_model(cfg)[0]
    model.eval()
    return model


def build_paddle(cfg, seed: int = 0):
    """The Paddle model of `cfg` (eval mode, init drawn from `seed`)."""
    import paddle

    from paddle_impl.models.build import build_model

    paddle.seed(seed)
    model = build_model(cfg)[0]
    model.eval()
    return model


_SPECS: Dict[Tuple[str, str], object] = {}  # (framework, model section as JSON) -> spec: a model is built once


def _key(cfg, framework: str) -> Tuple[str, str]:
    return framework, json.dumps(cfg["model"], sort_keys=True, default=str)


def _torch_shapes(cfg) -> Dict[str, Tuple[int, ...]]:
    import torch

    from torch_impl.models.build import build_model

    try:  # on the meta device nothing is allocated or initialized: shapes only, fast even for Swin-L
        with torch.device("meta"):
            model = build_model(cfg)[0]
    except Exception:  # a constructor that needs real values: build it for real (raises the real error, if any)
        model = build_torch(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _paddle_shapes(cfg) -> Tuple[Dict[str, Tuple[int, ...]], Set[str]]:
    import paddle

    from convert.frameworks import paddle_linear_weights
    from paddle_impl.models.build import build_model

    try:  # LazyGuard: parameters are declared, not initialized
        with paddle.LazyGuard():
            model = build_model(cfg)[0]
    except Exception:  # as above
        model = build_paddle(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, paddle_linear_weights(model)


def torch_spec(cfg) -> Dict[str, Tuple[int, ...]]:
    """{name: shape} of the torch model's state dict (the model is built once per model section, without
    initializing it)."""
    key = _key(cfg, "torch")
    if key not in _SPECS:
        _SPECS[key] = _torch_shapes(cfg)
    return _SPECS[key]


def paddle_spec(cfg) -> Tuple[Dict[str, Tuple[int, ...]], Set[str]]:
    """({name: shape} of the Paddle model's state dict, names of its Linear weights)."""
    key = _key(cfg, "paddle")
    if key not in _SPECS:
        _SPECS[key] = _paddle_shapes(cfg)
    return _SPECS[key]


def check_config_file(path: str) -> None:
    if not os.path.isfile(path):
        raise UserError(f"config not found: {path}")
