"""`python -m bench --quick` end to end: every section of the JSON holds finite positive figures, the two COCO
evaluators give identical metrics, the markdown tables are printed. No timing assertions: the figures are whatever
this machine gives."""
import json
import math
import subprocess
import sys

from conftest import ROOT, child_env

SECTIONS = ("train_step", "inference", "ms_deform_attn", "matching", "coco_eval")


def numbers(obj, path=""):
    """(path, value) of every number in a JSON document (bools are not numbers here)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_bench_quick(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--output", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800, env=child_env(PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())

    machine = results["machine"]
    for key in ("cpu_model", "usable_cpus", "date"):
        assert machine[key]
    assert machine["versions"]["torch"] and machine["versions"]["paddlepaddle"]
    assert results["suite"]["quick"] is True
    for section in SECTIONS:
        found = list(numbers(results[section], section))
        assert found, f"{section} holds no figure"
        bad = [(p, v) for p, v in found if not (math.isfinite(v) and v > 0)]
        assert not bad, f"figures that are not finite and positive: {bad[:5]}"

    rows = results["train_step"]["rows"]
    assert {(row["framework"], row["backend"]) for row in rows} == {(fw, b) for fw in ("torch", "paddle")
                                                               for b in ("kernel", "reference")}
    for row in rows:  # the parts are inside the step
        assert row["matching_s"] <= row["criterion_s"] <= row["seconds_per_iter"]
        assert row["forward_s"] + row["criterion_s"] <= row["seconds_per_iter"]
        assert row["hungarian_calls_per_step"] > 0
    assert set(results["train_step"]["data_loading"]["share_of_step"]) == {"torch", "paddle"}
    assert set(results["inference"]["runners"]) >= {"torch_reference", "torch_kernel", "paddle_dynamic"}
    assert {row["framework"] for fw in results["ms_deform_attn"]["frameworks"].values()
            for row in fw["rows"]} == {"torch", "paddle"}

    coco = results["coco_eval"]
    assert coco["identical"] is True
    assert coco["AP"]["faster"] == coco["AP"]["pycocotools"]
    for title in ("## Training step", "## Inference latency", "## Deformable attention", "## Matching",
                  "## COCO evaluation"):
        assert title in proc.stdout


def test_paddle_ops_ab_runs(tmp_path):
    """`python -m bench.paddle_ops_ab` on a few demo images: one round, every mode timed, the table printed."""
    from bench import demo_data
    overrides = demo_data.make(tmp_path / "data", num_train=8, num_val=2) + [
        "data.train.scales=[160]", "data.train.max_size=240", "data.train.crop_prob=0.0"]
    proc = subprocess.run([sys.executable, "-m", "bench.paddle_ops_ab", "--rounds", "1", "--steps", "1", "-o",
                           *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=child_env(PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "x |" in line]
    assert [r.split(" | ")[0][2:] for r in rows] == ["all ops", "Paddle's Linear", "Paddle's Linear, clip and AdamW"]
    assert all(float(r.split(" | ")[1]) > 0 for r in rows)
