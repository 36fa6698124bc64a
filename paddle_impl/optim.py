"""AdamW with the DETR parameter groups (common/param_groups.py) and a step-decay schedule (per epoch).

A Paddle parameter group's `learning_rate` is a multiplier of the optimizer's (scheduled) rate, not a rate.
Gradient clipping (`clip_grad_norm`) is done by the engine over all parameters, as in torch: the optimizer's own
`grad_clip` would clip each parameter group by its own norm.

On CPU, float32, both run as one C++ op over all parameters (ops/paddle_cpu_layers.py), the counterpart of torch's
`fused=True`: Paddle's own take one op per parameter and 90 ms per demo step, 13% of it.
"""
import paddle

from common.param_groups import split_params
from ops import paddle_cpu_layers


def build_scheduler(train_cfg) -> paddle.optimizer.lr.MultiStepDecay:
    return paddle.optimizer.lr.MultiStepDecay(train_cfg.lr, milestones=list(train_cfg.lr_drop),
                                              gamma=train_cfg.lr_gamma)


def _fusable(tensors) -> bool:
    """True when `tensors` can go through the C++ ops: dynamic mode, contiguous float32 CPU tensors, ops built."""
    return (paddle.in_dynamic_mode() and all(t.dtype == paddle.float32 and t.place.is_cpu_place()
                                             and t.is_contiguous() for t in tensors)
            and paddle_cpu_layers.available())


class AdamW(paddle.optimizer.AdamW):
    """paddle.optimizer.AdamW whose step, for float32 CPU parameters in dynamic mode, updates every parameter in one
    C++ op with the arithmetic of Paddle's adamw kernel and Paddle's own accumulators (so checkpoints, resume and
    state_dict are those of paddle.optimizer.AdamW). Elsewhere, or with options the op does not cover (per-group
    betas / epsilon / weight decay, decay or lr-ratio functions, AMSGrad, multi-precision), Paddle's step."""

    def _groups(self):
        return self._param_groups if isinstance(self._parameter_list[0], dict) else [{"params": self._parameter_list}]

    def _plain_options(self) -> bool:
        defaults = {"beta1": self._beta1, "beta2": self._beta2, "epsilon": self._epsilon,
                    "weight_decay": self._weight_decay}
        return (all(isinstance(v, float) for v in defaults.values()) and self._apply_decay_param_fun is None
                and self._lr_ratio is None and not self._amsgrad and not self._multi_precision and not self._lazy_mode
                and all(g.get(k, v) == v for g in self._groups() for k, v in defaults.items()))

    @paddle.no_grad()
    def step(self):
        params = [p for g in self._groups() for p in g["params"] if not p.stop_gradient and p.grad is not None]
        grads = [p.grad for p in params]
        if not params or not self._plain_options() or not _fusable(params + grads):
            return super().step()
        self._create_accumulators(paddle.static.default_main_program().global_block(), params)
        state = [[self._get_accumulator_master(name, p) for p in params]
                 for name in (self._moment1_acc_str, self._moment2_acc_str, self._beta1_pow_acc_str,
                              self._beta2_pow_acc_str)]
        lr = self.get_lr()
        lrs = [lr * p.optimize_attr.get("learning_rate", 1.0) for p in params]
        paddle_cpu_layers.adamw(params, grads, *state, lrs, self._beta1, self._beta2, self._epsilon,
                                self._weight_decay)


def build_optimizer(model: paddle.nn.Layer, train_cfg, scheduler) -> AdamW:
    if train_cfg.lr <= 0:
        raise ValueError(f"train.lr must be positive, got {train_cfg.lr}")
    named = [(n, p) for n, p in model.named_parameters() if not p.stop_gradient]
    groups = [{"params": g["params"], "learning_rate": g["lr"] / train_cfg.lr} for g in split_params(named, train_cfg)]
    return AdamW(learning_rate=scheduler, parameters=groups, weight_decay=train_cfg.weight_decay)


def clip_grad_norm(params, max_norm: float) -> paddle.Tensor:
    """Scales the gradients of `params` in place so that their global L2 norm is at most max_norm; returns the norm
    before clipping (0-D). paddle.nn.utils.clip_grad_norm_ does the same but calls paddle.linalg.norm once per
    parameter, whose Python-side checks made it 2.5x slower on the demo model's 213 parameters (docs/performance.md);
    float32 CPU gradients go through one C++ op (the sum of squares in float64).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return paddle.zeros([])
    if _fusable(grads):
        return paddle_cpu_layers.clip_by_global_norm(grads, max_norm)
    total = paddle.add_n([paddle.square(g).sum() for g in grads]).sqrt()
    coef = paddle.clip(max_norm / (total + 1e-6), max=1.0)
    with paddle.no_grad():  # the gradients are leaf tensors that would refuse an in-place op otherwise
        for g in grads:
            g.multiply_(coef)
    return total
