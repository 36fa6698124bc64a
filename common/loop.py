"""The framework-independent part of training: the epoch loop, the step loop, the evaluation pass.

Each framework's engine supplies a `Trainer` (torch_impl/engine.py, paddle_impl/engine.py): the few operations
that touch tensors. Everything else (when to checkpoint, evaluate, log, stop, how a resumed run picks up) is here
once, so the two frameworks cannot drift apart.
"""
import logging
import math
import os
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Protocol, Tuple

import numpy as np

from common.checkpoint import BEST, LAST
from common.errors import TrainingStopped
from common.evaluation.evaluator import DetectionEvaluator, report, write_eval_json
from common.log import MetricsWriter, progress
from common.meters import Meters, log_keys

logger = logging.getLogger("common.loop")


@dataclass
class TrainState:
    """Where training is: the epoch in progress, batches of it done, global iteration, skipped steps (in total
    and in a row), and why it stops early, if it does ("" while it runs)."""
    epoch: int = 0
    step_in_epoch: int = 0
    iteration: int = 0
    skipped_steps: int = 0
    skipped_in_a_row: int = 0
    stop_reason: str = ""


class StopSignals:
    """Turns SIGINT / SIGTERM into a request to stop after the current step (so a checkpoint can be written),
    while installed; a second signal of either kind interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        logger.warning("%s received: stopping after this step and saving a checkpoint (again to abort now)",
                       signal.Signals(signum).name)


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

    def any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on at least one rank (every rank must call it)."""


def step_rngs(seed: int, rank: int, iteration: int) -> Tuple[np.random.Generator, np.random.Generator]:
    """(denoising-noise RNG, one-to-many-subsampling RNG) of one training step: functions of (seed, rank, iteration)
    alone, so a resumed run draws what the uninterrupted one would, and both frameworks draw the same."""
    dn, loss = np.random.SeedSequence([seed, rank, iteration]).spawn(2)
    return np.random.default_rng(dn), np.random.default_rng(loss)


def train_one_epoch(trainer: Trainer, loader, state: TrainState, train_cfg, metrics: MetricsWriter,
                    signals: Optional[StopSignals] = None) -> bool:
    """Trains until the loader ends, or stops early; returns True when it stopped early: `train.max_iters`
    reached, a stop signal on any rank, or `train.max_nonfinite_in_a_row` skipped steps in a row (the last two
    set `state.stop_reason`)."""
    meters = Meters(window=train_cfg.log_interval)
    bar = progress(loader, desc=f"epoch {state.epoch}", total=len(loader) - state.step_in_epoch, rank=trainer.rank)
    for batch in bar:
        loss, losses = trainer.train_step(batch, state.iteration)
        if loss is None:
            state.skipped_steps += 1
            state.skipped_in_a_row += 1
            logger.warning("iteration %d: non-finite loss, step skipped (%d so far)", state.iteration,
                           state.skipped_steps)
        else:
            state.skipped_in_a_row = 0
        state.iteration += 1
        state.step_in_epoch += 1
        meters.update(loss=math.nan if loss is None else loss, **losses)
        if state.iteration % train_cfg.log_interval == 0:
            lr = trainer.lr()
            logger.info("epoch %d iter %d  lr %.2e  %s", state.epoch, state.iteration, lr,
                        meters.format(log_keys(meters.smoothed())))
            bar.set_postfix(loss=f"{meters.smoothed()['loss']:.3f}")
            metrics.write(kind="train", epoch=state.epoch, iteration=state.iteration, lr=lr, **meters.smoothed())
        limit = train_cfg.max_nonfinite_in_a_row
        if limit and state.skipped_in_a_row >= limit:  # the same on every rank: skips are agreed on
            state.stop_reason = (f"{state.skipped_in_a_row} steps in a row had a non-finite loss (iteration "
                                 f"{state.iteration}); lower train.lr or check the data")
        elif trainer.any_rank(signals is not None and signals.received is not None):
            name = signal.Signals(signals.received).name if signals is not None and signals.received else "a signal"
            state.stop_reason = f"stopped by {name} (on some rank) at iteration {state.iteration}"
        if state.stop_reason or (train_cfg.max_iters and state.iteration >= train_cfg.max_iters):
            loader.close()  # stop this pass's workers now, not when the generator is collected
            return True
    return False


def report_skipped(trainer: Trainer, loader, what: str, metrics: Optional[MetricsWriter] = None, **record) -> None:
    """Logs, and writes to metrics.jsonl (kind "skipped") when given `metrics`, what `data.invalid: skip` left out
    of `what` (e.g. "epoch 3"): the images the loader replaced in its last pass, summed over ranks, and the bad
    annotation records the dataset dropped when it was read. Silent when nothing was skipped; every rank calls it."""
    images = Counter()
    if trainer.any_rank(bool(getattr(loader, "skipped", None))):  # loaders without skip counting report nothing
        for part in trainer.gather(dict(loader.skipped)):
            images.update(part)
    records = getattr(getattr(loader, "dataset", None), "skipped", None) or {}
    if not images and not records:
        return
    logger.warning("%s: data.invalid=skip left out %d unusable images %s (each replaced by another) and %d bad "
                   "annotation records %s", what, sum(images.values()), dict(images), sum(records.values()),
                   dict(records))
    if metrics is not None:
        metrics.write(kind="skipped", images=dict(images), records=dict(records), **record)


def evaluate(trainer: Trainer, loader, evaluator: DetectionEvaluator, output_dir: Optional[str] = None,
             draw: int = 0):
    """Runs `trainer.predict` over `loader`, gathers detections on rank 0; returns the COCO metrics there
    (None on other ranks). `draw` > 0: also writes that many images with their detections drawn (test.sh --draw)."""
    for batch in progress(loader, desc="eval", rank=trainer.rank):
        evaluator.add([t["image_id"] for t in batch["targets"]], trainer.predict(batch))
    report_skipped(trainer, loader, "evaluation")
    gathered = trainer.gather(evaluator.per_image)
    if trainer.rank != 0:
        return None
    return evaluator.summarize(gathered, output_dir, draw)


def numbers(metrics: Dict) -> Dict[str, float]:
    """The scalar entries of an evaluation result (per-class tables dropped)."""
    return {k: v for k, v in metrics.items() if not isinstance(v, dict)}


def fit(trainer: Trainer, cfg, state: TrainState, train_loader, run_eval: Callable[[], Optional[Dict]],
        suffix: str, framework: str) -> None:
    """The epoch loop: train, step the schedule, checkpoint (`checkpoint_last`, and `checkpoint_best` by AP),
    evaluate every `train.eval_interval` epochs and at the end, write eval.json and print the COCO table.

    A run stopped by `train.max_iters` saves where it stopped (mid-epoch), so `--resume auto` continues it.
    SIGINT / SIGTERM, or `train.max_nonfinite_in_a_row` skipped steps in a row, also save where training stopped
    (the weights of the last good step: skipped steps change nothing) and raise TrainingStopped, without the
    final evaluation.
    """
    rank = trainer.rank
    metrics = MetricsWriter(cfg.output_dir, rank)
    last_path = os.path.join(cfg.output_dir, LAST + suffix)

    def checkpoint(path):
        if rank == 0:
            trainer.save(path, state)

    with StopSignals() as signals:
        result = _epochs(trainer, cfg, state, train_loader, run_eval, metrics, signals, checkpoint, last_path,
                         os.path.join(cfg.output_dir, BEST + suffix))
    if rank == 0 and result is not None:
        finish(cfg.output_dir, result, framework, last_path, epoch=state.epoch, iteration=state.iteration)


def _epochs(trainer, cfg, state, train_loader, run_eval, metrics, signals, checkpoint, last_path, best_path):
    """fit's loop; returns the last evaluation's metrics (None if none ran)."""
    best_ap, result = -1.0, None
    while state.epoch < cfg.train.epochs:
        train_loader.set_epoch(state.epoch, start_batch=state.step_in_epoch)
        stopped = train_one_epoch(trainer, train_loader, state, cfg.train, metrics, signals)
        report_skipped(trainer, train_loader, f"epoch {state.epoch}", metrics, epoch=state.epoch,
                       iteration=state.iteration)
        if state.stop_reason:
            checkpoint(last_path)
            code = 128 + signals.received if signals.received else 1
            raise TrainingStopped(f"{state.stop_reason}; checkpoint saved to {last_path} (continue with "
                                  f"--resume auto)", code)
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
            if trainer.rank == 0:
                metrics.write(kind="eval", epoch=state.epoch, iteration=state.iteration, **numbers(result))
                if result["bbox_AP"] > best_ap:
                    best_ap = result["bbox_AP"]
                    checkpoint(best_path)
        if stopped:
            logger.info("stopped at train.max_iters=%d", cfg.train.max_iters)
            break
    return result


def finish(output_dir: str, result: Dict, framework: str, checkpoint: str, **extra) -> None:
    """Writes OUTPUT_DIR/eval.json and prints the COCO table to stdout."""
    write_eval_json(output_dir, numbers(result), checkpoint=checkpoint, framework=framework, **extra)
    print(report(result), flush=True)
    logger.info("wrote %s", os.path.join(output_dir, "eval.json"))
