"""Matching at DETR scale: common/matching's Hungarian matcher and DAC-DETR one-to-many assigner on one image of
900 queries x 100 ground-truth boxes, 91 classes (numpy, in this process).

    python -m bench.matching [--repeats 20] [--warmup 3]

Predictions and ground truth are random (logits N(0, 1), cxcywh boxes with centres in [0.1, 0.9] and sides in
[0.02, 0.5]). Besides each call, the matcher's two parts (cost matrix, scipy's linear_sum_assignment) and the
assigner's quality matrix are timed alone. Medians after warm-up, seconds.
"""
import argparse

import numpy as np
from scipy.optimize import linear_sum_assignment

from bench.timing import median_time
from common.matching import HungarianMatcher, OneToManyAssigner
from common.matching.one_to_many import quality_matrix

QUERIES, GT, CLASSES = 900, 100, 91


def random_boxes(rng, n):
    """float32 [n, 4] cxcywh."""
    return np.concatenate([rng.uniform(0.1, 0.9, (n, 2)), rng.uniform(0.02, 0.5, (n, 2))], 1).astype(np.float32)


def measure(queries=QUERIES, gt=GT, classes=CLASSES, warmup=3, repeats=20):
    """{"queries", "gt", "classes", "hungarian_s", "hungarian_cost_matrix_s", "hungarian_assignment_s",
    "one_to_many_s", "one_to_many_quality_s"} for one image."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, queries, classes)).astype(np.float32)
    boxes = random_boxes(rng, queries)[None]
    targets = [{"labels": rng.integers(0, classes, gt), "boxes": random_boxes(rng, gt)}]
    matcher, assigner = HungarianMatcher(), OneToManyAssigner()
    cost = matcher.cost_matrix(logits[0], boxes[0], targets[0]["labels"], targets[0]["boxes"])
    times = {
        "hungarian_s": lambda: matcher(logits, boxes, targets),
        "hungarian_cost_matrix_s": lambda: matcher.cost_matrix(logits[0], boxes[0], targets[0]["labels"],
                                                               targets[0]["boxes"]),
        "hungarian_assignment_s": lambda: linear_sum_assignment(cost),
        "one_to_many_s": lambda: assigner(logits, boxes, targets, rng=np.random.default_rng(0)),
        "one_to_many_quality_s": lambda: quality_matrix(logits[0], boxes[0], targets[0]["labels"],
                                                        targets[0]["boxes"]),
    }
    return {"queries": queries, "gt": gt, "classes": classes,
            **{k: median_time(fn, warmup, repeats) for k, fn in times.items()}}


def table(result):
    """Markdown table of measure()'s result."""
    ms = {k: v * 1e3 for k, v in result.items() if k.endswith("_s")}
    return "\n".join([
        f"one image, {result['queries']} queries x {result['gt']} GT, {result['classes']} classes", "",
        "| call | ms | of which |", "|---|---|---|",
        f"| HungarianMatcher | {ms['hungarian_s']:.2f} | cost matrix {ms['hungarian_cost_matrix_s']:.2f}, "
        f"linear_sum_assignment {ms['hungarian_assignment_s']:.2f} |",
        f"| OneToManyAssigner | {ms['one_to_many_s']:.2f} | quality matrix {ms['one_to_many_quality_s']:.2f} |"])


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.matching", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(table(measure(warmup=args.warmup, repeats=args.repeats)))


if __name__ == "__main__":
    main()
