"""COCO bbox evaluation: the 12 standard numbers (and per-class AP) of detections against a ground truth.

The matching and accumulation run in faster-coco-eval (default) or pycocotools; the summary numbers are
read here from the accumulated precision/recall arrays, the same way for both backends, so that a
non-default `max_dets` is honoured everywhere (pycocotools' `summarize` hardcodes maxDets=100 for AP).
A metric with no ground truth to measure (e.g. APs when no object is small) is -1, as in the COCO API.
"""
import collections
import contextlib
import functools
import io
import json
import logging
import math
import os
import re

import numpy as np

logger = logging.getLogger(__name__)

BACKENDS = ("faster", "pycocotools")
_AREA_INDEX = {"all": 0, "small": 1, "medium": 2, "large": 3}  # COCOeval's areaRngLbl order


@functools.lru_cache(maxsize=None)
def _backend(name):
    """Returns (COCO class, COCOeval class, name of the backend actually used)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown evaluation backend {name!r}; choose one of {list(BACKENDS)}")
    if name == "faster":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
            return COCO, COCOeval_faster, "faster"
        except ImportError as e:
            logger.warning("faster_coco_eval cannot be imported (%s); evaluating with pycocotools instead", e)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval, "pycocotools"


def _load_json(path, what):
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as e:
        raise OSError(f"cannot read the {what} file {os.fspath(path)!r}: {e.strerror}") from None
    except ValueError as e:  # JSONDecodeError and bad UTF-8
        raise ValueError(f"the {what} file {os.fspath(path)!r} is not valid JSON: {e}") from None


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _is_box(v):
    return isinstance(v, (list, tuple)) and len(v) == 4 and all(_is_number(x) for x in v)


def _check_gt(gt, source):
    """Validated shallow copy of a COCO ground truth (the COCO APIs add keys to annotation dicts)."""
    if not isinstance(gt, dict):
        raise ValueError(f"ground truth {source}: expected a JSON object, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(gt.get(key), list):
            raise ValueError(f"ground truth {source}: missing or non-list key {key!r}")
    if not gt["images"]:
        raise ValueError(f"ground truth {source}: 'images' is empty")
    for key in ("images", "categories"):
        for i, rec in enumerate(gt[key]):
            if not isinstance(rec, dict) or not _is_int(rec.get("id")):
                raise ValueError(f"ground truth {source}: {key}[{i}] has no integer 'id'")
    anns = []
    for i, ann in enumerate(gt["annotations"]):
        if not isinstance(ann, dict):
            raise ValueError(f"ground truth {source}: annotations[{i}] is not an object")
        for key in ("id", "image_id", "category_id"):
            if not _is_int(ann.get(key)):
                raise ValueError(f"ground truth {source}: annotations[{i}] has no integer {key!r}")
        if not _is_box(ann.get("bbox")):
            raise ValueError(f"ground truth {source}: annotations[{i}] 'bbox' is not 4 finite numbers")
        if not _is_number(ann.get("area")):
            raise ValueError(f"ground truth {source}: annotations[{i}] has no numeric 'area'")
        anns.append({"iscrowd": 0, **ann})
    return {"images": gt["images"], "categories": gt["categories"], "annotations": anns}


def _check_results(results, source, image_ids, cat_ids, keep_ids):
    """Results as COCO detection annotations (what loadRes makes of them), restricted to `keep_ids`."""
    if not isinstance(results, list):
        raise ValueError(f"results {source}: expected a JSON list of detections, got {type(results).__name__}")
    dets = []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"results {source}: record {i} is not an object")
        for key in ("image_id", "category_id"):
            if not _is_int(r.get(key)):
                raise ValueError(f"results {source}: record {i} has no integer {key!r}")
        if r["image_id"] not in image_ids:
            raise ValueError(f"results {source}: record {i} refers to image_id {r['image_id']}, "
                             "which is not an image of the ground truth")
        if r["category_id"] not in cat_ids:
            raise ValueError(f"results {source}: record {i} refers to category_id {r['category_id']}, "
                             "which is not a category of the ground truth")
        if not _is_box(r.get("bbox")):
            raise ValueError(f"results {source}: record {i} 'bbox' is not 4 finite numbers [x, y, w, h]")
        if not _is_number(r.get("score")):
            raise ValueError(f"results {source}: record {i} has no finite numeric 'score'")
        if r["image_id"] in keep_ids:
            x, y, w, h = r["bbox"]
            dets.append({"id": len(dets) + 1, "image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
                         "bbox": [float(x), float(y), float(w), float(h)], "score": float(r["score"]),
                         "area": float(w) * float(h), "iscrowd": 0})
    return dets


def _coco(coco_cls, dataset):
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _accumulate(backend, gt, dets, max_dets, image_ids, verbose):
    """Runs COCOeval; returns (precision [T,R,K,A,M], recall [T,K,A,M], iou_thrs [T], cat_ids [K])."""
    coco_cls, eval_cls, used = _backend(backend)
    kwargs = {"print_function": print if verbose else (lambda *a, **k: None)} if used == "faster" else {}
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:
        coco_gt = _coco(coco_cls, gt)
        coco_dt = _coco(coco_cls, {"images": gt["images"], "categories": gt["categories"], "annotations": dets})
        ev = eval_cls(coco_gt, coco_dt, "bbox", **kwargs)
        ev.params.maxDets = list(max_dets)
        ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
    p = ev.params
    return ev.eval["precision"], ev.eval["recall"], np.asarray(p.iouThrs), list(p.catIds)


def _mean_valid(x):
    """Mean over the entries that are defined (> -1), or -1 when none is, as COCOeval.summarize does."""
    x = x[x > -1]
    return float(np.mean(x)) if x.size else -1.0


def evaluate_coco(gt, results, backend="faster", max_dets=(1, 10, 100), per_class=False, image_ids=None,
                  verbose=False):
    """COCO bbox metrics of `results` against `gt`.

    gt: path of a COCO annotation json, or the parsed dict. results: path of a COCO results json, or a list
    of {"image_id", "category_id", "bbox": [x, y, w, h], "score"} dicts (may be empty).
    max_dets: increasing detection caps; AP and the area ARs use the last one. image_ids: evaluate only
    these images (None: all). verbose: let the COCO API print its progress.
    Returns {"bbox_AP", "bbox_AP50", "bbox_AP75", "bbox_APs", "bbox_APm", "bbox_APl", "bbox_AR<m>" for each
    m in max_dets, "bbox_ARs", "bbox_ARm", "bbox_ARl"} as floats in [0, 1] (-1: nothing to measure), plus
    "per_class": {category name: AP} with per_class=True.
    """
    max_dets = tuple(max_dets)
    if not max_dets or not all(_is_int(m) and m > 0 for m in max_dets) or list(max_dets) != sorted(set(max_dets)):
        raise ValueError(f"max_dets must be strictly increasing positive integers, got {max_dets}")
    max_dets = tuple(int(m) for m in max_dets)
    gt_source = repr(os.fspath(gt)) if isinstance(gt, (str, os.PathLike)) else "(dict)"
    res_source = repr(os.fspath(results)) if isinstance(results, (str, os.PathLike)) else "(list)"
    if isinstance(gt, (str, os.PathLike)):
        gt = _load_json(gt, "ground-truth")
    if isinstance(results, (str, os.PathLike)):
        results = _load_json(results, "results")
    gt = _check_gt(gt, gt_source)

    all_ids = {img["id"] for img in gt["images"]}
    if image_ids is None:
        keep = all_ids
    else:
        keep = {int(i) for i in image_ids}
        if not keep:
            raise ValueError("image_ids is empty; pass None to evaluate every image")
        unknown = sorted(keep - all_ids)
        if unknown:
            raise ValueError(f"image_ids {unknown[:5]} are not images of the ground truth {gt_source}")
    dets = _check_results(results, res_source, all_ids, {c["id"] for c in gt["categories"]}, keep)

    precision, recall, iou_thrs, cat_ids = _accumulate(backend, gt, dets, max_dets, keep, verbose)
    t50, t75 = (int(np.flatnonzero(np.isclose(iou_thrs, t))[0]) for t in (0.5, 0.75))
    m = len(max_dets) - 1  # AP and the area ARs are at the largest cap

    def ap(area, t=slice(None)):
        return _mean_valid(precision[t, :, :, _AREA_INDEX[area], m])

    def ar(area, k=m):
        return _mean_valid(recall[:, :, _AREA_INDEX[area], k])

    metrics = {"bbox_AP": ap("all"), "bbox_AP50": ap("all", t50), "bbox_AP75": ap("all", t75),
               "bbox_APs": ap("small"), "bbox_APm": ap("medium"), "bbox_APl": ap("large")}
    metrics.update({f"bbox_AR{cap}": ar("all", k) for k, cap in enumerate(max_dets)})
    metrics.update({"bbox_ARs": ar("small"), "bbox_ARm": ar("medium"), "bbox_ARl": ar("large")})
    if per_class:
        metrics["per_class"] = _per_class_ap(precision[:, :, :, _AREA_INDEX["all"], m], cat_ids, gt["categories"])
    return metrics


def _per_class_ap(precision, cat_ids, categories):
    """precision: [T, R, K] at area=all and the largest cap. Returns {category name: AP}, in cat_ids order."""
    names = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    counts = collections.Counter(names.values())
    out = {}
    for k, cid in enumerate(cat_ids):
        name = names[cid] if counts[names[cid]] == 1 else f"{names[cid]} (id {cid})"  # keep duplicates apart
        out[name] = _mean_valid(precision[:, :, k])
    return out


def _line(is_ap, iou, area, max_det, value):
    title, kind = ("Average Precision", "(AP)") if is_ap else ("Average Recall", "(AR)")
    return f" {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_det:>3d} ] = {value:0.3f}"


def format_table(metrics):
    """The COCO API's summary text (one line per number) of an `evaluate_coco` result."""
    caps = sorted(int(k[len("bbox_AR"):]) for k in metrics if re.fullmatch(r"bbox_AR\d+", k))
    if not caps:
        raise ValueError(f"metrics has no bbox_AR<maxDets> key (keys: {sorted(metrics)})")
    top, full = caps[-1], "0.50:0.95"
    rows = [(True, full, "all", top, "bbox_AP"), (True, "0.50", "all", top, "bbox_AP50"),
            (True, "0.75", "all", top, "bbox_AP75"), (True, full, "small", top, "bbox_APs"),
            (True, full, "medium", top, "bbox_APm"), (True, full, "large", top, "bbox_APl")]
    rows += [(False, full, "all", cap, f"bbox_AR{cap}") for cap in caps]
    rows += [(False, full, "small", top, "bbox_ARs"), (False, full, "medium", top, "bbox_ARm"),
             (False, full, "large", top, "bbox_ARl")]
    missing = [r[-1] for r in rows if r[-1] not in metrics]
    if missing:
        raise ValueError(f"metrics lacks {missing}")
    return "\n".join(_line(*r[:-1], metrics[r[-1]]) for r in rows)


def format_per_class(per_class):
    """Aligned two-column text table of {category name: AP}; n/a where the category has no ground truth."""
    width = max([len("category")] + [len(name) for name in per_class])
    lines = [f"{'category':<{width}}     AP", "-" * (width + 7)]
    lines += [f"{name:<{width}}  {f'{ap:0.3f}' if ap >= 0 else 'n/a':>5}" for name, ap in per_class.items()]
    return "\n".join(lines)
