"""Training speed: seconds per training step (forward + backward + optimizer) of torch and Paddle, with the
deformable-attention kernel and with the grid_sample reference, and where the step's time goes.

    python -m bench.train_step [-c configs/demo.yml] [--size H W] [--steps 20] [--warmup 3]
                               [--backends kernel reference] [-o key=value ...]

Each framework runs in its own process (bench/child.py) through the same Trainer.train_step the training command
uses, with every usable core, on the same batches: the config's training data (no --size; the first warmup + steps
batches, loaded before timing) or one fixed batch of random H x W images with random boxes (fixed_batch). Models
start from the config's random init (same seed for both backends). Inside each step the model's forward, the
criterion (the loss computation, matching included) and the Hungarian matcher / one-to-many assigner calls
(common/matching) are timed by wrapping them; backward + optimizer is the rest of the step. The figures are those
of the median step (the lower of the middle two for an even count), so its parts add up to its time. Prints a
markdown table; the ratios are from this one run.
"""
import argparse
import itertools
import os
import tempfile
import time

import numpy as np

from bench.child import call
from bench.timing import CallTimer, median_time

BOXES_PER_IMAGE = 7  # COCO's average


def fixed_batch(height, width, num_classes, batch_size, seed=0):
    """A batch in common/data/collate.py's layout: float32 [B, 3, H, W] standard-normal images, masks bool
    [B, H, W] all False (no padding), per image BOXES_PER_IMAGE random cxcywh boxes in [0, 1] with labels in
    0..num_classes-1."""
    rng = np.random.default_rng(seed)
    targets = []
    for i in range(batch_size):
        boxes = np.concatenate([rng.uniform(0.2, 0.8, (BOXES_PER_IMAGE, 2)),
                                rng.uniform(0.05, 0.4, (BOXES_PER_IMAGE, 2))], 1).astype(np.float32)
        targets.append({"boxes": boxes, "labels": rng.integers(0, num_classes, BOXES_PER_IMAGE),
                        "image_id": np.int64(i), "orig_size": np.array([height, width]),
                        "size": np.array([height, width])})
    return {"images": rng.standard_normal((batch_size, 3, height, width), dtype=np.float32),
            "masks": np.zeros((batch_size, height, width), bool), "targets": targets}


def build_trainer(framework, cfg):
    """(Trainer, CPU threads) of `framework` for the resolved config, built as the training command builds it."""
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
        return (Trainer(model, model, criterion, post, optimizer, build_scheduler(optimizer, cfg.train), device,
                        cfg.train), torch.get_num_threads())
    from paddle_impl import CPU_THREADS  # before paddle: importing paddle sets OMP_NUM_THREADS
    from paddle_impl.engine import Trainer
    from paddle_impl.main import seed_everything, select_device
    from paddle_impl.models.build import build_model
    from paddle_impl.optim import build_optimizer, build_scheduler

    select_device(cfg.device)
    seed_everything(cfg.train.seed)
    model, criterion, post = build_model(cfg)
    scheduler = build_scheduler(cfg.train)
    return (Trainer(model, model, criterion, post, build_optimizer(model, cfg.train, scheduler), scheduler,
                    cfg.train), CPU_THREADS)


def time_steps(trainer, batches, warmup):
    """Runs trainer.train_step on every batch, with the model's forward, the criterion and the matchers wrapped in
    CallTimers -> the median step after `warmup`: its time and its parts (seconds), and the matcher calls per step."""
    model, criterion = trainer.net, trainer.criterion
    timers = {"forward_s": CallTimer(model.forward), "criterion_s": CallTimer(criterion.forward),
              "hungarian_s": CallTimer(criterion.matcher)}
    model.forward, criterion.forward, criterion.matcher = (timers[k] for k in ("forward_s", "criterion_s",
                                                                               "hungarian_s"))
    if criterion.assigner is not None:
        timers["one_to_many_s"] = criterion.assigner = CallTimer(criterion.assigner)
    samples = []
    for i, batch in enumerate(batches):
        for timer in timers.values():
            timer.reset()
        start = time.perf_counter()
        trainer.train_step(batch, i)
        step = time.perf_counter() - start
        if i >= warmup:
            parts = {k: t.seconds for k, t in timers.items()}
            parts["matching_s"] = parts["hungarian_s"] + parts.get("one_to_many_s", 0.0)
            parts["backward_optimizer_s"] = step - parts["forward_s"] - parts["criterion_s"]
            samples.append({"seconds_per_iter": step, **parts})
    # the parts of the median step (lower median for an even count), so that they add up to its time
    result = sorted(samples, key=lambda s: s["seconds_per_iter"])[(len(samples) - 1) // 2]
    result["hungarian_calls_per_step"] = timers["hungarian_s"].calls
    if "one_to_many_s" in timers:
        result["one_to_many_calls_per_step"] = timers["one_to_many_s"].calls
    return result


def _config(config, overrides, out, splits):
    """The resolved config, output in `out`, no loader workers; splits=() reads no data (fixed batches)."""
    from common.config import load_config
    from common.run import prepare_run

    overrides = list(overrides) + [f"output_dir={out}", "data.num_workers=0"]
    if not splits and load_config(config, overrides).model.num_classes is None:
        raise ValueError("a fixed batch (--size) needs the number of classes: add -o model.num_classes=N")
    return prepare_run(config, overrides, splits=splits, write_config=False)


def training_batches(cfg, count):
    """The first `count` batches of the config's training loader (epoch 0)."""
    from common.data.build import build_train_loader

    _, loader = build_train_loader(cfg)
    loader.set_epoch(0)
    batches = list(itertools.islice(loader, count))
    if len(batches) < count:
        raise ValueError(f"the training data gives {len(batches)} batches; {count} are needed (warm-up + steps)")
    return batches


def measure(framework, config, overrides=(), backends=("kernel",), size=None, steps=20, warmup=3):
    """{backend: timings (time_steps) + images_per_s, threads, omp_wait_policy, steps, batch_size, image_hw} of
    `framework`'s training step, in this process. size: None for the config's training batches, else [H, W] of a
    fixed batch."""
    results = {}
    with tempfile.TemporaryDirectory() as out:
        cfg = _config(config, overrides, out, ("train",) if size is None else ())
        batches = training_batches(cfg, warmup + steps) if size is None else \
            [fixed_batch(*size, cfg.model.num_classes, cfg.train.batch_size)] * (warmup + steps)
        for backend in backends:
            cfg.model["deform_attn_backend"] = backend
            trainer, threads = build_trainer(framework, cfg)
            r = time_steps(trainer, batches, warmup)
            del trainer
            images = len(batches[0]["targets"])
            results[backend] = {**r, "images_per_s": images / r["seconds_per_iter"], "threads": threads,
                                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "steps": steps,
                                "batch_size": images,
                                "image_hw": np.mean([b["images"].shape[2:] for b in batches], 0).round(1).tolist()}
    return results


def loader_seconds(config, overrides=(), batches=20, warmup=2):
    """{seconds_per_batch, batch_size}: median time for the config's training DataLoader, with num_workers=0, to
    load, augment and collate one batch in this process (the cost that loader workers would hide)."""
    from common.data.build import build_train_loader

    with tempfile.TemporaryDirectory() as out:
        cfg = _config(config, overrides, out, ("train",))
        _, loader = build_train_loader(cfg)
        if len(loader) < warmup + batches:
            raise ValueError(f"the training data gives {len(loader)} batches; {warmup + batches} are needed")
        loader.set_epoch(0)
        it = iter(loader)
        return {"seconds_per_batch": median_time(lambda: next(it), warmup, batches),
                "batch_size": cfg.train.batch_size}


def run(config, overrides=(), size=None, steps=20, warmup=3, backends=("kernel",), frameworks=("torch", "paddle")):
    """Rows of every framework x backend (each framework in its own process) with their ratios: paddle_over_torch
    on Paddle rows, reference_over_kernel on reference rows (same backend / framework, this run)."""
    name = os.path.splitext(os.path.basename(config))[0]
    case = "training data" if size is None else f"{size[0]}x{size[1]} fixed"
    rows = []
    for fw in frameworks:
        res = call("bench.train_step:measure", f"the {fw} training step ({name}, {case})", framework=fw,
                   config=config, overrides=list(overrides), backends=list(backends), size=size, steps=steps,
                   warmup=warmup)
        rows += [{"config": name, "input": case, "framework": fw, "backend": b, **r} for b, r in res.items()]
    step = {(r["framework"], r["backend"]): r["seconds_per_iter"] for r in rows}
    for r in rows:
        if r["framework"] == "paddle" and ("torch", r["backend"]) in step:
            r["paddle_over_torch"] = r["seconds_per_iter"] / step[("torch", r["backend"])]
        if r["backend"] == "reference" and (r["framework"], "kernel") in step:
            r["reference_over_kernel"] = r["seconds_per_iter"] / step[(r["framework"], "kernel")]
    return rows


def table(rows):
    """Markdown table of run()'s rows; parts of the step as seconds (share of the step)."""
    lines = ["| config | input | framework | attention | s / iter | images / s | forward | loss (incl. matching) "
             "| matching | backward + optimizer | paddle / torch | reference / kernel |", "|---" * 12 + "|"]
    for r in rows:
        parts = [f"{r[k]:.3f} ({100 * r[k] / r['seconds_per_iter']:.0f}%)"
                 for k in ("forward_s", "criterion_s", "matching_s", "backward_optimizer_s")]
        ratios = [f"{r[k]:.2f}x" if k in r else "-" for k in ("paddle_over_torch", "reference_over_kernel")]
        lines.append(f"| {r['config']} | {r['input']} | {r['framework']} | {r['backend']} | "
                     f"{r['seconds_per_iter']:.3f} | {r['images_per_s']:.2f} | " + " | ".join(parts + ratios) + " |")
    return "\n".join(lines)


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser = argparse.ArgumentParser(prog="python -m bench.train_step", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=os.path.join(root, "configs", "demo.yml"))
    parser.add_argument("-o", "--opt", nargs="*", default=[])
    parser.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), help="a fixed random batch of H x W images")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["kernel"], choices=["kernel", "reference"])
    args = parser.parse_args()
    rows = run(args.config, args.opt, args.size, args.steps, args.warmup, args.backends)
    print(f"the median of {args.steps} steps after {args.warmup} warm-up\n\n{table(rows)}")


if __name__ == "__main__":
    main()
