"""Two gloo processes with 2 images each give the loss and gradients of one process with the same 4 images."""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def step(world, out):
    r = subprocess.run([sys.executable, os.path.join(HERE, "ddp_grads.py"), "--world", str(world), "--out", out],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out, weights_only=True)


def test_two_gloo_processes_match_one(tmp_path):
    one = step(1, str(tmp_path / "one.pt"))
    two = step(2, str(tmp_path / "two.pt"))
    assert torch.allclose(one["loss"], two["loss"], rtol=1e-5, atol=1e-6), (one["loss"], two["loss"])
    assert one["grads"].keys() == two["grads"].keys()
    assert len(one["grads"]) > 100  # backbone, transformer, heads: the whole model is compared
    # float32 sums in a different order (per rank, then averaged): per tensor, the difference is bounded by 1e-4
    # of its largest entry, plus 1e-7 of the model's largest gradient for tensors whose gradient is zero up to
    # rounding (a conv bias right before a one-channel-per-group GroupNorm).
    scale = max(g.abs().max() for g in one["grads"].values()).item()
    for k, g in one["grads"].items():
        diff = (g - two["grads"][k]).abs().max().item()
        assert diff <= 1e-4 * g.abs().max().item() + 1e-7 * scale, (k, diff, g.abs().max().item())
    # A wrong normalizer would scale every gradient; equal norms rule that out beyond the element-wise check.
    norm = lambda g: torch.sqrt(sum((v.double() ** 2).sum() for v in g.values()))  # noqa: E731
    assert abs(norm(one["grads"]) / norm(two["grads"]) - 1) < 1e-5
