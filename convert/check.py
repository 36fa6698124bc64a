"""Cross-framework accuracy check: the torch and Paddle models with the same weights on the same images.

    python -m convert.check -c CONFIG --weights W [--data COCO_DIR] [--images N] [--precision float32|float64]
                            [--backends reference kernel] [--tol-boxes 1e-4] [--tol-logits 1e-3] [--tol-ap 0.001]

W is any weight file of the config's model (.pth, .pdparams, .safetensors). Both models are built from it
(Paddle through the conversion rule), put in eval mode, and fed identical padded batches: the config's val
split of COCO_DIR (a COCO-format folder: `val/` + `instances_val.json` as the demo data, or `val2017/` +
`annotations/instances_val2017.json` as COCO), else N seeded synthetic images. For each deformable-attention
path (the grid_sample reference and the compiled kernel) it prints the max absolute and relative difference
(relative to the largest magnitude of the torch tensor) of the encoder proposals' and every decoder layer's
logits and boxes, how many of the top-k (query, class) detections per image agree, and, with --data, the COCO
AP of each framework. It exits 1 when a difference exceeds its tolerance, 2 on usage errors, 0 otherwise, and
prints the table either way.

Two-stage query selection ranks encoder proposals, and in float32 neighbouring scores can differ by less than
the two frameworks' rounding noise, which reorders the queries and changes every decoder output
(docs: /work/shared/notes/parity.md). With --precision float32 (default) the Paddle run is first done as is;
when its top-k order differs from torch's, the batch is run again with torch's order replayed in Paddle
(`forced`), and the header says on how many batches that happened. AP and top-k agreement always come from
each framework's own (natural) run. --precision float64 runs both models in float64, where the order is stable.
"""
import argparse
import contextlib
import os
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np

import paddle_impl  # first: records the user's thread count before paddle is imported

from common.config import ConfigError
from common.errors import UserError
from common.log import progress, setup_logging
from convert.rules import ConversionError

EXIT_FAIL, EXIT_USAGE = 1, 2
OUTPUTS = ("logits", "boxes")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m convert.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", required=True, help="config YAML of the model")
    p.add_argument("--weights", required=True, help="weights (.pth, .pdparams or .safetensors)")
    p.add_argument("--data", default=None, help="COCO-format folder; its val split is used and AP reported")
    p.add_argument("--images", type=int, default=None,
                   help="images to run (default: all of --data, else 8 synthetic ones)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per padded batch (default: the config's eval.batch_size)")
    p.add_argument("--size", type=int, default=320, help="synthetic images: longest side (default 320)")
    p.add_argument("--precision", choices=["float32", "float64"], default="float32")
    p.add_argument("--backends", nargs="+", choices=["reference", "kernel"], default=["reference", "kernel"],
                   help="deformable-attention paths to check (default: both)")
    p.add_argument("--topk", type=int, default=100, help="detections per image compared (default 100)")
    p.add_argument("--tol-boxes", type=float, default=1e-4, help="max abs difference of boxes (default 1e-4)")
    p.add_argument("--tol-logits", type=float, default=1e-3, help="max abs difference of logits (default 1e-3)")
    p.add_argument("--tol-ap", type=float, default=0.001, help="max AP difference (default 0.001)")
    p.add_argument("--corrupt", default=None, metavar="PARAM",
                   help="self-test: perturb this Paddle tensor after conversion; the check must then fail")
    p.add_argument("--trust-pickle", action="store_true", help="read .pth files with full unpickling")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides (put them last)")
    return p


# ----------------------------------------------------------------------------- top-k observation


class _WithTopk:
    """A framework module seen through a model file's global name, with `topk` replaced."""

    def __init__(self, module, topk):
        self._module, self.topk = module, topk

    def __getattr__(self, name):
        return getattr(self._module, name)


@contextlib.contextmanager
def _patched_topk(module, global_name: str, topk):
    original = getattr(module, global_name)
    setattr(module, global_name, _WithTopk(original, topk))
    try:
        yield
    finally:
        setattr(module, global_name, original)


def torch_topk_recorder(record: List[np.ndarray]):
    """Context in which torch_impl's two-stage selection appends its top-k indices [B, Q] to `record`."""
    import torch

    from torch_impl.models import deformable_transformer as tr

    def topk(x, k, *args, **kwargs):
        out = torch.topk(x, k, *args, **kwargs)
        record.append(out[1].numpy().copy())
        return out
    return _patched_topk(tr, "torch", topk)


def paddle_topk_control(record: List[np.ndarray], forced: Optional[List[np.ndarray]] = None):
    """Context in which paddle_impl's two-stage selection appends its own top-k indices to `record` and, when
    `forced` is given, uses those indices (in that order) instead."""
    import paddle

    from paddle_impl.models import deformable_transformer as tr
    calls = iter(forced or [])

    def topk(x, k, *args, **kwargs):
        values, index = paddle.topk(x, k, *args, **kwargs)
        record.append(index.numpy().copy())
        if forced is None:
            return values, index
        index = paddle.to_tensor(next(calls))
        return paddle.take_along_axis(x, index, 1), index
    return _patched_topk(tr, "paddle", topk)


# ----------------------------------------------------------------------------- data


def find_val_split(root: str):
    """(img_dir, ann_file) of the val split of a COCO-format folder; UserError naming what was looked for."""
    candidates = [(os.path.join(root, "val"), os.path.join(root, "instances_val.json")),
                  (os.path.join(root, "val2017"), os.path.join(root, "annotations", "instances_val2017.json"))]
    for img_dir, ann in candidates:
        if os.path.isdir(img_dir) and os.path.isfile(ann):
            return img_dir, ann
    raise UserError(f"--data {root}: no val split found; expected {root}/val + {root}/instances_val.json (demo "
                    f"layout) or {root}/val2017 + {root}/annotations/instances_val2017.json (COCO layout)")


def data_batches(cfg, root: str, images: Optional[int], batch_size: int):
    """(dataset, loader) of the val split of `root` with the config's eval transforms (test.sh's batches)."""
    from common.data.build import build_loader
    from common.data.coco import CocoDetection
    from common.data.subset import Subset
    from common.data.transforms import build_transforms

    img_dir, ann = find_val_split(root)
    dataset = Subset(CocoDetection(img_dir, ann, build_transforms(cfg["data"], "val", train=False), train=False,
                                   invalid=cfg["data"]["invalid"]), images or 0)
    return dataset, build_loader(cfg["data"], dataset, batch_size, train=False, seed=0)


def synthetic_batches(images: int, batch_size: int, size: int, seed: int = 0):
    """Seeded random images (normalized) of varying size, padded per batch as the loader does."""
    rng = np.random.default_rng(seed)
    batches = []
    for start in range(0, images, batch_size):
        n = min(batch_size, images - start)
        hw = [(int(rng.integers(size * 3 // 4, size + 1)), int(rng.integers(size * 3 // 4, size + 1)))
              for _ in range(n)]
        h, w = max(a for a, _ in hw), max(b for _, b in hw)
        imgs = np.zeros((n, 3, h, w), np.float32)
        masks = np.ones((n, h, w), bool)
        for i, (a, b) in enumerate(hw):
            imgs[i, :, :a, :b] = rng.standard_normal((3, a, b)).astype(np.float32)
            masks[i, :a, :b] = False
        batches.append({"images": imgs, "masks": masks, "targets": [
            {"image_id": np.int64(start + i), "orig_size": np.array(s, np.int64)} for i, s in enumerate(hw)]})
    return batches


# ----------------------------------------------------------------------------- models


def build_pair(cfg, arrays: Dict[str, np.ndarray], precision: str, corrupt: Optional[str] = None):
    """(torch model, Paddle model, torch postprocess, Paddle postprocess) with the same weights, eval mode."""
    import torch

    from convert.frameworks import torch_module_to_paddle
    from paddle_impl.models.build import build_model as build_paddle
    from torch_impl.models.build import build_model as build_torch

    pt, _, pp_t = build_torch(cfg)
    pt.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}, strict=True)
    pd, _, pp_p = build_paddle(cfg)
    torch_module_to_paddle(pt, pd)
    if corrupt is not None:
        state = pd.state_dict()
        if corrupt not in state:
            raise UserError(f"--corrupt {corrupt}: no such tensor in the Paddle model (e.g. {next(iter(state))})")
        value = state[corrupt].numpy()
        noise = np.random.default_rng(0).standard_normal(value.shape) * 0.05 * max(np.abs(value).max(), 1.0)
        state[corrupt].set_value((value + noise).astype(value.dtype))
    if precision == "float64":
        pt.double()
        pd.to(dtype="float64")
    pt.eval()
    pd.eval()
    return pt, pd, pp_t, pp_p


def set_backend(model, backend: str) -> None:
    """Every deformable attention of a torch or Paddle model uses `backend` ('reference' or 'kernel')."""
    children = model.modules() if hasattr(model, "modules") else model.sublayers(include_self=True)
    for m in children:
        if type(m).__name__ == "MSDeformAttn":
            m.backend = backend


def layers_of(out) -> Dict[str, Dict]:
    """The detector's eval outputs -> {"enc": {...}, "dec0": ..., "decN": ...} of {pred_logits, pred_boxes}."""
    layers = {}
    if "enc_outputs" in out:
        layers["enc"] = out["enc_outputs"]
    for i, layer in enumerate(list(out["aux_outputs"]) + [out]):
        layers[f"dec{i}"] = layer
    return layers


def to_numpy(layers) -> Dict[str, Dict[str, np.ndarray]]:
    return {name: {o: np.asarray(d[f"pred_{o}"].numpy(), np.float64) for o in OUTPUTS}
            for name, d in layers.items()}


def topk_pairs(logits: np.ndarray, k: int) -> List[set]:
    """Per image, the set of the k best (query, class) pairs by logit. logits [B, Q, C]."""
    flat = logits.reshape(logits.shape[0], -1)
    k = min(k, flat.shape[1])
    return [set(np.argpartition(-row, k - 1)[:k].tolist()) for row in flat]


class Stats:
    """Running max abs difference and max torch magnitude per (layer, output); top-k agreement; batch counts."""

    def __init__(self):
        self.abs: Dict = {}
        self.scale: Dict = {}
        self.agree = self.total = 0
        self.forced = self.batches = 0

    def add(self, ref: Dict, other: Dict) -> None:
        for layer, outs in ref.items():
            for o, a in outs.items():
                b = other[layer][o]
                diff = np.abs(a - b)
                diff = np.where(np.isnan(a) & np.isnan(b), 0.0, diff)  # NaN in both: same value
                key = (layer, o)
                self.abs[key] = max(self.abs.get(key, 0.0), float(np.nan_to_num(diff, nan=np.inf).max()))
                self.scale[key] = max(self.scale.get(key, 0.0), float(np.nanmax(np.abs(a))))


def run_backend(backend: str, pt, pd, pp_t, pp_p, batches, precision: str, topk: int, evaluators=None) -> Stats:
    """Both models over `batches` with one attention path; see the module docstring for the order handling."""
    import paddle
    import torch

    set_backend(pt, backend)
    set_backend(pd, backend)
    two_stage = pt.two_stage
    stats = Stats()
    for batch in progress(batches, desc=f"check ({backend})"):
        images = batch["images"].astype(precision)
        rec_t, rec_p = [], []
        with torch.no_grad(), torch_topk_recorder(rec_t):
            out_t = pt(torch.from_numpy(images), torch.from_numpy(batch["masks"]))
        with paddle.no_grad(), paddle_topk_control(rec_p):
            out_p = pd(paddle.to_tensor(images), paddle.to_tensor(batch["masks"]))
        if two_stage and (len(rec_t) != 1 or len(rec_p) != 1):
            raise RuntimeError("cannot observe the two-stage top-k selection of the models (the code no longer "
                               "calls torch.topk / paddle.topk there); use --precision float64")
        nat_t, nat_p = to_numpy(layers_of(out_t)), to_numpy(layers_of(out_p))
        compare = nat_p
        stats.batches += 1
        if two_stage and not np.array_equal(rec_t[0], rec_p[0]):
            if precision == "float64":
                raise RuntimeError("the two-stage top-k order differs between torch and Paddle even in float64: "
                                   "the encoders disagree (see the enc rows)")
            stats.forced += 1
            with paddle.no_grad(), paddle_topk_control([], forced=rec_t):
                out_forced = pd(paddle.to_tensor(images), paddle.to_tensor(batch["masks"]))
            compare = to_numpy(layers_of(out_forced))
        stats.add(nat_t, compare)
        last = f"dec{len(nat_t) - (2 if 'enc' in nat_t else 1)}"
        for s_t, s_p in zip(topk_pairs(nat_t[last]["logits"], topk), topk_pairs(nat_p[last]["logits"], topk)):
            stats.agree += len(s_t & s_p)
            stats.total += len(s_t)
        if evaluators is not None:
            ids = [t["image_id"] for t in batch["targets"]]
            sizes = np.stack([t["orig_size"] for t in batch["targets"]])
            dets_t = pp_t(out_t, torch.from_numpy(sizes))
            dets_p = pp_p(out_p, paddle.to_tensor(sizes))
            evaluators[0].add(ids, [{k: v.numpy() for k, v in d.items()} for d in dets_t])
            evaluators[1].add(ids, [{k: v.numpy() for k, v in d.items()} for d in dets_p])
    return stats


# ----------------------------------------------------------------------------- report


def report(results: Dict, tol: Dict[str, float], topk: int) -> Tuple[List[str], int]:
    """Table lines and the number of values above tolerance."""
    lines = [f"{'path':<10} {'output':<13} {'max abs diff':>13} {'max rel diff':>13} {'tolerance':>10}  ok"]
    failures = 0
    for backend, res in results.items():
        if "error" in res:
            lines.append(f"{backend:<10} unavailable: {res['error']}")
            continue
        stats = res["stats"]
        for (layer, o), d in stats.abs.items():
            rel = d / stats.scale[(layer, o)] if stats.scale[(layer, o)] > 0 else d
            ok = d <= tol[o]
            failures += not ok
            lines.append(f"{backend:<10} {layer + ' ' + o:<13} {d:>13.3e} {rel:>13.3e} {tol[o]:>10.0e}  "
                         f"{'yes' if ok else 'NO'}")
        pct = 100.0 * stats.agree / max(stats.total, 1)
        lines.append(f"{backend:<10} top-{topk} detections agreeing: {stats.agree}/{stats.total} ({pct:.2f}%)")
        if "ap" in res:
            ap_t, ap_p = res["ap"]
            ok = abs(ap_t - ap_p) <= tol["ap"]
            failures += not ok
            lines.append(f"{backend:<10} {'bbox AP':<13} torch {ap_t:.4f}  paddle {ap_p:.4f}  |diff| "
                         f"{abs(ap_t - ap_p):.1e} (tolerance {tol['ap']})  {'yes' if ok else 'NO'}")
    return lines, failures


def check(args) -> int:
    import torch

    from common.evaluation.evaluator import DetectionEvaluator
    from convert import core

    torch.set_num_threads(paddle_impl.CPU_THREADS)
    paddle_impl.use_cpu_threads()
    cfg, arrays = core.load_for_check(args.weights, args.config, args.opt, args.trust_pickle)
    pt, pd, pp_t, pp_p = build_pair(cfg, arrays, args.precision, args.corrupt)
    args.batch_size = args.batch_size or cfg["eval"]["batch_size"]
    if args.data:
        dataset, batches = data_batches(cfg, args.data, args.images, args.batch_size)
        source = f"{len(dataset)} images of {args.data} (val)"
    else:
        dataset, n = None, args.images or 8
        batches = synthetic_batches(n, args.batch_size, args.size)
        source = f"{n} synthetic images (<= {args.size} px)"
    results = {}
    for backend in args.backends:
        evaluators = None
        if dataset is not None:
            evaluators = (DetectionEvaluator(dataset, cfg["eval"]), DetectionEvaluator(dataset, cfg["eval"]))
        try:
            stats = run_backend(backend, pt, pd, pp_t, pp_p, batches, args.precision, args.topk, evaluators)
        except RuntimeError as e:
            if backend == "kernel" and "kernel unavailable" in str(e):
                results[backend] = {"error": str(e).splitlines()[0]}
                continue
            raise
        results[backend] = {"stats": stats}
        if evaluators is not None:
            results[backend]["ap"] = tuple(ev.summarize([ev.per_image])["bbox_AP"] for ev in evaluators)
    order = "n/a (one-stage model)"
    if pt.two_stage:
        counts = [r["stats"] for r in results.values() if "stats" in r]
        forced, total = sum(s.forced for s in counts), sum(s.batches for s in counts)
        order = (f"natural in {total - forced}/{total} batches, torch's order replayed in Paddle (forced) in "
                 f"{forced}" + (" (float64: stable)" if args.precision == "float64" else ""))
    tol = {"logits": args.tol_logits, "boxes": args.tol_boxes, "ap": args.tol_ap}
    lines, failures = report(results, tol, args.topk)
    print(f"convert.check: {args.config}, weights {args.weights}; {source}, batch {args.batch_size}")
    print(f"precision {args.precision}; two-stage top-k order: {order}")
    if args.corrupt:
        print(f"self-test: {args.corrupt} perturbed in the Paddle model")
    print("\n".join(lines))
    print(f"result: {'FAIL' if failures else 'PASS'} ({failures} above tolerance)")
    return EXIT_FAIL if failures else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message="No ccache found")  # paddle's extension loader, not actionable
    setup_logging(level=30)  # warnings only: the table is the output
    if any(v is not None and v < 1 for v in (args.images, args.batch_size, args.topk)):
        print("convert.check: --images, --batch-size and --topk must be positive", file=sys.stderr)
        return EXIT_USAGE
    try:
        return check(args)
    except ConversionError as e:
        print(f"convert.check: {args.weights} does not fit the model of {args.config}: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ConfigError, UserError) as e:
        print(f"convert.check: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as e:
        if os.environ.get("DETR_TRACEBACK"):
            raise
        print(f"convert.check: {type(e).__name__}: {e} (DETR_TRACEBACK=1 shows where)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
