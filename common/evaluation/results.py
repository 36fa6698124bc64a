"""Detections -> COCO results records ([x, y, w, h] in original pixels, COCO category ids), and their json."""
import json
import os
import uuid

import numpy as np


def _category_ids(labels, label_to_cat_id, image_id):
    """labels: int64 [n] contiguous labels -> int64 [n] COCO category ids."""
    if callable(label_to_cat_id):
        cat_ids = np.asarray(label_to_cat_id(labels))
    else:
        table = np.asarray(label_to_cat_id)
        if table.ndim != 1:
            raise ValueError(f"label_to_cat_id must be a callable or a 1-d lookup table, got shape {table.shape}")
        bad = labels[(labels < 0) | (labels >= len(table))]
        if bad.size:
            raise ValueError(f"image {image_id}: label {bad[0]} is outside the lookup table of {len(table)} classes")
        cat_ids = table[labels]
    if cat_ids.shape != labels.shape or not np.array_equal(cat_ids, np.round(cat_ids)):
        raise ValueError(f"image {image_id}: label_to_cat_id must return one integer id per label, "
                         f"got {cat_ids.dtype} {cat_ids.shape} for {labels.shape[0]} labels")
    return cat_ids.astype(np.int64)


def to_coco_results(image_ids, boxes_xyxy, scores, labels, label_to_cat_id):
    """Per-image detections -> COCO results records.

    image_ids: B ints. boxes_xyxy: B float arrays [n_i, 4] of (x1, y1, x2, y2) in original image pixels.
    scores: B float arrays [n_i]. labels: B int arrays [n_i] of contiguous labels. label_to_cat_id: a callable
    mapping int64 [n] labels to [n] category ids (e.g. CategoryMap.label_to_cat_id), or a lookup table [C].
    Returns sum(n_i) dicts {"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float} of plain
    Python numbers, boxes rounded to 4 decimals and scores to 5.
    """
    if not len(image_ids) == len(boxes_xyxy) == len(scores) == len(labels):
        raise ValueError(f"to_coco_results needs one entry per image in each argument, got {len(image_ids)} "
                         f"image ids, {len(boxes_xyxy)} box arrays, {len(scores)} score arrays, "
                         f"{len(labels)} label arrays")
    out = []
    for image_id, b, s, lab in zip(image_ids, boxes_xyxy, scores, labels):
        image_id = int(image_id)
        b = np.asarray(b, dtype=np.float64)
        s = np.asarray(s, dtype=np.float64)
        lab = np.asarray(lab)
        if b.size == 0:
            b = b.reshape(0, 4)
        if b.ndim != 2 or b.shape[1] != 4 or s.shape != (len(b),) or lab.shape != (len(b),):
            raise ValueError(f"image {image_id}: expected boxes [n, 4], scores [n], labels [n], "
                             f"got {b.shape}, {s.shape}, {lab.shape}")
        if not (np.isfinite(b).all() and np.isfinite(s).all()):
            raise ValueError(f"image {image_id}: boxes or scores contain NaN or inf")
        if len(b) == 0:
            continue
        if not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"image {image_id}: labels must be an integer array, got {lab.dtype}")
        cat_ids = _category_ids(lab.astype(np.int64), label_to_cat_id, image_id).tolist()
        xywh = np.round(np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1), 4).tolist()
        s = np.round(s, 5).tolist()
        out += [{"image_id": image_id, "category_id": c, "bbox": box, "score": sc}
                for c, box, sc in zip(cat_ids, xywh, s)]
    return out


def save_results(results, path):
    """Writes `results` (any JSON value, e.g. a to_coco_results list) to `path` atomically: a reader sees the
    old file or the complete new one, never a partial write. Creates missing parent folders."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w") as f:
            json.dump(results, f, allow_nan=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
