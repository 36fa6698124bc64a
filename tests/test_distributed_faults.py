"""Faults on one rank of a 2-process gloo run, in both frameworks, through the real launchers (torchrun,
paddle.distributed.launch): a rank whose batch has no boxes trains on; a rank whose data loading raises ends the
whole run, promptly, with its error in the output, instead of leaving the other rank waiting in a collective."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, child_env

from common.config import load_config
from common.data.coco import CocoDetection
from common.data.loader import DataLoader

WORLD, BATCH = 2, 2


def launch(framework, tmp_path, overrides, timeout=150):
    """(exit code, launcher output plus the workers' logs, seconds) of `train` on 2 CPU processes."""
    if framework == "torch":
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
               "-m", "common.launch"]
    else:
        cmd = [sys.executable, "-m", "paddle.distributed.launch", "--nproc_per_node", str(WORLD), "--log_dir",
               str(tmp_path / "logs"), "common/launch.py"]
    cmd += ["train", "--framework", framework, "-c", "configs/demo.yml", "-o", *overrides]
    env = {k: v for k, v in child_env(PYTHONPATH=ROOT).items() if not k.startswith("PADDLE_")}
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and every rank
        output, _ = proc.communicate()
        pytest.fail(f"the run did not end within {timeout} s:\n{output[-3000:]}")
    logs = tmp_path / "logs"
    for name in sorted(os.listdir(logs)) if logs.is_dir() else []:
        if name.startswith("workerlog"):
            output += f"\n== {name}\n" + (logs / name).read_text(errors="replace")
    return proc.returncode, output, time.monotonic() - start


def rank1_images(tiny):
    """Positions in the training json of the images rank 1 loads in its first (and, with 6 images, only) batch."""
    cfg = load_config(os.path.join(ROOT, "configs", "demo.yml"), tiny)
    ann = json.load(open(cfg.data.train.ann_file))
    dataset = CocoDetection(cfg.data.train.img_dir, cfg.data.train.ann_file)  # index = position in the json
    loader = DataLoader(dataset, BATCH, shuffle=True, seed=cfg.train.seed, rank=1, world_size=WORLD, drop_last=True)
    assert len(loader) == 1
    return ann, [int(i) for i in loader.batches()[0]]


def with_train_json(tiny, path, data):
    path.write_text(json.dumps(data))
    return tiny + [f"data.train.ann_file={path}"]


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_a_rank_without_boxes_trains_on(tmp_path, tiny, framework):
    """Denoising on (rank 1 then has no denoising queries while rank 0 has some) and the box normalizer averaged
    over ranks: one epoch and the evaluation finish, with a finite loss."""
    ann, positions = rank1_images(tiny)
    empty = {ann["images"][p]["id"] for p in positions}
    assert len({a["image_id"] for a in ann["annotations"]} - empty) >= 4  # rank 0's images keep their boxes
    data = dict(ann, annotations=[a for a in ann["annotations"] if a["image_id"] not in empty])
    out = tmp_path / "out"
    overrides = with_train_json(tiny, tmp_path / "train.json", data) + ["train.epochs=1", f"output_dir={out}"]
    code, output, _ = launch(framework, tmp_path, overrides)
    assert code == 0, output[-4000:]
    losses = [r["loss"] for r in map(json.loads, open(out / "metrics.jsonl")) if r["kind"] == "train"]
    assert len(losses) == 1 and np.isfinite(losses[0])
    assert json.load(open(out / "eval.json"))["bbox_AP"] >= 0


@pytest.mark.parametrize("framework", ["torch", "paddle"])
def test_a_rank_whose_loader_raises_ends_the_run(tmp_path, tiny, framework):
    """Rank 1's first image is missing (data.invalid: strict): rank 1 stops with its one-line error; rank 0, waiting
    for it in the first step's all-reduce, gets a gloo error as soon as rank 1's connection closes, and the
    launcher stops the run with a non-zero code (seconds, not the 30-minute collective timeout)."""
    ann, positions = rank1_images(tiny)
    ann["images"][positions[0]]["file_name"] = "missing_on_rank1.jpg"
    overrides = with_train_json(tiny, tmp_path / "train.json", ann) + ["train.epochs=1",
                                                                       f"output_dir={tmp_path / 'out'}"]
    code, output, seconds = launch(framework, tmp_path, overrides)
    assert code != 0, output[-4000:]
    assert "train.sh: FileNotFoundError: image file not found: " in output and "missing_on_rank1.jpg" in output
    assert seconds < 120, seconds
