"""Training speed of the two frameworks on one config: seconds per training step, and Paddle / torch.

    python -m bench.train_step [-c configs/demo.yml] [--steps 20] [--warmup 3] [-o key=value ...]

Each framework runs in its own process (importing paddle changes torch's threading), on the same batches of the
config's training data (the demo data is generated when missing), through the same Trainer.train_step the
training command uses, with every usable core. Prints a markdown table; the ratio is from this one run.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(framework, config, overrides, steps, warmup):
    """Median seconds per train_step of `framework` (runs in this process)."""
    import numpy as np

    from common.data.build import build_train_loader
    from common.run import prepare_run

    cfg = prepare_run(config, list(overrides) + ["output_dir=/tmp/bench_train_step", "data.num_workers=0"],
                      splits=("train",), write_config=False)
    if framework == "torch":
        import torch

        from torch_impl.engine import Trainer
        from torch_impl.main import seed_everything, select_device
        from torch_impl.models.build import build_model
        from torch_impl.optim import build_optimizer, build_scheduler

        device = select_device(cfg.device)
        seed_everything(cfg.train.seed)
        model, criterion, post = build_model(cfg)
        model.to(device)
        optimizer = build_optimizer(model, cfg.train)
        trainer = Trainer(model, model, criterion, post, optimizer, build_scheduler(optimizer, cfg.train), device,
                          cfg.train)
        threads = torch.get_num_threads()
    else:
        from paddle_impl import CPU_THREADS  # before paddle: importing paddle sets OMP_NUM_THREADS
        from paddle_impl.engine import Trainer
        from paddle_impl.main import seed_everything, select_device
        from paddle_impl.models.build import build_model
        from paddle_impl.optim import build_optimizer, build_scheduler

        select_device(cfg.device)
        seed_everything(cfg.train.seed)
        model, criterion, post = build_model(cfg)
        scheduler = build_scheduler(cfg.train)
        trainer = Trainer(model, model, criterion, post, build_optimizer(model, cfg.train, scheduler), scheduler,
                          cfg.train)
        threads = CPU_THREADS
    _, loader = build_train_loader(cfg)
    loader.set_epoch(0)
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == warmup + steps:
            break
    times = []
    for i, batch in enumerate(batches):
        start = time.perf_counter()
        trainer.train_step(batch, i)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {"framework": framework, "seconds_per_step": float(np.median(times)), "threads": threads,
            "steps": len(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "demo.yml"))
    parser.add_argument("-o", "--opt", nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--framework", choices=["torch", "paddle"], help=argparse.SUPPRESS)  # one child process
    args = parser.parse_args()
    if args.framework:
        print(json.dumps(measure(args.framework, args.config, args.opt, args.steps, args.warmup)))
        return
    results = {}
    for fw in ("torch", "paddle"):
        cmd = [sys.executable, "-m", "bench.train_step", "--framework", fw, "-c", args.config, "--steps",
               str(args.steps), "--warmup", str(args.warmup), "-o", *args.opt]
        r = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
        if r.returncode:
            sys.exit(f"bench.train_step: the {fw} run failed:\n{r.stderr[-3000:]}")
        results[fw] = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"config {os.path.relpath(args.config, ROOT)}, {args.steps} steps after {args.warmup} warm-up, median\n")
    print("| framework | s / step | threads |\n|---|---|---|")
    for fw, r in results.items():
        print(f"| {fw} | {r['seconds_per_step']:.3f} | {r['threads']} |")
    ratio = results["paddle"]["seconds_per_step"] / results["torch"]["seconds_per_step"]
    print(f"\npaddle / torch: {ratio:.2f}x")


if __name__ == "__main__":
    main()
