"""A checkpoint save that fails for want of space, in both frameworks: the previous checkpoint stays intact and
loadable, no temp file is left, the error names the file and the cause, and training stops on it.

Disk full is real here: the temp file the save writes is made a symlink to /dev/full, where every write fails
with ENOSPC, so the frameworks' own writers meet the error. End to end, a file-size limit (RLIMIT_FSIZE) makes
the checkpoint write fail with EFBIG inside a real train.sh run.
"""
import os
import resource
import signal

import pytest

if not os.path.exists("/dev/full"):  # Linux has it; the project's tests run on Linux
    raise RuntimeError("these tests need /dev/full")


def torch_saver():
    import torch

    from torch_impl.checkpoint import is_valid_checkpoint, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)

    def save(path, iteration):
        model.weight.data += 1.0  # every save differs
        save_checkpoint(path, model, optimizer, scheduler, iteration=iteration)
    return save, is_valid_checkpoint, lambda path: load_checkpoint(path)["iteration"], [".pth"]


def paddle_saver():
    import paddle

    from paddle_impl.checkpoint import OPT_SUFFIX, is_valid_checkpoint, load_checkpoint, save_checkpoint

    paddle.seed(0)
    model = paddle.nn.Linear(64, 32)
    scheduler = paddle.optimizer.lr.StepDecay(1e-3, 10)
    optimizer = paddle.optimizer.AdamW(scheduler, parameters=model.parameters())

    def save(path, iteration):
        with paddle.no_grad():
            model.weight.set_value(model.weight + 1.0)
        save_checkpoint(path, model, optimizer, scheduler, iteration=iteration)
    return save, is_valid_checkpoint, lambda path: load_checkpoint(path)["iteration"], [".pdparams", OPT_SUFFIX]


SAVERS = {"torch": torch_saver, "paddle": paddle_saver}


def snapshot(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


@pytest.mark.parametrize("framework, full", [("torch", 0), ("paddle", 0), ("paddle", 1)])
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, framework, full):
    """`full`: which of the checkpoint's files meets the full disk (Paddle writes two: .pdparams, then .pdopt)."""
    save, is_valid, iteration_of, suffixes = SAVERS[framework]()
    path = str(tmp_path / f"checkpoint_last{suffixes[0]}")
    save(path, 1)
    save(path, 2)  # now with a .prev copy too
    before = snapshot(tmp_path)
    target = path.replace(suffixes[0], suffixes[full])
    os.symlink("/dev/full", f"{target}.tmp{os.getpid()}")  # the temp file atomic_files writes
    with pytest.raises(OSError) as error:
        save(path, 3)
    message = str(error.value)
    assert message.startswith(f"cannot write {path}")
    cause = {"torch": "RuntimeError: ", "paddle": "OSError: [Errno 28] No space left on device"}[framework]
    assert cause in message and "(disk full? " in message and "the files there are unchanged" in message, message
    assert snapshot(tmp_path) == before  # nothing replaced, no temp file (nor the symlink) left
    assert is_valid(path) and iteration_of(path) == 2
    assert is_valid(path + ".prev") and iteration_of(path + ".prev") == 1
    save(path, 4)  # space again: saving works as before
    assert iteration_of(path) == 4 and iteration_of(path + ".prev") == 2


def limit_file_size():
    """preexec_fn: files may not grow beyond 4 MB (the tiny model's checkpoint is larger; logs are not); a write
    past it then fails with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20))


def test_train_sh_stops_when_a_checkpoint_cannot_be_written(tmp_path, tiny):
    import subprocess

    from conftest import ROOT, child_env

    out = tmp_path / "run"
    args = ["sh", os.path.join(ROOT, "train.sh"), "-c", "configs/demo.yml", "-o", *tiny, "train.epochs=2",
            "eval.max_images=1", "model.deform_attn_backend=reference", f"output_dir={out}"]
    r = subprocess.run(args + ["train.max_iters=1"], cwd=ROOT, capture_output=True, text=True, env=child_env(),
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    before = {k: v for k, v in snapshot(out).items() if k.startswith("checkpoint_")}
    r = subprocess.run(args + ["--resume", "auto"], cwd=ROOT, capture_output=True, text=True, env=child_env(),
                       timeout=600, preexec_fn=limit_file_size)
    assert r.returncode == 1, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"train.sh: OSError: cannot write {out}/checkpoint_last.pth: RuntimeError: "), last
    assert "(disk full? " in last and "Traceback" not in r.stderr
    after = {k: v for k, v in snapshot(out).items() if k.startswith("checkpoint_")}
    assert after == before  # the checkpoint of the first run, untouched; no temp file
