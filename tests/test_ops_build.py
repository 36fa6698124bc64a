"""ops.build: cache directory naming, failure reporting, and the inter-process build lock."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops import build

ROOT = Path(__file__).resolve().parents[1]


def test_build_dir_is_keyed_by_framework_version_and_sources(monkeypatch, tmp_path):
    import torch
    monkeypatch.setenv("DETR_OPS_BUILD_DIR", str(tmp_path))
    first = build.build_dir("torch", cuda=False)
    assert first.parent == tmp_path and first.name.startswith(f"torch-{torch.__version__}-")
    assert build.build_dir("torch", cuda=True) != first
    # a changed source must not reuse the old library
    csrc = tmp_path / "csrc"
    csrc.mkdir()
    for name in build.CORE + build.BINDINGS["torch"]:
        (csrc / name).write_bytes((build.CSRC / name).read_bytes())
    monkeypatch.setattr(build, "CSRC", csrc)
    assert build.build_dir("torch", cuda=False) == first
    with open(csrc / "ms_deform_attn_cpu.h", "a") as fh:
        fh.write("// edited\n")
    assert build.build_dir("torch", cuda=False) != first


def test_default_build_dir_is_under_the_user_cache(monkeypatch):
    monkeypatch.delenv("DETR_OPS_BUILD_DIR", raising=False)
    assert build.build_dir("paddle", cuda=False).parent == Path.home() / ".cache" / "dac_detr_ops"


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler: 'no-such-compiler-xyz' is not on PATH"):
        build.load("torch")


def test_compiler_failure_becomes_one_line_error(monkeypatch, tmp_path):
    def failing_loader(out, cuda, verbose):
        print("compiler chatter that must not reach the terminal")
        raise RuntimeError("error: expected ';' before '}' token\nmany more lines\nof compiler output")

    monkeypatch.setenv("DETR_OPS_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_load_torch", failing_loader)
    with pytest.raises(RuntimeError) as info:
        build.load("torch")
    message = str(info.value)
    assert "\n" not in message and "expected ';' before '}' token" in message and "torch" in message


def test_unknown_framework():
    with pytest.raises(ValueError, match="framework must be 'torch' or 'paddle'"):
        build.load("jax")


def test_file_lock_serializes_processes(tmp_path):
    # each process holds the lock 0.4 s and records when it held it; the intervals must not overlap
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from ops.build import _file_lock
        with _file_lock(Path({str(tmp_path / 'x.lock')!r})):
            start = time.time()
            time.sleep(0.4)
            print(start, time.time())
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    spans = sorted(tuple(map(float, p.communicate(timeout=60)[0].split())) for p in procs)
    assert all(p.returncode == 0 for p in procs)
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end


def test_concurrent_first_builds_both_succeed(tmp_path):
    # two processes race to build the paddle op into an empty cache: the lock makes one build and the other
    # reuse the result, and both can run the op
    script = textwrap.dedent("""
        import numpy as np, paddle
        from ops.paddle_ms_deform_attn import ms_deform_attn
        from ops.testing import random_inputs
        tensors = [paddle.to_tensor(a) for a in random_inputs(np.random.default_rng(0), 1, 2, 4, 3, [[2, 3]], 2)]
        out = ms_deform_attn(*tensors, backend="kernel")
        ref = ms_deform_attn(*tensors, backend="reference")
        assert np.abs(out.numpy() - ref.numpy()).max() < 1e-5
        print("ok")
    """)
    env = {**os.environ, "DETR_OPS_BUILD_DIR": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0 and out.strip() == "ok", err
    assert len([d for d in tmp_path.iterdir() if d.is_dir()]) == 1
