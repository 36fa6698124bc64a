"""Reproducible batch loader: per-sample rng from (seed, epoch, index), distributed sharding, and
forked worker processes.

Each batch is loaded and collated as one task; its content depends only on (seed, epoch, indices), so
batches are identical for any num_workers. Workers are forked and must only use numpy/PIL (no torch or
paddle state is safe to use after fork).

A sample whose `load` raises SkippedImage (an unusable image under `data.invalid: skip`) is replaced by the next
loadable sample of the dataset, drawing from the skipped sample's rng: batch sizes, the number of batches and so
every rank's steps stay as they were, and an all-skipped batch cannot happen. Replacements are counted by reason
in `DataLoader.skipped`.
"""
import multiprocessing
import pickle
import queue
import signal
import traceback
import weakref
from collections import Counter

import numpy as np

from .collate import collate


class SkippedImage(Exception):
    """Raised by a dataset's `load(index, rng)`, before it draws from `rng`, for a sample to leave out; `reason`
    keys the skip counts, `detail` names the file and the problem."""

    def __init__(self, reason, detail):
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail

    def __str__(self):
        return self.detail


def sample_rng(seed, epoch, index):
    """The generator every augmentation of sample `index` in `epoch` draws from."""
    return np.random.default_rng([seed, epoch, index])


def load_sample(dataset, index, rng, skipped):
    """dataset.load(index, rng); if that raises SkippedImage, counts its reason in `skipped` (a Counter) and
    loads the next index that loads (wrapping around), with the same `rng`."""
    for offset in range(len(dataset)):
        try:
            return dataset.load((index + offset) % len(dataset), rng)
        except SkippedImage as e:
            if offset == 0:  # count the sample left out, not the replacements tried for it
                skipped[e.reason] += 1
            last = e
    raise ValueError(f"no image of the dataset can be used (data.invalid: skip); the last one tried: {last}")


def load_batch(dataset, indices, seed, epoch, size_divisibility=0):
    """Load samples `indices` (int [b]) with their own rngs and collate them -> (batch, {reason: samples
    replaced})."""
    skipped = Counter()
    samples = [load_sample(dataset, int(i), sample_rng(seed, epoch, int(i)), skipped) for i in indices]
    return collate(samples, size_divisibility), dict(skipped)


def _portable_error(error):
    """`error` if it survives pickling (so the main process re-raises the same type and message),
    else a RuntimeError carrying its type and message."""
    try:
        return pickle.loads(pickle.dumps(error))
    except Exception:
        return RuntimeError(f"{type(error).__name__}: {error}")


class WorkerTraceback(Exception):
    """Where a loader worker raised: set as the __cause__ of the error re-raised in the main process."""

    def __str__(self):
        return f"raised in a data loader worker:\n{self.args[0]}"


def _worker_loop(dataset, tasks, results, seed, size_divisibility):
    # Ctrl-C reaches the whole process group; the main process handles it and stops the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A SIGTERM handler inherited from the trainer must not keep terminate() from stopping us.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        task = tasks.get()
        if task is None:
            return
        number, epoch, indices = task
        try:
            # Pickle here rather than in the queue's feeder thread, where a failure would be lost.
            payload = pickle.dumps(load_batch(dataset, indices, seed, epoch, size_divisibility),
                                   protocol=pickle.HIGHEST_PROTOCOL)
            results.put((number, payload, None))
        except Exception as e:
            results.put((number, None, (_portable_error(e), traceback.format_exc())))


class DataLoader:
    """Iterates collated batches (see collate.py) of `dataset`, which must provide len() and
    `load(index, rng) -> (image, target)`.

    Per epoch, the sample order is a permutation drawn from default_rng([seed, epoch]) (shuffle=True)
    or 0..n-1; it is padded by repeating its start to a multiple of world_size, as torch's
    DistributedSampler does, and rank takes every world_size-th entry from position rank.
    """

    def __init__(self, dataset, batch_size, shuffle=True, seed=0, num_workers=0, drop_last=False,
                 rank=0, world_size=1, size_divisibility=0):
        if not callable(getattr(dataset, "load", None)):
            raise TypeError(f"{type(dataset).__name__} has no load(index, rng) method")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"need batch_size >= 1 and num_workers >= 0, got {batch_size}, {num_workers}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.size_divisibility = size_divisibility
        self.epoch = 0
        self.start_batch = 0
        self.skipped = Counter()  # samples replaced (SkippedImage) in the current pass, by reason
        self._running = None  # weak reference to the unfinished iteration, if any

    def set_epoch(self, epoch, start_batch=0):
        """Select the epoch's order; iteration then starts at batch `start_batch` (earlier batches are
        skipped without loading them, to resume mid-epoch). Applies until the next set_epoch."""
        self.epoch = epoch
        self.start_batch = start_batch

    def indices(self):
        """This rank's sample indices for the current epoch, int64 [ceil(n / world_size)]."""
        n = len(self.dataset)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        padded = -(-n // self.world_size) * self.world_size
        return np.resize(order, padded)[self.rank::self.world_size].astype(np.int64)

    def batches(self):
        """The current epoch's batches for this rank, as index arrays (start_batch not applied)."""
        indices = self.indices()
        batches = [indices[k: k + self.batch_size] for k in range(0, len(indices), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self):
        per_rank = -(-len(self.dataset) // self.world_size)
        return per_rank // self.batch_size if self.drop_last else -(-per_rank // self.batch_size)

    def __iter__(self):
        """A new pass over the current epoch; an unfinished earlier pass is stopped first."""
        self.close()
        self.skipped = Counter()
        batches = self.batches()[self.start_batch:]
        if self.num_workers == 0:
            loaded = (load_batch(self.dataset, indices, self.seed, self.epoch, self.size_divisibility)
                      for indices in batches)
        else:
            loaded = self._iter_workers(batches)
        iterator = self._counted(loaded)
        self._running = weakref.ref(iterator)
        return iterator

    def _counted(self, loaded):
        """Yield the batches of (batch, skipped) pairs, adding up the skips of the pass."""
        try:
            for batch, skipped in loaded:
                self.skipped.update(skipped)
                yield batch
        finally:
            loaded.close()

    def close(self):
        """Stop the workers of an unfinished pass now (e.g. after leaving the loop early); otherwise that
        happens when the pass is garbage-collected or the next one starts."""
        iterator = self._running() if self._running is not None else None
        if iterator is not None:
            iterator.close()
        self._running = None

    def _iter_workers(self, batches):
        """Yield batches in order from forked workers, with at most 2 * num_workers batches in flight."""
        try:
            context = multiprocessing.get_context("fork")
        except ValueError:
            raise RuntimeError("num_workers > 0 needs the 'fork' start method (Linux); "
                               "set data.num_workers: 0 on this platform") from None
        tasks, results = context.Queue(), context.Queue()
        workers = [context.Process(target=_worker_loop, daemon=True,
                                   args=(self.dataset, tasks, results, self.seed, self.size_divisibility))
                   for _ in range(self.num_workers)]
        for worker in workers:
            worker.start()
        finished = False
        try:
            sent, ready = 0, {}
            for number in range(len(batches)):
                while sent < min(len(batches), number + 2 * self.num_workers):
                    tasks.put((sent, self.epoch, batches[sent]))
                    sent += 1
                while number not in ready:
                    got, payload, error = self._receive(results, workers)
                    if error is not None:
                        exception, worker_traceback = error
                        raise exception from WorkerTraceback(worker_traceback)
                    ready[got] = payload
                yield pickle.loads(ready.pop(number))
            finished = True
        finally:
            _shutdown(workers, tasks, results, graceful=finished)

    @staticmethod
    def _receive(results, workers):
        """Next worker message; raises instead of waiting forever when a worker has died."""
        while True:
            try:
                return results.get(timeout=1.0)
            except queue.Empty:
                dead = [w for w in workers if not w.is_alive()]
                if dead:
                    raise RuntimeError(f"data loader worker (pid {dead[0].pid}) exited unexpectedly with code "
                                       f"{dead[0].exitcode}; it may have run out of memory") from None


def _shutdown(workers, tasks, results, graceful):
    """Stop the workers: ask them to exit after a full pass; otherwise (early stop, error) they may be
    mid-batch, so terminate them, and kill any that outlive that. Never blocks on the queues."""
    if graceful:
        for _ in workers:
            tasks.put(None)
        for worker in workers:
            worker.join(timeout=5.0)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=5.0)
        if worker.is_alive():
            worker.kill()
            worker.join()
    tasks.cancel_join_thread()
    tasks.close()
    results.close()
