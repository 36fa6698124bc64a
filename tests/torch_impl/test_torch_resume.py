"""Resume equivalence: N steps in one run == k steps, kill, `--resume auto`, the rest (same weights, bit for bit)."""
import os

import torch


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_resume_mid_epoch_gives_the_same_weights(tmp_path, tiny, run_sh):
    common = ["-c", "configs/demo.yml", "-o", *tiny, "train.epochs=2", "train.lr_drop=[1]"]
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    r = run_sh("train.sh", *common, f"output_dir={full}")
    assert r.returncode == 0, r.stderr[-2000:]
    # 6 images, batch 2, drop_last: 3 iterations per epoch; stop inside the second epoch, then resume.
    r = run_sh("train.sh", *common, f"output_dir={split}", "train.max_iters=4")
    assert r.returncode == 0, r.stderr[-2000:]
    stopped = weights(os.path.join(split, "checkpoint_last.pth"))
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["iteration"]) == (1, 1, 4)
    r = run_sh("train.sh", *common, f"output_dir={split}", "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr

    a, b = weights(os.path.join(full, "checkpoint_last.pth")), weights(os.path.join(split, "checkpoint_last.pth"))
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"]) == (2, 6)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["lr_scheduler"] == b["lr_scheduler"]
    for k, state in a["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], b["optimizer"]["state"][k]["exp_avg"]), k
    # A run that changed nothing would pass the comparison trivially: training must have moved the weights.
    assert not torch.equal(a["model"]["class_embed.0.weight"], stopped["model"]["class_embed.0.weight"])


def test_finetune_loads_weights_only(tmp_path, tiny, run_sh):
    src = str(tmp_path / "src")
    r = run_sh("train.sh", "-c", "configs/demo.yml", "-o", *tiny, "train.max_iters=2", f"output_dir={src}")
    assert r.returncode == 0, r.stderr[-2000:]
    dst = str(tmp_path / "dst")
    r = run_sh("train.sh", "-c", "configs/demo.yml", "-t", os.path.join(src, "checkpoint_last.pth"), "-o", *tiny,
               "train.max_iters=1", f"output_dir={dst}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fine-tuning from" in r.stderr
    ck = weights(os.path.join(dst, "checkpoint_last.pth"))
    assert ck["iteration"] == 1 and ck["epoch"] == 0  # the counters start afresh
