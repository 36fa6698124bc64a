"""Detections drawn on an image (PIL): one colour per class, the class name and score above each box."""
import os
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0), (0, 0, 128)]


def color(label: int):
    return PALETTE[int(label) % len(PALETTE)]


def draw_detections(image: Image.Image, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                    names: Sequence[str]) -> Image.Image:
    """A copy of `image` (RGB) with boxes [n, 4] xyxy pixels, scores [n] and int labels [n] drawn, lowest score
    first so the best boxes end on top."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    font = ImageFont.load_default()
    width = max(1, round(min(out.size) / 200))
    for i in np.argsort(scores, kind="stable"):
        label = int(labels[i])
        name = names[label] if 0 <= label < len(names) else str(label)
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        draw.rectangle([x1, y1, x2, y2], outline=color(label), width=width)
        text = f"{name} {scores[i]:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        ty = y1 - (bottom - top) - 2 if y1 - (bottom - top) - 2 >= 0 else y1
        draw.rectangle([x1, ty, x1 + right - left + 2, ty + bottom - top + 2], fill=color(label))
        draw.text((x1 + 1, ty - top + 1), text, fill=(255, 255, 255), font=font)
    return out


def draw_results(dataset, per_image, folder: str, n: int, threshold: float) -> int:
    """Draws the first `n` images of a CocoDetection (or Subset) with their COCO results records ({image_id:
    [records]}, score >= threshold) into folder/<image name>.png; returns how many were written."""
    base = getattr(dataset, "dataset", dataset)  # a Subset's images are its dataset's first ones
    cats = base.category_map
    os.makedirs(folder, exist_ok=True)
    count = min(n, len(dataset))
    for index in range(count):
        recs = [r for r in per_image.get(int(dataset.image_ids[index]), []) if r["score"] >= threshold]
        xywh = np.array([r["bbox"] for r in recs], dtype=np.float64).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = cats.cat_id_to_label(np.array([r["category_id"] for r in recs], dtype=np.int64))
        scores = np.array([r["score"] for r in recs], dtype=np.float64)
        stem = os.path.splitext(os.path.basename(str(base.image_path(index))))[0]
        draw_detections(base.read(index), boxes, scores, labels, cats.names).save(os.path.join(folder, f"{stem}.png"))
    return count
