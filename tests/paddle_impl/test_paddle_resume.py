"""Resume equivalence: N steps in one run == k steps, kill, `--resume auto`, the rest (same weights, bit for bit)."""
import os

import numpy as np
import paddle


def weights(path):
    return {k: v.numpy() for k, v in paddle.load(path).items()}


def train_state(path):
    return paddle.load(path.replace(".pdparams", ".pdopt"))


def test_resume_mid_epoch_gives_the_same_weights(tmp_path, tiny, run_sh):
    common = ["--framework", "paddle", "-c", "configs/demo.yml", "-o", *tiny, "train.epochs=2", "train.lr_drop=[1]"]
    full, split = str(tmp_path / "full"), str(tmp_path / "split")
    r = run_sh("train.sh", *common, f"output_dir={full}")
    assert r.returncode == 0, r.stderr[-2000:]
    # 6 images, batch 2, drop_last: 3 iterations per epoch; stop inside the second epoch, then resume.
    r = run_sh("train.sh", *common, f"output_dir={split}", "train.max_iters=4")
    assert r.returncode == 0, r.stderr[-2000:]
    stopped_path = os.path.join(split, "checkpoint_last.pdparams")
    stopped, stopped_state = weights(stopped_path), train_state(stopped_path)
    assert (stopped_state["epoch"], stopped_state["step_in_epoch"], stopped_state["iteration"]) == (1, 1, 4)
    r = run_sh("train.sh", *common, f"output_dir={split}", "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed from" in r.stderr

    pa, pb = os.path.join(full, "checkpoint_last.pdparams"), os.path.join(split, "checkpoint_last.pdparams")
    a, b = weights(pa), weights(pb)
    sa, sb = train_state(pa), train_state(pb)
    assert (sa["epoch"], sa["iteration"]) == (sb["epoch"], sb["iteration"]) == (2, 6)
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert sa["lr_scheduler"] == sb["lr_scheduler"]
    moments = [k for k in sa["optimizer"] if "moment1" in k]
    assert moments
    for k in moments:
        assert np.array_equal(sa["optimizer"][k].numpy(), sb["optimizer"][k].numpy()), k
    # A run that changed nothing would pass the comparison trivially: training must have moved the weights.
    assert not np.array_equal(a["class_embed.0.weight"], stopped["class_embed.0.weight"])


def test_interrupted_save_falls_back_to_the_previous_pair(tmp_path, tiny, run_sh):
    """A .pdopt that does not belong to its .pdparams (a crash between the two writes) is not resumed from."""
    out = str(tmp_path / "run")
    common = ["--framework", "paddle", "-c", "configs/demo.yml", "-o", *tiny, "train.epochs=2", f"output_dir={out}"]
    r = run_sh("train.sh", *common, "train.max_iters=4")  # saves after epoch 0 (iteration 3) and at iteration 4
    assert r.returncode == 0, r.stderr[-2000:]
    last = os.path.join(out, "checkpoint_last.pdparams")
    state = weights(last)
    state["class_embed.0.bias"] = state["class_embed.0.bias"] + 1.0  # a newer .pdparams without its .pdopt
    paddle.save({k: paddle.to_tensor(v) for k, v in state.items()}, last)
    r = run_sh("train.sh", *common, "train.max_iters=5", "--resume", "auto")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {last}.prev (epoch 1, iteration 3)" in r.stderr


def test_finetune_loads_weights_only(tmp_path, tiny, run_sh):
    src = str(tmp_path / "src")
    fw = ["--framework", "paddle"]
    r = run_sh("train.sh", *fw, "-c", "configs/demo.yml", "-o", *tiny, "train.max_iters=2", f"output_dir={src}")
    assert r.returncode == 0, r.stderr[-2000:]
    dst = str(tmp_path / "dst")
    r = run_sh("train.sh", *fw, "-c", "configs/demo.yml", "-t", os.path.join(src, "checkpoint_last.pdparams"),
               "-o", *tiny, "train.max_iters=1", f"output_dir={dst}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fine-tuning from" in r.stderr
    st = train_state(os.path.join(dst, "checkpoint_last.pdparams"))
    assert st["iteration"] == 1 and st["epoch"] == 0  # the counters start afresh
