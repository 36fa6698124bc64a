"""The framework-independent part of training: the epoch loop, the step loop, the evaluation pass.

Each framework's engine supplies a `Trainer` (torch_impl/engine.py, paddle_impl/engine.py): the few operations
that touch tensors. Everything else (when to checkpoint, evaluate, log, stop, how a resumed run picks up) is here
once, so the two frameworks cannot drift apart.
"""
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from common.checkpoint import BEST, LAST
from common.evaluation.evaluator import DetectionEvaluator, report, write_eval_json
from common.log import MetricsWriter, progress
from common.meters import Meters, log_keys

logger = logging.getLogger("common.loop")


@dataclass
class TrainState:
    """Where training is: the epoch in progress, batches of it done, global iteration, skipped steps."""
    epoch: int = 0
    step_in_epoch: int = 0
    iteration: int = 0
    skipped_steps: int = 0


class Trainer(Protocol):
    """What a framework provides to the loops below."""

    rank: int

    def train_step(self, batch: Dict, iteration: int) -> Tuple[Optional[float], Dict[str, float]]:
        """One optimization step on a numpy batch -> (total loss, or None when every rank agreed to skip the
        step because the loss was not finite; {term: weighted loss})."""

    def lr(self) -> float:
        """The learning rate of the first parameter group."""

    def end_epoch(self) -> None:
        """Steps the per-epoch learning-rate schedule."""

    def save(self, path: str, state: TrainState) -> None:
        """Writes a checkpoint (rank 0 only is called)."""

    def predict(self, batch: Dict) -> List[Dict[str, np.ndarray]]:
        """Eval-mode detections of a numpy batch: per image {"scores" [K], "labels" [K], "boxes" [K, 4] xyxy px}."""

    def gather(self, obj) -> List:
        """Every rank's `obj`, in rank order."""


def step_rngs(seed: int, rank: int, iteration: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """(denoising-noise RNG, one-to-many-subsampling RNG) of one training step: functions of (seed, rank, iteration)
    alone, so a resumed run draws what the uninterrupted one would, and both frameworks draw the same."""
    dn, loss = np.random.SeedSequence([seed, rank, iteration]).spawn(2)
    return np.random.default_rng(dn), np.random.default_rng(loss)


def train_one_epoch(trainer: Trainer, loader, state: TrainState, train_cfg, metrics: MetricsWriter) -> bool:
    """Trains until the loader ends or `train.max_iters` is reached; returns True when max_iters stopped it."""
    meters = Meters(window=train_cfg.log_interval)
    bar = progress(loader, desc=f"epoch {state.epoch}", total=len(loader) - state.step_in_epoch, rank=trainer.rank)
    for batch in bar:
        loss, losses = trainer.train_step(batch, state.iteration)
        if loss is None:
            state.skipped_steps += 1
            logger.warning("iteration %d: non-finite loss, step skipped (%d so far)", state.iteration,
                           state.skipped_steps)
        state.iteration += 1
        state.step_in_epoch += 1
        meters.update(loss=math.nan if loss is None else loss, **losses)
        if state.iteration % train_cfg.log_interval == 0:
            lr = trainer.lr()
            logger.info("epoch %d iter %d  lr %.2e  %s", state.epoch, state.iteration, lr,
                        meters.format(log_keys(meters.smoothed())))
            bar.set_postfix(loss=f"{meters.smoothed()['loss']:.3f}")
            metrics.write(kind="train", epoch=state.epoch, iteration=state.iteration, lr=lr, **meters.smoothed())
        if train_cfg.max_iters and state.iteration >= train_cfg.max_iters:
            loader.close()  # stop this pass's workers now, not when the generator is collected
            return True
    return False


def evaluate(trainer: Trainer, loader, evaluator: DetectionEvaluator, output_dir: Optional[str] = None):
    """Runs `trainer.predict` over `loader`, gathers detections on rank 0; returns the COCO metrics there
    (None on other ranks)."""
    for batch in progress(loader, desc="eval", rank=trainer.rank):
        evaluator.add([t["image_id"] for t in batch["targets"]], trainer.predict(batch))
    gathered = trainer.gather(evaluator.per_image)
    if trainer.rank != 0:
        return None
    return evaluator.summarize(gathered, output_dir)


def numbers(metrics: Dict) -> Dict[str, float]:
    """The scalar entries of an evaluation result (per-class tables dropped)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def fit(trainer: Trainer, cfg, state: TrainState, train_loader, run_eval: Callable[[], Optional[Dict]],
        suffix: str, framework: str) -> None:
    """The epoch loop: train, step the schedule, checkpoint (`checkpoint_last`, and `checkpoint_best` by AP),
    evaluate every `train.eval_interval` epochs and at the end, write eval.json and print the COCO table.

    A run stopped by `train.max_iters` saves where it stopped (mid-epoch), so `--resume auto` continues it.
    """
    rank = trainer.rank
    metrics = MetricsWriter(cfg.output_dir, rank)
    last_path = os.path.join(cfg.output_dir, LAST + suffix)
    best_ap, result = -1.0, None

    def checkpoint(path):
        if rank == 0:
            trainer.save(path, state)

    while state.epoch < cfg.train.epochs:
        train_loader.set_epoch(state.epoch, start_batch=state.step_in_epoch)
        stopped = train_one_epoch(trainer, train_loader, state, cfg.train, metrics)
        if not stopped or state.step_in_epoch >= len(train_loader):
            trainer.end_epoch()
            state.epoch += 1
            state.step_in_epoch = 0
        if stopped or state.epoch % max(cfg.train.checkpoint_interval, 1) == 0 or state.epoch == cfg.train.epochs:
            checkpoint(last_path)
        last = stopped or state.epoch == cfg.train.epochs
        periodic = cfg.train.eval_interval and state.epoch % cfg.train.eval_interval == 0 and state.step_in_epoch == 0
        if last or periodic:
            result = run_eval()
            if rank == 0:
                metrics.write(kind="eval", epoch=state.epoch, iteration=state.iteration, **numbers(result))
                if result["bbox_AP"] > best_ap:
                    best_ap = result["bbox_AP"]
                    checkpoint(os.path.join(cfg.output_dir, BEST + suffix))
        if stopped:
            logger.info("stopped at train.max_iters=%d", cfg.train.max_iters)
            break
    if rank == 0 and result is not None:
        finish(cfg.output_dir, result, framework, last_path, epoch=state.epoch, iteration=state.iteration)


def finish(output_dir: str, result: Dict, framework: str, checkpoint: str, **extra) -> None:
    """Writes OUTPUT_DIR/eval.json and prints the COCO table to stdout."""
    write_eval_json(output_dir, numbers(result), checkpoint=checkpoint, framework=framework, **extra)
    print(report(result), flush=True)
    logger.info("wrote %s", os.path.join(output_dir, "eval.json"))
