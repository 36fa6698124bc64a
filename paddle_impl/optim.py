"""AdamW with the DETR parameter groups (common/param_groups.py) and a step-decay schedule (per epoch).

A Paddle parameter group's `learning_rate` is a multiplier of the optimizer's (scheduled) rate, not a rate.
Gradient clipping is done by the engine with paddle.nn.utils.clip_grad_norm_ over all parameters, as in torch:
the optimizer's own `grad_clip` would clip each parameter group by its own norm.
"""
import paddle

from common.param_groups import split_params


def build_scheduler(train_cfg) -> paddle.optimizer.lr.MultiStepDecay:
    return paddle.optimizer.lr.MultiStepDecay(train_cfg.lr, milestones=list(train_cfg.lr_drop), gamma=train_cfg.lr_gamma)


def build_optimizer(model: paddle.nn.Layer, train_cfg, scheduler) -> paddle.optimizer.AdamW:
    if train_cfg.lr <= 0:
        raise ValueError(f"train.lr must be positive, got {train_cfg.lr}")
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    groups = [{"params": g["params"], "learning_rate": g["lr"] / train_cfg.lr} for g in split_params(named, train_cfg)]
    return paddle.optimizer.AdamW(learning_rate=scheduler, parameters=groups, weight_decay=train_cfg.weight_decay)
