"""Killed and interrupted training, in both frameworks, on real processes: SIGTERM saves a checkpoint and exits
143; SIGKILL loses at most the current epoch; either way `--resume auto` ends with the weights of an
uninterrupted run (CPU, same seed)."""
import json
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import child_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CKPT = {"torch": "checkpoint_last.pth", "paddle": "checkpoint_last.pdparams"}


def final_weights(framework, out):
    path = os.path.join(out, CKPT[framework])
    if framework == "torch":
        import torch

        return {k: v.numpy() for k, v in torch.load(path, map_location="cpu", weights_only=True)["model"].items()}
    import paddle

    return {k: v.numpy() for k, v in paddle.load(path).items()}


def start(framework, tiny, out, *extra):
    cmd = ["sh", os.path.join(ROOT, "train.sh"), "--framework", framework, "-c", "configs/demo.yml", "-o", *tiny,
           "train.epochs=5", "train.lr_drop=[3]", "train.eval_interval=0", f"output_dir={out}", *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=child_env())


def wait_for_iteration(proc, out, iteration, timeout=300):
    """Blocks until metrics.jsonl shows `iteration` (the process is then inside the python trainer)."""
    path = os.path.join(out, "metrics.jsonl")
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if os.path.exists(path):
            lines = [json.loads(x) for x in open(path) if x.strip()]
            if any(x.get("iteration", 0) >= iteration for x in lines):
                return
        time.sleep(0.05)
    pytest.fail(f"training did not reach iteration {iteration} in {timeout} s")


def assert_same_weights(a, b, context=""):
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), (k, context)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny):
    """framework -> final weights of the uninterrupted 5-epoch run (computed once per framework)."""
    cache = {}

    def get(framework):
        if framework not in cache:
            out = str(tmp_path_factory.mktemp(f"full_{framework}"))
            proc = start(framework, tiny, out)
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            cache[framework] = final_weights(framework, out)
            shutil.rmtree(out)  # 0.4 GB of checkpoints; the weights are all the tests need
        return cache[framework]
    return get


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_sigterm_saves_and_resume_finishes_the_same(tmp_path, tiny, uninterrupted, framework):
    out = str(tmp_path / "run")
    proc = start(framework, tiny, out)
    wait_for_iteration(proc, out, 7)  # 3 iterations per epoch: inside epoch 2
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("train.sh: stopped by SIGTERM") and "--resume auto" in last, last
    proc = start(framework, tiny, out, "--resume", "auto")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "resumed from" in err, err[-3000:]
    resumed = [x for x in err.splitlines() if "resumed from" in x]
    assert_same_weights(final_weights(framework, out), uninterrupted(framework), resumed)


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_sigkill_loses_at_most_the_epoch_in_progress(tmp_path, tiny, uninterrupted, framework):
    out = str(tmp_path / "run")
    proc = start(framework, tiny, out)
    wait_for_iteration(proc, out, 5)  # epoch 1 in progress; epoch 0 was checkpointed
    proc.kill()
    proc.communicate(timeout=60)
    proc = start(framework, tiny, out, "--resume", "auto")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "resumed from" in err, err[-3000:]
    resumed = [x for x in err.splitlines() if "resumed from" in x]
    assert_same_weights(final_weights(framework, out), uninterrupted(framework), resumed)
