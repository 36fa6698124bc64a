"""Paddle's training step with and without the project's CPU ops for the Linear layers and the optimizer step
(ops/paddle_cpu_layers.py: linear, clip_by_global_norm, adamw), alternating in one process on the same batches, so
that the machine's drift between processes does not enter the comparison.

    python -m bench.paddle_ops_ab [-c configs/demo.yml] [--rounds 6] [--steps 10] [-o key=value ...]

Every round runs `steps` training steps in each mode, one mode after the other (the first 3 steps of each untimed);
prints the median step of each mode over all rounds and its ratio to the mode with every op. The convolution and
GroupNorm ops stay on in every mode.
"""
import argparse
import math
import tempfile
import time

from paddle_impl import optim as paddle_optim  # before paddle (paddle_impl sets the thread and wait settings)
from paddle_impl.models import layers

import numpy as np

from bench.train_step import _config, build_trainer, training_batches

# mode -> (Linear's smallest output for the op, whether clipping and AdamW may use the ops)
MODES = {
    "all ops": (layers.Linear.OP_MIN_OUTPUT, True),
    "Paddle's Linear": (math.inf, True),
    "Paddle's Linear, clip and AdamW": (math.inf, False),
}
WARMUP = 3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default="configs/demo.yml")
    parser.add_argument("-o", "--opt", nargs="*", default=[])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    fusable = paddle_optim._fusable
    with tempfile.TemporaryDirectory() as out:
        cfg = _config(args.config, args.opt, out, ("train",))
        batches = training_batches(cfg, WARMUP + args.steps)
        trainer, threads = build_trainer("paddle", cfg)
        times = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode, (min_output, fused) in MODES.items():
                layers.Linear.OP_MIN_OUTPUT = min_output
                paddle_optim._fusable = fusable if fused else (lambda tensors: False)
                for i, batch in enumerate(batches):
                    start = time.perf_counter()
                    trainer.train_step(batch, i)
                    if i >= WARMUP:
                        times[mode].append(time.perf_counter() - start)
    base = float(np.median(times["all ops"]))
    print(f"Paddle training step, {args.config}, {threads} thread(s), median of {args.rounds} x {args.steps} steps "
          f"per mode, modes alternating\n\n| mode | s / iter | vs all ops |\n|---|---|---|")
    for mode, values in times.items():
        median = float(np.median(values))
        print(f"| {mode} | {median:.3f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
