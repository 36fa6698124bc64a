"""The DAC effect on the demo data: dac_cdn vs dino vs deformable_detr at equal iterations, several seeds.

    python -m tools.dac_effect [--framework torch] [--epochs 2] [--seeds 0 1 2] [--parallel 2] [--out DIR]
                               [--nms-iou 0.8]

Each run is `configs/demo.yml` with one switch changed (the three variants differ by one idea each, see
common/config/model_schema.py), trained by `common.launch` in its own process (`--parallel` at a time, one
thread each), evaluated after every epoch. Writes into DIR (default output/dac_effect): the runs' output dirs,
`summary.md` (mean and spread of bbox AP / AP50 per variant and epoch) and `convergence.png` (the one-to-one
box losses of the last decoder layer, the terms every variant has, and AP per epoch). Runs already finished in
DIR (their eval.json written) are reused, so an interrupted study picks up where it stopped. With --nms-iou, each
run's last checkpoint is also evaluated with class-wise NMS at that IoU (`test.sh` with
model.postprocess.nms_iou, into RUN/nms/), and the table gains that column: one-to-many training (the C-decoder's)
can leave duplicates, which is why the release evaluates with NMS at 0.8.
"""
import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

import numpy as np
from tqdm import tqdm

VARIANTS = {  # name -> overrides of configs/demo.yml (a dac_cdn model)
    "dac_cdn": [],
    "dino": ["model.dac.enabled=false"],
    "deformable_detr": ["model.dac.enabled=false", "model.dn.enabled=false"],
}
ONE_TO_ONE = ("loss_bbox", "loss_giou")  # last O-decoder layer, Hungarian-matched: present in every variant
CHECKPOINT_SUFFIX = {"torch": ".pth", "paddle": ".pdparams"}


def run_dir(out, variant, seed):
    return os.path.join(out, f"{variant}_seed{seed}")


def train(args, variant, seed):
    """Trains one run unless its eval.json exists; returns (variant, seed, returncode)."""
    directory = run_dir(args.out, variant, seed)
    if os.path.isfile(os.path.join(directory, "eval.json")):
        return variant, seed, 0
    command = [sys.executable, "-m", "common.launch", "train", "--framework", args.framework, "-c", args.config,
               "-o", f"output_dir={directory}", f"train.seed={seed}", f"train.epochs={args.epochs}",
               "train.eval_interval=1", f"data.num_workers={args.workers}", "model.postprocess.nms_iou=null",
               *VARIANTS[variant], *args.opt]  # per-epoch evaluation without NMS; --nms-iou adds it at the end
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "stdout.txt"), "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return variant, seed, code


def evaluate_nms(args, variant, seed):
    """Evaluates a finished run's last checkpoint with NMS unless RUN/nms/eval.json exists -> (variant, seed, code)."""
    directory = run_dir(args.out, variant, seed)
    if os.path.isfile(os.path.join(directory, "nms", "eval.json")):
        return variant, seed, 0
    command = [sys.executable, "-m", "common.launch", "test", "--framework", args.framework, "-c", args.config,
               "--resume", os.path.join(directory, "checkpoint_last" + CHECKPOINT_SUFFIX[args.framework]),
               "-o", f"output_dir={os.path.join(directory, 'nms')}", f"model.postprocess.nms_iou={args.nms_iou}",
               f"data.num_workers={args.workers}", *VARIANTS[variant], *args.opt]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with open(os.path.join(directory, "stdout_nms.txt"), "w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    return variant, seed, code


def run_all(args, step, jobs, desc):
    """step(args, variant, seed) for every job, args.parallel at a time -> the failed (variant, seed, code)."""
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [pool.submit(step, args, variant, seed) for variant, seed in jobs]
        results = (f.result() for f in tqdm(as_completed(futures), total=len(futures), desc=desc))
        return [(v, s, c) for v, s, c in results if c != 0]


def read_metrics(directory):
    """(train records, eval records) of a run's metrics.jsonl."""
    with open(os.path.join(directory, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "eval"]


def summarize(args):
    """{variant: {"ap": float [seeds, epochs], "ap50": ..., "iters": int [n], "loss": float [seeds, n]}}."""
    result = {}
    for variant in VARIANTS:
        runs = [read_metrics(run_dir(args.out, variant, seed)) for seed in args.seeds]
        n = min(len(train_recs) for train_recs, _ in runs)
        result[variant] = {
            "ap": np.array([[r["bbox_AP"] for r in evals] for _, evals in runs]),
            "ap50": np.array([[r["bbox_AP50"] for r in evals] for _, evals in runs]),
            "iters": np.array([r["iteration"] for r in runs[0][0][:n]]),
            "loss": np.array([[sum(r[k] for k in ONE_TO_ONE) for r in train_recs[:n]] for train_recs, _ in runs]),
        }
        if args.nms_iou is not None:
            evals = [read_eval(os.path.join(run_dir(args.out, variant, seed), "nms")) for seed in args.seeds]
            result[variant]["ap_nms"] = np.array([e["bbox_AP"] for e in evals])
            result[variant]["ap50_nms"] = np.array([e["bbox_AP50"] for e in evals])
    return result


def read_eval(directory):
    with open(os.path.join(directory, "eval.json")) as f:
        return json.load(f)


def write_table(result, args):
    nms = args.nms_iou is not None
    lines = [f"Demo data, `configs/demo.yml` variants, {args.framework}, seeds {args.seeds}: bbox AP / AP50 after "
             "each epoch (mean +- std over seeds, then each seed's AP)"
             + (f"; last, the final checkpoint evaluated with class-wise NMS at IoU {args.nms_iou}" if nms else "")
             + ".", "",
             "| variant | " + " | ".join(f"epoch {e + 1} AP | AP50" for e in range(args.epochs))
             + (" | with NMS: AP | AP50" if nms else "") + " |",
             "| --- |" + " --- | --- |" * (args.epochs + nms)]

    def cell(ap, ap50):
        seeds = ", ".join(f"{a:.3f}" for a in ap)
        return f"{ap.mean():.3f} +- {ap.std():.3f} ({seeds}) | {ap50.mean():.3f}"

    for variant, r in result.items():
        cells = [cell(r["ap"][:, e], r["ap50"][:, e]) for e in range(args.epochs)]
        if nms:
            cells.append(cell(r["ap_nms"], r["ap50_nms"]))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


def plot(result, args):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ap) = plt.subplots(1, 2, figsize=(11, 4))
    for variant, r in result.items():
        mean, std = r["loss"].mean(0), r["loss"].std(0)
        line, = ax_loss.plot(r["iters"], mean, label=variant)
        ax_loss.fill_between(r["iters"], mean - std, mean + std, color=line.get_color(), alpha=0.2)
        epochs = np.arange(1, r["ap"].shape[1] + 1)
        ax_ap.errorbar(epochs, r["ap"].mean(0), yerr=r["ap"].std(0), marker="o", capsize=3, color=line.get_color(),
                       label=variant)
        if "ap_nms" in r:  # the last epoch's checkpoint with NMS, just right of it
            ax_ap.errorbar([epochs[-1] + 0.15], [r["ap_nms"].mean()], yerr=[r["ap_nms"].std()], marker="s",
                           capsize=3, color=line.get_color(), label=f"{variant}, NMS {args.nms_iou}")
    ax_loss.set(xlabel="iteration", ylabel=" + ".join(ONE_TO_ONE) + " (last layer, smoothed)",
                title="one-to-one box losses")
    ax_ap.set(xlabel="epoch", ylabel="val bbox AP", title="validation AP", xticks=np.arange(1, args.epochs + 1),
              xlim=(0.5, args.epochs + 0.5))
    for ax in (ax_loss, ax_ap):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"DAC effect on the demo data ({args.framework}, {len(args.seeds)} seeds, mean +- std)")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "convergence.png"), dpi=100)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", default="torch", choices=["torch", "paddle"])
    p.add_argument("-c", "--config", default="configs/demo.yml")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="OMP threads per run")
    p.add_argument("--workers", type=int, default=1, help="data loader workers per run")
    p.add_argument("--out", default="output/dac_effect")
    p.add_argument("--nms-iou", type=float, default=None,
                   help="also evaluate each run's last checkpoint with class-wise NMS at this IoU")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for every run")
    args = p.parse_args(argv)
    jobs = [(variant, seed) for seed in args.seeds for variant in VARIANTS]
    failed = run_all(args, train, jobs, "runs")
    if not failed and args.nms_iou is not None:
        failed = [(v, s, c, "stdout_nms.txt") for v, s, c in run_all(args, evaluate_nms, jobs, "NMS evaluations")]
    if failed:
        for variant, seed, code, *log in failed:
            print(f"dac_effect: {variant} seed {seed} failed (exit {code}); see "
                  f"{run_dir(args.out, variant, seed)}/{log[0] if log else 'stdout.txt'}", file=sys.stderr)
        return 1
    result = summarize(args)
    write_table(result, args)
    plot(result, args)
    print(f"wrote {args.out}/summary.md and {args.out}/convergence.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
