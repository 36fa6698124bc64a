"""Which learning rate each parameter gets (DETR-family rule, the same for both frameworks).

The backbone trains at `train.lr_backbone`; the deformable-attention sampling offsets and reference-point
heads at `train.lr * train.lr_linear_proj_mult`; everything else at `train.lr`.
"""
from typing import Dict, Iterable, List, Tuple

LINEAR_PROJ_NAMES = ("sampling_offsets", "reference_points")


def group_of(name: str) -> str:
    """'backbone', 'linear_proj' or 'base' for a parameter name."""
    if name.startswith("backbone."):
        return "backbone"
    if any(part in name for part in LINEAR_PROJ_NAMES):
        return "linear_proj"
    return "base"


def split_params(named: Iterable[Tuple[str, object]], train_cfg) -> List[Dict]:
    """Groups the trainable (name, param) pairs: [{"name", "lr", "params": [...]}], empty groups left out.

    A backbone with lr_backbone 0 is left out entirely (frozen).
    """
    lrs = {"base": train_cfg.lr, "backbone": train_cfg.lr_backbone,
           "linear_proj": train_cfg.lr * train_cfg.lr_linear_proj_mult}
    groups: Dict[str, List] = {k: [] for k in lrs}
    for name, p in named:
        groups[group_of(name)].append(p)
    return [{"name": k, "lr": lrs[k], "params": v} for k, v in groups.items() if v and lrs[k] > 0]
