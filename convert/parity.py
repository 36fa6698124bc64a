"""Training parity between the trees: same initial weights and batches -> same losses, gradients, parameters.

`TrainingPair(cfg, precision)` builds the config's model and criterion in both frameworks with torch's initial
weights copied into Paddle (convert/rules.py), and steps both with plain SGD on the same numpy batches and
the same denoising / loss RNGs (common.loop.step_rngs, as the engines draw them). Each step returns both
trees' loss terms and gradients, so a caller (tests/test_convert_parity.py) can compare them term by term and
parameter by parameter. Dropout must be off (model.dropout=0: the two frameworks draw different masks).

float64 is the setting for multi-step comparisons: in float32 the two-stage top-k selection can order
near-tied proposals differently in the two frameworks, after which the runs legitimately diverge
(/work/shared/notes/parity.md).
"""
from typing import Dict, List, Tuple

import numpy as np

from common.loop import step_rngs

Arrays = Dict[str, np.ndarray]


def _cast_targets(targets, dtype: str):
    return [dict(t, boxes=np.asarray(t["boxes"]).astype(dtype)) for t in targets]


class TrainingPair:
    """The torch and Paddle models + criteria of `cfg` with identical weights, stepped together."""

    def __init__(self, cfg, precision: str = "float64", lr: float = 1e-3, seed: int = 0, prepare=None):
        """prepare: optional function applied to the torch model before its weights are copied to Paddle."""
        import paddle
        import torch

        from convert.frameworks import paddle_linear_weights, torch_module_to_paddle
        from paddle_impl.models.build import build_model as build_paddle
        from torch_impl.models.build import build_model as build_torch

        if cfg["model"]["dropout"] != 0:
            raise ValueError("training parity needs model.dropout=0 (the frameworks draw different dropout masks)")
        torch.manual_seed(seed)
        self.pt, self.crit_t, _ = build_torch(cfg)
        paddle.seed(seed)
        self.pd, self.crit_p, _ = build_paddle(cfg)
        if prepare is not None:
            with torch.no_grad():
                prepare(self.pt)
        torch_module_to_paddle(self.pt, self.pd)
        if precision == "float64":
            self.pt.double()
            self.pd.to(dtype="float64")
        self.pt.train()
        self.pd.train()
        self.crit_t.train()
        self.crit_p.train()
        self.precision, self.seed = precision, seed
        self.linear = paddle_linear_weights(self.pd)
        self.params_t = {n: p for n, p in self.pt.named_parameters() if p.requires_grad}
        self.params_p = {n: p for n, p in self.pd.named_parameters() if not p.stop_gradient}
        if set(self.params_t) != set(self.params_p):
            raise ValueError(f"trainable parameters differ: {sorted(set(self.params_t) ^ set(self.params_p))[:5]}")
        self.opt_t = torch.optim.SGD(list(self.params_t.values()), lr=lr)
        self.opt_p = paddle.optimizer.SGD(learning_rate=lr, parameters=list(self.params_p.values()))

    def _losses_torch(self, batch, iteration: int):
        import torch

        from torch_impl.models.build import targets_to_tensors

        dn_rng, loss_rng = step_rngs(self.seed, 0, iteration)
        targets = targets_to_tensors(_cast_targets(batch["targets"], self.precision), torch.device("cpu"))
        targets = [dict(t, boxes=t["boxes"].to(getattr(torch, self.precision))) for t in targets]
        out = self.pt(torch.from_numpy(batch["images"].astype(self.precision)), torch.from_numpy(batch["masks"]),
                      targets, dn_rng=dn_rng)
        num_boxes = max(float(sum(len(t["labels"]) for t in batch["targets"])), 1.0)
        return self.crit_t(out, targets, num_boxes, rng=loss_rng)

    def _losses_paddle(self, batch, iteration: int):
        import paddle

        from paddle_impl.models.build import targets_to_tensors

        dn_rng, loss_rng = step_rngs(self.seed, 0, iteration)
        targets = targets_to_tensors(batch["targets"])
        targets = [dict(t, boxes=t["boxes"].astype(self.precision)) for t in targets]
        out = self.pd(paddle.to_tensor(batch["images"].astype(self.precision)), paddle.to_tensor(batch["masks"]),
                      targets, dn_rng=dn_rng)
        num_boxes = max(float(sum(len(t["labels"]) for t in batch["targets"])), 1.0)
        return self.crit_p(out, targets, num_boxes, rng=loss_rng)

    def step(self, batch, iteration: int, update: bool = True) -> Tuple[Dict[str, Tuple[float, float]],
                                                                        Dict[str, Tuple[np.ndarray, np.ndarray]]]:
        """One forward / backward (and SGD update) in both trees on the numpy `batch`.

        -> ({loss term: (torch, paddle)}, {parameter: (torch grad, Paddle grad in torch's layout)}); parameters
        that get no gradient in a tree have a zero array there.
        """
        import paddle

        losses_t = self._losses_torch(batch, iteration)
        losses_p = self._losses_paddle(batch, iteration)
        if set(losses_t) != set(losses_p):
            raise ValueError(f"loss terms differ: {sorted(set(losses_t) ^ set(losses_p))}")
        self.opt_t.zero_grad(set_to_none=True)
        self.opt_p.clear_grad()
        sum(losses_t.values()).backward()
        paddle.add_n(list(losses_p.values())).backward()
        terms = {k: (float(losses_t[k].item()), float(losses_p[k].item())) for k in losses_t}
        grads = {}
        for name, p_t in self.params_t.items():
            p_p = self.params_p[name]
            g_t = np.zeros(tuple(p_t.shape)) if p_t.grad is None else p_t.grad.numpy()
            g_p = np.zeros(tuple(p_p.shape)) if p_p.grad is None else p_p.grad.numpy()
            grads[name] = (g_t, g_p.T if name in self.linear else g_p)
        if update:
            self.opt_t.step()
            self.opt_p.step()
        return terms, grads

    def parameters(self) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
        """{name: (torch value, Paddle value in torch's layout)} of every trainable parameter."""
        out = {}
        for name, p_t in self.params_t.items():
            p_p = self.params_p[name].numpy()
            out[name] = (p_t.detach().numpy().copy(), p_p.T if name in self.linear else p_p)
        return out

    def sgd_drift(self, batch, iterations) -> Tuple[float, float]:
        """Steps both models through `iterations` (e.g. range(1, 5)) -> (moved: the largest change of a torch
        parameter, diff: the largest torch - Paddle difference of a parameter after the steps)."""
        before = self.parameters()
        for it in iterations:
            self.step(batch, it)
        after = self.parameters()
        moved = max(np.abs(a_t - before[n][0]).max() for n, (a_t, _) in after.items())
        return float(moved), float(max(np.abs(a_t - a_p).max() for a_t, a_p in after.values()))


def gradient_error(grads: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> float:
    """The worst parameter's max |g_torch - g_paddle| relative to its own largest gradient, floored at 1e-6 of the
    model's largest (some gradients are mathematically zero, e.g. the attention key biases': softmax ignores a
    constant logit shift)."""
    scale = max(np.abs(g_t).max() for g_t, _ in grads.values())
    return float(max(np.abs(g_t - g_p).max() / max(np.abs(g_t).max(), 1e-6 * scale) for g_t, g_p in grads.values()))


def max_relative(pairs: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> List[Tuple[float, str]]:
    """[(max |a - b| / max(max |a|, tiny), name)] sorted worst first."""
    out = []
    for name, (a, b) in pairs.items():
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        out.append((float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30)) if a.size else 0.0, name))
    return sorted(out, reverse=True)
