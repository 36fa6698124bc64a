"""COCO evaluation speed: faster-coco-eval vs pycocotools on the same detections, through
common/evaluation/coco_eval.evaluate_coco (what training and test.sh run), and whether their metrics agree.

    python -m bench.coco_eval ANN_FILE [--repeats 5] [--warmup 1]

Detections are synthetic (synthetic_results): per ground-truth box a jittered copy (its class, or another with
probability 0.1) and FALSE_PER_IMAGE random boxes per image, random scores. Both backends get the same parsed
ground truth and detections; times are medians after warm-up of the whole evaluate_coco call (input checks,
index building, evaluate, accumulate, summary numbers).
"""
import argparse
import json

import numpy as np

from bench.timing import median_time

FALSE_PER_IMAGE = 15


def synthetic_results(gt, seed=0):
    """COCO results [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}] for the ground-truth dict `gt`."""
    rng = np.random.default_rng(seed)
    cats = [c["id"] for c in gt["categories"]]
    sizes = {img["id"]: (img["width"], img["height"]) for img in gt["images"]}
    results = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        dx, dy, dw, dh = rng.normal(0, 0.1, 4) * [w, h, w, h]
        cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cats))
        results.append({"image_id": ann["image_id"], "category_id": cat, "score": float(rng.uniform(0.3, 1)),
                        "bbox": [x + dx, y + dy, max(w + dw, 1.0), max(h + dh, 1.0)]})
    for image_id, (width, height) in sizes.items():
        for _ in range(FALSE_PER_IMAGE):
            w, h = rng.uniform(8, width / 2), rng.uniform(8, height / 2)
            results.append({"image_id": image_id, "category_id": int(rng.choice(cats)),
                            "score": float(rng.uniform(0, 0.8)),
                            "bbox": [rng.uniform(0, width - w), rng.uniform(0, height - h), w, h]})
    return results


def measure(ann_file, warmup=1, repeats=5):
    """{"images", "gt_boxes", "detections", "faster_s", "pycocotools_s", "pycocotools_over_faster", "AP":
    {backend: {bbox_AP, bbox_AP50, bbox_AP75}}, "identical": every metric equal}."""
    import faster_coco_eval  # noqa: F401  (evaluate_coco would fall back to pycocotools without it)

    from common.evaluation.coco_eval import BACKENDS, evaluate_coco

    with open(ann_file) as f:
        gt = json.load(f)
    results = synthetic_results(gt)
    metrics = {b: evaluate_coco(gt, results, backend=b) for b in BACKENDS}
    seconds = {b: median_time(lambda: evaluate_coco(gt, results, backend=b), warmup, repeats) for b in BACKENDS}
    return {"images": len(gt["images"]), "gt_boxes": len(gt["annotations"]), "detections": len(results),
            "faster_s": seconds["faster"], "pycocotools_s": seconds["pycocotools"],
            "pycocotools_over_faster": seconds["pycocotools"] / seconds["faster"],
            "AP": {b: {k: m[k] for k in ("bbox_AP", "bbox_AP50", "bbox_AP75")} for b, m in metrics.items()},
            "identical": metrics["faster"] == metrics["pycocotools"]}


def table(result):
    """Markdown table of measure()'s result."""
    lines = [f"{result['images']} images, {result['gt_boxes']} GT boxes, {result['detections']} detections; "
             f"all 12 metrics identical: {'yes' if result['identical'] else 'NO'}", "",
             "| evaluator | s | AP | AP50 | AP75 |", "|---|---|---|---|---|"]
    for b in ("faster", "pycocotools"):
        ap = result["AP"][b]
        lines.append(f"| {'faster-coco-eval' if b == 'faster' else b} | {result[b + '_s']:.3f} | {ap['bbox_AP']:.6f} "
                     f"| {ap['bbox_AP50']:.6f} | {ap['bbox_AP75']:.6f} |")
    lines.append(f"\npycocotools / faster-coco-eval: {result['pycocotools_over_faster']:.2f}x")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.coco_eval", description=__doc__.splitlines()[0])
    parser.add_argument("ann_file", help="a COCO annotation json (e.g. data/demo/instances_val.json)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    print(table(measure(args.ann_file, args.warmup, args.repeats)))


if __name__ == "__main__":
    main()
