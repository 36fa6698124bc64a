"""The inference command line shared by `python -m torch_impl.infer` and `python -m paddle_impl.infer`.

A framework supplies two loaders, each returning (predict, infer_cfg): one for its exported model (the flag it
names: paddle --model_dir, torch --onnx) and one for a config + checkpoint run as a dynamic graph (-c, --weights).
`predict` maps the batch of make_batch() to the program's (bbox [N, 6], bbox_num [B]) as numpy arrays.

Output (--output_dir): results.json, COCO-style records {image_id (index in the sorted input list), file_name,
category_id (the label, 0..C-1), category_name, bbox [x, y, w, h] in original pixels, score}, detections at or
above the threshold only; with --draw, <image name>.png per image with the kept boxes drawn.
"""
import argparse
import glob
import os
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.config import ConfigError
from common.data.coco import read_image
from common.deploy.draw import draw_detections
from common.deploy.preprocess import make_batch, preprocess
from common.errors import UserError
from common.evaluation.results import save_results, to_coco_results
from common.log import progress

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
Loader = Callable[..., Tuple[Callable[[Dict[str, np.ndarray]], Tuple[np.ndarray, np.ndarray]], Dict]]


def build_parser(prog: str, exported_flag: str, exported_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(exported_flag, default=None, help=exported_help)
    p.add_argument("-c", "--config", default=None, help="config YAML: run the dynamic graph (with --weights)")
    p.add_argument("--weights", default=None, help="checkpoint of the config's model (with -c)")
    p.add_argument("-o", "--opt", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides (with -c)")
    p.add_argument("--image", nargs="+", required=True, help="image files, folders or glob patterns")
    p.add_argument("--output_dir", default="output/infer", help="where results.json and drawn images go")
    p.add_argument("--threshold", type=float, default=None,
                   help="keep detections scoring at least this (default: infer_cfg draw_threshold)")
    p.add_argument("--draw", action="store_true", help="also write each image with its detections drawn (PNG)")
    p.add_argument("--batch_size", type=int, default=1, help="images per forward pass")
    return p


def find_images(patterns: Sequence[str]) -> List[str]:
    """Files, folders (their images, not recursive) and glob patterns -> sorted unique image paths."""
    found = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found += [os.path.join(pattern, n) for n in os.listdir(pattern) if n.lower().endswith(IMAGE_EXTENSIONS)]
        elif os.path.isfile(pattern):
            found.append(pattern)
        else:
            matches = [m for m in glob.glob(pattern) if os.path.isfile(m)]
            if not matches:
                raise UserError(f"--image {pattern}: no such file or folder, and no file matches it")
            found += matches
    if not found:
        raise UserError(f"--image {' '.join(patterns)}: no images found (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(set(found))


def split_detections(bbox: np.ndarray, bbox_num: np.ndarray) -> List[Dict[str, np.ndarray]]:
    """The program's bbox [N, 6] (label, score, x1, y1, x2, y2), bbox_num [B] -> B dicts {labels int64 [k],
    scores [k], boxes [k, 4] xyxy}."""
    out, start = [], 0
    for n in np.asarray(bbox_num).astype(np.int64).tolist():
        rows = bbox[start:start + n]
        out.append({"labels": rows[:, 0].astype(np.int64), "scores": rows[:, 1], "boxes": rows[:, 2:6]})
        start += n
    return out


def run(args, predict, infer_cfg: Dict) -> List[dict]:
    """Runs `predict` over the images of args.image; writes results.json (and drawn PNGs); returns the records."""
    paths = find_images(args.image)
    ops, names = infer_cfg["Preprocess"], infer_cfg["label_list"]
    threshold = infer_cfg["draw_threshold"] if args.threshold is None else args.threshold
    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    os.makedirs(args.output_dir, exist_ok=True)
    records = []
    starts = range(0, len(paths), args.batch_size)
    for start in progress(starts, desc="infer", total=len(starts)):
        batch_paths = paths[start:start + args.batch_size]
        images = [read_image(p) for p in batch_paths]
        bbox, bbox_num = predict(make_batch([preprocess(im, ops) for im in images], ops))
        for k, (path, image, det) in enumerate(zip(batch_paths, images, split_detections(bbox, bbox_num))):
            keep = det["scores"] >= threshold
            boxes, scores, labels = det["boxes"][keep], det["scores"][keep], det["labels"][keep]
            recs = to_coco_results([start + k], [boxes], [scores], [labels], np.arange(len(names)))
            records += [dict(r, file_name=path, category_name=names[r["category_id"]]) for r in recs]
            if args.draw:
                stem = os.path.splitext(os.path.basename(path))[0]
                draw_detections(image, boxes, scores, labels, names).save(os.path.join(args.output_dir, f"{stem}.png"))
    save_results(records, os.path.join(args.output_dir, "results.json"))
    print(f"{len(paths)} images, {len(records)} detections with score >= {threshold:g}; wrote "
          f"{os.path.join(args.output_dir, 'results.json')}" + (" and the drawn images" if args.draw else ""))
    return records


def main(argv: Optional[List[str]], prog: str, exported_flag: str, exported_help: str, load_exported: Loader,
         load_eager: Loader) -> int:
    """Parses the command line, loads the model (exported, or config + weights), runs; exit code (2: user error)."""
    args = build_parser(prog, exported_flag, exported_help).parse_args(argv)
    exported = getattr(args, exported_flag.lstrip("-"))
    try:
        if exported and (args.config or args.weights):
            raise UserError(f"give either {exported_flag} or -c CONFIG --weights W, not both")
        if exported:
            predict, infer_cfg = load_exported(exported)
        elif args.config and args.weights:
            predict, infer_cfg = load_eager(args.config, args.weights, args.opt)
        else:
            raise UserError(f"which model? {exported_flag} (an export) or -c CONFIG --weights W (dynamic graph)")
        run(args, predict, infer_cfg)
    except (UserError, ConfigError) as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    return 0
