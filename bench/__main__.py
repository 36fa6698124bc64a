"""The benchmark suite: training step, inference latency, deformable attention, matching and COCO evaluation.

    python -m bench [--quick] [--output bench/results.json]

Prints a markdown table per section as it finishes and writes every figure, with the machine's description, to
--output (JSON). Every figure is a median over repeated runs after warm-up; every comparison is a ratio of two
figures measured in this run. Each measurement runs in a process of its own (bench/child.py), one after the other.
--quick: the demo config only, smaller sizes, fewer repeats, inference on the dynamic graphs only (exporting takes
most of a minute) and OMP_WAIT_POLICY=PASSIVE unless set (docs/performance.md, "Shared machines"): a smoke run of
every section, not numbers to quote. What the figures mean: docs/performance.md.
"""
import argparse
import json
import os
import sys
import tempfile
import time

from bench import coco_eval, demo_data, infer_latency, matching, ms_deform_attn, train_step
from bench.child import BenchError, call
from bench.timing import machine_info
from common.data.demo import CLASSES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO, R50 = "configs/demo.yml", "configs/dac_cdn_r50_12ep.yml"
R50_RANDOM = ["model.backbone.pretrained=null", "model.num_classes=91"]  # random init, COCO's 91 class ids
FIVE_RUNNERS = ["torch_reference", "torch_kernel", "paddle_dynamic", "paddle_inference", "onnxruntime"]
# train: (config, fixed batch size [H, W] or None for the demo training data, warm-up steps, timed steps)
# demo_overrides: added to the demo config's -o (quick: smaller training images)
PLANS = {
    "full": {"demo": (64, 200), "train": [(DEMO, None, 3, 11), (DEMO, [512, 512], 2, 5), (R50, [512, 512], 1, 3)],
             "loader": (2, 20), "infer": (FIVE_RUNNERS, infer_latency.SIZES, 3, 10), "matching": (3, 20),
             "coco": (1, 5), "demo_overrides": []},
    "quick": {"demo": (16, 50), "train": [(DEMO, None, 1, 2)], "loader": (1, 5),
              "demo_overrides": ["data.train.scales=[160]", "data.train.max_size=240", "data.train.crop_prob=0.0"],
              "infer": (FIVE_RUNNERS[:3], [[160, 224]], 1, 2), "matching": (1, 5), "coco": (1, 2)},
}


def section(title, started):
    print(f"bench: {title} ({time.time() - started:.0f} s so far)", file=sys.stderr, flush=True)


def train_section(plan, data, started):
    """Training-step rows of every case, and the DataLoader's share of a step on the demo data."""
    rows = []
    for config, size, warmup, steps in plan["train"]:
        section(f"training step, {config}, {'demo data' if size is None else size}", started)
        overrides = R50_RANDOM if config == R50 else data + ([f"model.num_classes={len(CLASSES)}"] if size else [])
        rows += train_step.run(config, overrides, size, steps, warmup, ("kernel", "reference"))
    section("data loading", started)
    warmup, batches = plan["loader"]
    loading = call("bench.train_step:loader_seconds", "data loading", config=DEMO, overrides=data, batches=batches,
                   warmup=warmup)
    steps = {r["framework"]: r["seconds_per_iter"] for r in rows
             if r["config"] == "demo" and r["input"] == "training data" and r["backend"] == "kernel"}
    loading["share_of_step"] = {fw: loading["seconds_per_batch"] / (loading["seconds_per_batch"] + s)
                                for fw, s in steps.items()}
    return {"rows": rows, "data_loading": loading}


def train_table(result):
    loading = result["data_loading"]
    shares = ", ".join(f"{100 * s:.1f}% of a {fw} step" for fw, s in loading["share_of_step"].items())
    return (train_step.table(result["rows"]) + f"\n\nData loading (demo training data, batch {loading['batch_size']}, "
            f"num_workers=0): {loading['seconds_per_batch']:.3f} s per batch = {shares} (kernel, demo data) "
            "when loading is not overlapped")


def run(quick):
    """Every section's results, printed as they come -> the JSON document."""
    plan, started = PLANS["quick" if quick else "full"], time.time()
    results = {"suite": {"quick": quick, "plan": plan}, "machine": machine_info()}
    with tempfile.TemporaryDirectory() as folder:
        section("demo data", started)
        data = demo_data.make(folder, *plan["demo"]) + plan["demo_overrides"]
        section("matching", started)
        results["matching"] = call("bench.matching:measure", "matching", warmup=plan["matching"][0],
                                   repeats=plan["matching"][1])
        print(f"## Matching\n\n{matching.table(results['matching'])}\n", flush=True)
        section("COCO evaluation", started)
        results["coco_eval"] = call("bench.coco_eval:measure", "COCO evaluation",
                                    ann_file=os.path.join(folder, "instances_val.json"), warmup=plan["coco"][0],
                                    repeats=plan["coco"][1])
        print(f"## COCO evaluation\n\n{coco_eval.table(results['coco_eval'])}\n", flush=True)
        section("deformable attention", started)
        results["ms_deform_attn"] = ms_deform_attn.run(quick=quick)
        print(f"## Deformable attention\n\n{ms_deform_attn.table(results['ms_deform_attn'])}\n", flush=True)
        results["train_step"] = train_section(plan, data, started)
        print(f"## Training step\n\n{train_table(results['train_step'])}\n", flush=True)
        section("inference latency", started)
        runners, sizes, warmup, repeats = plan["infer"]
        results["inference"] = infer_latency.run(DEMO, runners, sizes, repeats, warmup, data)
        print(f"## Inference latency (batch 1)\n\n{infer_latency.table(results['inference'])}\n", flush=True)
    results["suite"]["seconds"] = time.time() - started
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="demo config only, smaller sizes, fewer repeats")
    parser.add_argument("--output", default=os.path.join(ROOT, "bench", "results.json"), help="the JSON results file")
    args = parser.parse_args(argv)
    folder = os.path.dirname(os.path.abspath(args.output))
    try:  # before the run, not after it
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        sys.exit(f"bench: --output {args.output}: cannot create {folder}: {e.strerror}")
    if not os.access(folder, os.W_OK):
        sys.exit(f"bench: --output {args.output}: {folder} is not writable; choose another --output")
    if args.quick:  # torch's spinning OpenMP threads would make its duration unbounded on a busy machine
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        results = run(args.quick)
    except BenchError as e:
        sys.exit(f"bench: {e}")
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1)
    m = results["machine"]
    print(f"{m['cpu_model']}, {m['usable_cpus']} usable CPUs, load average {m['load_average_1_5_15min'][0]} at "
          f"start and {m['load_average_at_end'][0]} at end; torch {m['versions']['torch']}, paddle "
          f"{m['versions']['paddlepaddle']}; {m['date']}; {results['suite']['seconds']:.0f} s; wrote {args.output}")


if __name__ == "__main__":
    main()
