"""The shared training loop (common/loop.py) with a fake framework: stopping rules, signals, what is saved."""
import os
import signal
from types import SimpleNamespace

import pytest

from common import loop
from common.errors import TrainingStopped
from common.loop import TrainState, fit


class FakeLoader:
    def __init__(self, n):
        self.n, self.start = n, 0

    def set_epoch(self, epoch, start_batch=0):
        self.start = start_batch

    def __len__(self):
        return self.n

    def __iter__(self):
        return iter(range(self.start, self.n))

    def close(self):
        pass


class FakeTrainer:
    """Steps return the losses of `script(iteration)`: a float, or None for a skipped (non-finite) step."""
    rank = 0

    def __init__(self, script):
        self.script, self.saved, self.evals = script, [], 0

    def train_step(self, batch, iteration):
        loss = self.script(iteration)
        return loss, {"loss_ce": 0.0 if loss is None else loss}

    def lr(self):
        return 1e-4

    def end_epoch(self):
        pass

    def save(self, path, state):
        self.saved.append((os.path.basename(path), state.epoch, state.step_in_epoch, state.iteration))

    def any_rank(self, flag):
        return flag


def config(tmp_path, **train):
    base = dict(epochs=3, log_interval=100, max_iters=0, eval_interval=0, checkpoint_interval=1,
                max_nonfinite_in_a_row=4, seed=0)
    return SimpleNamespace(output_dir=str(tmp_path), train=SimpleNamespace(**dict(base, **train)))


def run(trainer, cfg, n=5):
    state = TrainState()
    fit(trainer, cfg, state, FakeLoader(n), run_eval=lambda: pytest.fail("no evaluation after a stop"),
        suffix=".ckpt", framework="fake")
    return state


def test_nonfinite_losses_in_a_row_stop_with_a_checkpoint(tmp_path):
    trainer = FakeTrainer(lambda it: None if it >= 6 else 1.0)  # iterations 6, 7, 8, 9 are skipped
    with pytest.raises(TrainingStopped, match="4 steps in a row had a non-finite loss") as e:
        run(trainer, config(tmp_path))
    assert e.value.exit_code == 1
    # epoch 0 (5 steps) saved at its end; then the stop mid-epoch 1 after iteration 9
    assert trainer.saved == [("checkpoint_last.ckpt", 1, 0, 5), ("checkpoint_last.ckpt", 1, 5, 10)]


def test_scattered_nonfinite_losses_are_only_counted(tmp_path, monkeypatch):
    finished = []
    monkeypatch.setattr(loop, "finish", lambda *a, **k: finished.append(a))  # no COCO table for a fake result
    trainer = FakeTrainer(lambda it: None if it % 2 else 1.0)
    state = TrainState()
    fit(trainer, config(tmp_path, max_nonfinite_in_a_row=2), state, FakeLoader(5),
        run_eval=lambda: {"bbox_AP": 0.0}, suffix=".ckpt", framework="fake")
    assert state.iteration == 15 and state.skipped_steps == 7 and len(finished) == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_after_the_step_and_saves(tmp_path, sig):
    def script(it):
        if it == 2:
            os.kill(os.getpid(), sig)  # arrives inside the step, as a real one would
        return 1.0

    before = signal.getsignal(sig)
    trainer = FakeTrainer(script)
    with pytest.raises(TrainingStopped, match=f"stopped by {sig.name}") as e:
        run(trainer, config(tmp_path))
    assert e.value.exit_code == 128 + sig
    assert trainer.saved == [("checkpoint_last.ckpt", 0, 3, 3)]  # the step in progress finished, then saved
    assert signal.getsignal(sig) is before  # the handlers are the caller's again
