"""Per-image inference latency of the deploy program (models/deploy.py) in every way the project runs it.

    python -m bench.infer_latency [-c configs/demo.yml] [--repeats 10] [--warmup 3] [--runners NAME ...]

Runners: torch eager on the grid_sample reference path and on the ops/ kernel, Paddle dynamic graph (kernel),
paddle.inference on the export (oneDNN off and on), onnxruntime on the ONNX export. The model is the config's with
random weights (latency does not depend on them); the checkpoints and exports a runner needs are written to a
temporary folder first. Each runner measures in its own process (bench/child.py; batch 1, a fixed random image,
median over `repeats` after `warmup` runs) at the demo's eval resolution (224x288) and at 800x1333, and reports
its peak resident memory (ru_maxrss, the whole process: framework, model and every resolution). Prints a markdown
table with ratios to torch eager (reference path).
"""
import argparse
import os
import resource
import tempfile

from bench.child import call
from bench.timing import median_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = ([224, 288], [800, 1333])
RUNNERS = {  # name -> (framework, label)
    "torch_reference": ("torch", "torch eager, grid_sample reference"),
    "torch_kernel": ("torch", "torch eager, ops/ kernel"),
    "paddle_dynamic": ("paddle", "paddle dynamic graph, ops/ kernel"),
    "paddle_inference": ("paddle", "paddle.inference (export, oneDNN off)"),
    "paddle_inference_onednn": ("paddle", "paddle.inference (export, oneDNN on: wrong results)"),
    "onnxruntime": ("torch", "onnxruntime (ONNX export)"),
}


def inputs(height, width):
    import numpy as np

    rng = np.random.default_rng(0)
    return {"image": rng.standard_normal((1, 3, height, width), dtype=np.float32),
            "im_shape": np.array([[height, width]], np.float32), "scale_factor": np.ones((1, 2), np.float32)}


def load(runner, config, folder, overrides=()):
    """The predict function of `runner` (common/deploy/cli.py's interface); `overrides`: -o of `config`."""
    if runner in ("torch_reference", "torch_kernel"):
        from torch_impl.predictor import EagerPredictor, load_deploy_model

        backend = "reference" if runner == "torch_reference" else "kernel"
        model = load_deploy_model(config, os.path.join(folder, "w.pth"),
                                  [*overrides, f"model.deform_attn_backend={backend}"])[0]
        return EagerPredictor(model)
    if runner == "onnxruntime":
        from torch_impl.predictor import Predictor

        return Predictor(os.path.join(folder, "model.onnx"))
    if runner == "paddle_dynamic":
        from paddle_impl.predictor import eager_predictor

        return eager_predictor(config, os.path.join(folder, "w.pdparams"),
                               [*overrides, "model.deform_attn_backend=kernel"])[0]
    from paddle_impl.predictor import Predictor

    return Predictor(os.path.join(folder, "paddle"), onednn=runner.endswith("onednn"))


def measure(runner, config, folder, sizes, repeats, warmup, overrides=()):
    """{"seconds": {"HxW": median seconds per image}, "peak_mb": peak RSS, "omp_wait_policy"} of one runner, in
    this process."""
    predict = load(runner, config, folder, overrides)
    result = {}
    for height, width in sizes:
        batch = inputs(height, width)
        result[f"{height}x{width}"] = median_time(lambda: predict(batch), warmup, repeats)
    return {"seconds": result, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def prepare_torch(config, folder, onnx, overrides=()):
    """A random-weight torch checkpoint of `config` in `folder` (w.pth) and, with onnx, its ONNX export."""
    import torch

    from common.deploy.infer_cfg import build_infer_cfg, load_model_config
    from torch_impl.checkpoint import save_checkpoint
    from torch_impl.export_onnx import export_onnx
    from torch_impl.models.build import build_model
    from torch_impl.predictor import load_deploy_model

    torch.manual_seed(0)
    save_checkpoint(os.path.join(folder, "w.pth"), build_model(load_model_config(config, overrides)[0])[0])
    if onnx:
        model, cfg, names = load_deploy_model(config, os.path.join(folder, "w.pth"), overrides, export=True)
        export_onnx(model, build_infer_cfg(cfg, names), os.path.join(folder, "model.onnx"))


def prepare_paddle(config, folder, export, overrides=()):
    """A random-weight Paddle checkpoint of `config` in `folder` (w.pdparams) and, with export, its inference
    export (folder/paddle)."""
    import paddle

    from common.deploy.infer_cfg import build_infer_cfg, load_model_config
    from paddle_impl.checkpoint import save_checkpoint
    from paddle_impl.export import export as export_model
    from paddle_impl.models.build import build_model
    from paddle_impl.predictor import load_deploy_model

    paddle.seed(0)
    save_checkpoint(os.path.join(folder, "w.pdparams"), build_model(load_model_config(config, overrides)[0])[0])
    if export:
        model, cfg, names = load_deploy_model(config, os.path.join(folder, "w.pdparams"), overrides, export=True)
        export_model(model, build_infer_cfg(cfg, names), os.path.join(folder, "paddle"))


def prepare(config, folder, runners, overrides=()):
    """What `runners` load, written into `folder`, each framework in its own process."""
    if any(RUNNERS[r][0] == "torch" for r in runners):
        call("bench.infer_latency:prepare_torch", "preparing the torch model", config=config, folder=folder,
             onnx="onnxruntime" in runners, overrides=list(overrides))
    if any(RUNNERS[r][0] == "paddle" for r in runners):
        call("bench.infer_latency:prepare_paddle", "preparing the Paddle model", config=config, folder=folder,
             export=any(r.startswith("paddle_inference") for r in runners), overrides=list(overrides))


def run(config, runners=tuple(RUNNERS), sizes=SIZES, repeats=10, warmup=3, overrides=()):
    """{"config", "sizes", "repeats", "warmup", "runners": {name: {"label", "seconds": {"HxW": s}, "peak_mb",
    "vs_torch_reference": {"HxW": ratio} (when torch_reference ran)}}}."""
    with tempfile.TemporaryDirectory() as folder:
        prepare(config, folder, runners, overrides)
        results = {name: {"label": RUNNERS[name][1],
                          **call("bench.infer_latency:measure", f"inference latency ({name})", runner=name,
                                 config=config, folder=folder, sizes=[list(s) for s in sizes], repeats=repeats,
                                 warmup=warmup, overrides=list(overrides))}
                   for name in runners}
    base = results.get("torch_reference")
    if base:
        for r in results.values():
            r["vs_torch_reference"] = {s: t / base["seconds"][s] for s, t in r["seconds"].items()}
    return {"config": os.path.relpath(config, ROOT), "sizes": [f"{h}x{w}" for h, w in sizes], "repeats": repeats,
            "warmup": warmup, "runners": results}


def table(result):
    """Markdown table of run()'s result."""
    sizes = result["sizes"]
    lines = ["| runner | " + " | ".join(f"{s} ms | vs torch ref." for s in sizes) + " | peak RSS MB |",
             "|---" * (2 + 2 * len(sizes)) + "|"]
    for r in result["runners"].values():
        cells = []
        for s in sizes:
            ratio = r.get("vs_torch_reference")
            cells += [f"{r['seconds'][s] * 1000:.1f}", f"{ratio[s]:.2f}x" if ratio else "-"]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r['peak_mb']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.infer_latency", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=os.path.join(ROOT, "configs", "demo.yml"))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runners", nargs="+", default=list(RUNNERS), choices=list(RUNNERS))
    args = parser.parse_args()
    result = run(args.config, args.runners, SIZES, args.repeats, args.warmup)
    print(f"config {result['config']}, batch 1, median of {args.repeats} after {args.warmup} warm-up, "
          f"{os.cpu_count()} CPUs\n\n{table(result)}")


if __name__ == "__main__":
    main()
