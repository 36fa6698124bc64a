"""One evaluation pass, framework-free: collect detections per batch, score them, write eval.json.

A model tree runs its model over the loader and hands numpy detections to `add`; after gathering every
rank's `per_image` dict, rank 0 calls `summarize`. Distributed sharding pads the image list with repeats,
so an image may come back from two ranks: per-image storage counts it once.
"""
import json
import logging
import os
from typing import Dict, List, Sequence

import numpy as np

from common.deploy.draw import draw_results
from common.deploy.infer_cfg import DRAW_THRESHOLD
from common.evaluation.coco_eval import evaluate_coco, format_per_class, format_table
from common.evaluation.results import save_results, to_coco_results

logger = logging.getLogger("common.evaluation")

EVAL_FILE = "eval.json"


class DetectionEvaluator:
    """Accumulates COCO result records for a dataset (CocoDetection or Subset)."""

    def __init__(self, dataset, eval_cfg):
        self.dataset = dataset
        self.cfg = eval_cfg
        self.per_image: Dict[int, List[dict]] = {}

    def add(self, image_ids: Sequence[int], detections: Sequence[Dict[str, np.ndarray]]) -> None:
        """detections: per image {"boxes": float [k, 4] xyxy original pixels, "scores": [k], "labels": int [k]}."""
        for image_id, d in zip(image_ids, detections):
            self.per_image[int(image_id)] = to_coco_results(
                [int(image_id)], [d["boxes"]], [d["scores"]], [np.asarray(d["labels"], dtype=np.int64)],
                self.dataset.category_map.label_to_cat_id)

    def summarize(self, gathered: Sequence[Dict[int, List[dict]]], output_dir: str = None,
                  draw: int = 0) -> Dict[str, float]:
        """COCO metrics of every rank's `per_image` dict; logs a one-line summary; writes results.json when asked,
        and with `draw` > 0 the first `draw` images with their detections drawn (output_dir/draw/*.png)."""
        merged: Dict[int, List[dict]] = {}
        for part in gathered:
            for image_id, recs in part.items():
                merged.setdefault(image_id, recs)
        image_ids = sorted(merged)
        records = [r for i in image_ids for r in merged[i]]
        metrics = evaluate_coco(self.dataset.coco_gt, records, backend=self.cfg.backend,
                                max_dets=tuple(self.cfg.max_dets), per_class=self.cfg.per_class,
                                image_ids=image_ids)
        logger.info("evaluation on %d images: bbox AP %.4f  AP50 %.4f  AP75 %.4f", len(image_ids),
                    metrics["bbox_AP"], metrics["bbox_AP50"], metrics["bbox_AP75"])
        if output_dir is not None:
            save_results(records, os.path.join(output_dir, "results.json"))
            if draw > 0:
                folder = os.path.join(output_dir, "draw")
                n = draw_results(self.dataset, merged, folder, draw, DRAW_THRESHOLD)
                logger.info("drew %d images (scores >= %g) into %s", n, DRAW_THRESHOLD, folder)
        return metrics


def report(metrics: Dict[str, float]) -> str:
    """The standard 12-line COCO table, plus the per-class AP table when the metrics have one."""
    table = format_table(metrics)
    if "per_class" in metrics:
        table += "\n" + format_per_class(metrics["per_class"])
    return table


def write_eval_json(output_dir: str, metrics: Dict[str, float], **extra) -> str:
    """Writes `output_dir/eval.json` (the bbox_* numbers plus `extra`) atomically; returns its path."""
    path = os.path.join(output_dir, EVAL_FILE)
    data = {k: v for k, v in metrics.items()}
    data.update(extra)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)
    return path
