"""CPU convolution, GroupNorm and Linear, forward + backward: Paddle's builtin kernels, the ops in
ops/paddle_cpu_layers.py, and torch, on the demo config's shapes (ResNet-18 + input projections, batch 2, 448 x 560
images; transformer projections of its ~2,200 encoder tokens and 2 x 120 decoder queries).

    OMP_NUM_THREADS=1 python -m bench.paddle_cpu_layers [--repeats 20] [--quick]

Prints milliseconds (median of --repeats) and the ratios to torch from this one run; every framework uses
OMP_NUM_THREADS threads (default: all usable cores).
"""
import argparse
import os

from paddle_impl import CPU_THREADS, use_cpu_threads  # before paddle: importing paddle sets OMP_NUM_THREADS

import numpy as np
import paddle
import paddle.nn.functional as PF
import torch
import torch.nn.functional as TF

from bench.timing import median_time
from ops import paddle_cpu_layers

# (name, N, C, H, W, O, kernel, stride, padding, bias); the stem's input (the images) needs no gradient
CONVS = [
    ("stem 7x7/2 (no dx)", 2, 3, 448, 560, 64, 7, 2, 3, False),
    ("layer1 3x3", 2, 64, 112, 140, 64, 3, 1, 1, False),
    ("layer2 3x3/2", 2, 64, 112, 140, 128, 3, 2, 1, False),
    ("layer2 down 1x1/2", 2, 64, 112, 140, 128, 1, 2, 0, False),
    ("layer2 3x3", 2, 128, 56, 70, 128, 3, 1, 1, False),
    ("layer3 3x3", 2, 256, 28, 35, 256, 3, 1, 1, False),
    ("layer4 3x3", 2, 512, 14, 18, 512, 3, 1, 1, False),
    ("proj 1x1 +bias", 2, 512, 14, 18, 128, 1, 1, 0, True),
]
# (name, N, C, H, W, groups)
GROUP_NORMS = [
    ("gn 64 @112x140", 2, 64, 112, 140, 32),
    ("gn 128 @56x70", 2, 128, 56, 70, 32),
    ("gn 256 @28x35", 2, 256, 28, 35, 32),
    ("gn 512 @14x18", 2, 512, 14, 18, 32),
]

# (name, M rows, K in, N out): encoder tokens (hidden 128, FFN 512), decoder queries, the class head
LINEARS = [
    ("linear 2200x128->512", 2200, 128, 512),
    ("linear 2200x512->128", 2200, 512, 128),
    ("linear 2200x128->128", 2200, 128, 128),
    ("linear 240x128->128", 240, 128, 128),
    ("linear 240x128->6", 240, 128, 6),
]


def paddle_step(forward, inputs, grad):
    """forward(*inputs) and backward with `grad`, in Paddle."""
    def step():
        for t in inputs:
            t.clear_gradient(set_to_zero=False)  # as torch: no zero-fill + accumulate
        forward(*inputs).backward(grad)
    return step


def torch_step(forward, inputs, grad):
    def step():
        for t in inputs:
            t.grad = None
        forward(*inputs).backward(grad)
    return step


def conv_steps(n, c, h, w, o, k, s, p, bias, rng):
    x = rng.standard_normal((n, c, h, w)).astype("float32")
    weight = (rng.standard_normal((o, c, k, k)) * 0.05).astype("float32")
    arrays = [x, weight] + ([rng.standard_normal(o).astype("float32")] if bias else [])
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    grad = rng.standard_normal((n, o, oh, ow)).astype("float32")
    needs = [c != 3] + [True] * (len(arrays) - 1)
    pd = [paddle.to_tensor(a, stop_gradient=not need) for a, need in zip(arrays, needs)]
    td = [torch.tensor(a, requires_grad=need) for a, need in zip(arrays, needs)]
    pg, tg = paddle.to_tensor(grad), torch.tensor(grad)
    pick = (lambda t: t[2] if bias else None)
    return {
        "paddle": paddle_step(lambda *t: PF.conv2d(t[0], t[1], pick(t), s, p), pd, pg),
        "op": paddle_step(lambda *t: paddle_cpu_layers.conv2d(t[0], t[1], pick(t), s, p), pd, pg),
        "torch": torch_step(lambda *t: TF.conv2d(t[0], t[1], pick(t), s, p), td, tg),
    }


def group_norm_steps(n, c, h, w, g, rng):
    arrays = [rng.standard_normal((n, c, h, w)).astype("float32"), rng.standard_normal(c).astype("float32"),
              rng.standard_normal(c).astype("float32")]
    grad = rng.standard_normal((n, c, h, w)).astype("float32")
    pd = [paddle.to_tensor(a, stop_gradient=False) for a in arrays]
    td = [torch.tensor(a, requires_grad=True) for a in arrays]
    pg, tg = paddle.to_tensor(grad), torch.tensor(grad)
    return {
        "paddle": paddle_step(lambda x, wt, b: PF.group_norm(x, g, 1e-5, wt, b), pd, pg),
        "op": paddle_step(lambda x, wt, b: paddle_cpu_layers.group_norm(x, g, wt, b, 1e-5), pd, pg),
        "torch": torch_step(lambda x, wt, b: TF.group_norm(x, g, wt, b, 1e-5), td, tg),
    }


def linear_steps(m, k, n, rng):
    arrays = [rng.standard_normal((m, k)).astype("float32"), (rng.standard_normal((k, n)) / np.sqrt(k)).astype(
        "float32"), rng.standard_normal(n).astype("float32")]
    grad = rng.standard_normal((m, n)).astype("float32")
    pd = [paddle.to_tensor(a, stop_gradient=False) for a in arrays]
    td = [torch.tensor(a, requires_grad=True) for a in arrays]
    pg, tg = paddle.to_tensor(grad), torch.tensor(grad)
    return {
        "paddle": paddle_step(PF.linear, pd, pg),
        "op": paddle_step(paddle_cpu_layers.linear, pd, pg),
        "torch": torch_step(lambda x, wt, b: TF.linear(x, wt.T, b), td, tg),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    args = parser.parse_args()
    repeats = 3 if args.quick else args.repeats
    use_cpu_threads(CPU_THREADS)
    torch.set_num_threads(CPU_THREADS)
    if not paddle_cpu_layers.available():
        raise SystemExit("bench.paddle_cpu_layers: the ops could not be built (see the warning above)")
    rng = np.random.default_rng(0)
    print(f"forward + backward, median of {repeats}, {CPU_THREADS} thread(s) "
          f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}), float32\n")
    print("| case | paddle ms | op ms | torch ms | paddle / torch | op / torch |\n|---|---|---|---|---|---|")
    totals = {"paddle": 0.0, "op": 0.0, "torch": 0.0}
    cases = [(name, conv_steps(*shape, rng)) for name, *shape in CONVS]
    cases += [(name, group_norm_steps(*shape, rng)) for name, *shape in GROUP_NORMS]
    cases += [(name, linear_steps(*shape, rng)) for name, *shape in LINEARS]
    for name, steps in cases:
        ms = {key: 1e3 * median_time(fn, 2, repeats) for key, fn in steps.items()}
        for key in totals:
            totals[key] += ms[key]
        print(f"| {name} | {ms['paddle']:.2f} | {ms['op']:.2f} | {ms['torch']:.2f} | "
              f"{ms['paddle'] / ms['torch']:.2f} | {ms['op'] / ms['torch']:.2f} |")
    print(f"| **sum** | {totals['paddle']:.1f} | {totals['op']:.1f} | {totals['torch']:.1f} | "
          f"{totals['paddle'] / totals['torch']:.2f} | {totals['op'] / totals['torch']:.2f} |")


if __name__ == "__main__":
    main()
