"""Two processes of paddle.distributed.launch (gloo, CPU) with 2 images each give the loss and gradients of one
process with the same 4 images."""
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def step(world, out, tmp_path):
    script = [os.path.join(HERE, "ddp_grads.py"), "--out", out]
    launch = ["-m", "paddle.distributed.launch", "--nproc_per_node", "2", "--log_dir", str(tmp_path / "logs")]
    cmd = [sys.executable, *(launch if world > 1 else []), *script]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PADDLE_")}
    r = subprocess.run(cmd, cwd=ROOT, env=dict(env, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    logs = ""
    if r.returncode and world > 1:
        logs = "".join(open(os.path.join(tmp_path, "logs", f)).read()[-2000:] for f in ("workerlog.0", "workerlog.1")
                       if os.path.exists(os.path.join(tmp_path, "logs", f)))
    assert r.returncode == 0, r.stderr[-3000:] + logs
    data = np.load(out)
    return float(data["loss"]), {k[5:]: data[k] for k in data.files if k.startswith("grad/")}


def test_two_gloo_processes_match_one(tmp_path):
    loss1, one = step(1, str(tmp_path / "one.npz"), tmp_path)
    loss2, two = step(2, str(tmp_path / "two.npz"), tmp_path)
    assert abs(loss1 - loss2) <= 1e-5 * abs(loss1), (loss1, loss2)
    assert one.keys() == two.keys()
    assert len(one) > 100  # backbone, transformer, heads: the whole model is compared
    # The bound of the torch test: float32 sums in a different order (per rank, then averaged); per tensor the
    # difference is within 1e-4 of its largest entry, plus 1e-7 of the model's largest gradient.
    scale = max(np.abs(g).max() for g in one.values())
    for k, g in one.items():
        diff = np.abs(g - two[k]).max()
        assert diff <= 1e-4 * np.abs(g).max() + 1e-7 * scale, (k, diff, np.abs(g).max())
    norm = lambda gs: np.sqrt(sum((v.astype(np.float64) ** 2).sum() for v in gs.values()))  # noqa: E731
    assert abs(norm(one) / norm(two) - 1) < 1e-5
