"""COCO detection dataset: annotation parsing and validation, category mapping, image decoding.

Annotations are read and checked once, at construction; boxes are stored as one flat array sorted
by image (plus offsets), which keeps per-sample work small and forked loader workers cheap.
"""
import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .loader import SkippedImage

logger = logging.getLogger("common.data")

INVALID_POLICIES = ("strict", "skip")


def _as_int(value):
    """`value` as an int if it is an integral number (not a bool), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class CategoryMap:
    """Contiguous labels 0..C-1 <-> COCO category ids, labels given in increasing id order.

    The one place this mapping lives: the dataset uses it to make training labels and the
    results writer uses it to turn predicted labels back into category ids.
    """

    def __init__(self, categories):
        if not isinstance(categories, list) or not categories:
            raise ValueError("'categories' must be a non-empty list of {'id', 'name'} records")
        by_id = {}
        for k, cat in enumerate(categories):
            cat_id = _as_int(cat.get("id")) if isinstance(cat, dict) else None
            if cat_id is None:
                raise ValueError(f"categories[{k}] needs an integer 'id', got {cat!r}")
            if cat_id in by_id:
                raise ValueError(f"categories[{k}]: duplicate category id {cat_id}")
            by_id[cat_id] = str(cat.get("name", cat_id))
        ids = sorted(by_id)
        self.cat_ids = np.array(ids, dtype=np.int64)
        self.names = [by_id[i] for i in ids]

    @property
    def num_classes(self):
        return len(self.names)

    def label_to_cat_id(self, labels):
        """labels: int [...] in 0..C-1 -> COCO category ids int64 [...] (same shape)."""
        labels = np.asarray(labels)
        if labels.size and (not np.issubdtype(labels.dtype, np.integer)
                            or labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be integers in [0, {self.num_classes}), got {labels!r}")
        return self.cat_ids[labels.astype(np.int64)]

    def cat_id_to_label(self, cat_ids):
        """cat_ids: int [...] COCO category ids -> contiguous labels int64 [...] (same shape)."""
        cat_ids = np.asarray(cat_ids, dtype=np.int64)
        labels = np.searchsorted(self.cat_ids, cat_ids)
        known = (labels < len(self.cat_ids)) & (self.cat_ids[np.minimum(labels, len(self.cat_ids) - 1)] == cat_ids)
        if not known.all():
            raise ValueError(f"unknown category ids {np.unique(cat_ids[~known]).tolist()}; "
                             f"known ids: {self.cat_ids.tolist()}")
        return labels.astype(np.int64)


def read_json(path):
    """Parsed JSON of `path`; a clear error naming the file when it is missing or malformed."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from None


def to_rgb(image):
    """Any PIL image -> 8-bit RGB (`image` itself when it is RGB already: no copy of a large photo). 16/32-bit
    grey is scaled from the 16-bit range (a plain convert would saturate it); transparent images are composited
    over white, as viewers show them."""
    if image.mode.startswith("I"):
        grey = np.asarray(image, dtype=np.float64) / 257.0
        image = Image.fromarray(np.clip(np.rint(grey), 0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def image_problem(error):
    """The skip-count reason of an error of CocoDetection.read."""
    if isinstance(error, FileNotFoundError):
        return "image file not found"
    if isinstance(error, OSError):
        return "unreadable image file"
    return "image size differs from its record"


def read_image(path):
    """Decode `path` into an RGB PIL image, upright according to its EXIF orientation tag."""
    try:
        with Image.open(path) as raw:
            return to_rgb(ImageOps.exif_transpose(raw))
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {path}") from None
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, ... on broken files
        raise OSError(f"cannot read image {path}: {type(e).__name__}: {e}") from e


class CocoDetection:
    """COCO-format detection dataset.

    ds[i] / ds.load(i, rng) -> (image, target): a PIL RGB image and numpy target (see
    docs/architecture.md), passed through `transforms(image, target, rng)` when given. Before
    transforms, target["boxes"] is float32 [n, 4] xyxy pixels, clipped to the image.

    train=True drops crowd boxes; train=False keeps them flagged in target["iscrowd"].
    invalid="strict" raises on structurally bad records; "skip" drops them and counts each reason
    in `self.skipped`. The same policy applies to images that cannot be used, found when loaded (see
    `load`). `self.coco_gt` is the parsed json (in "skip" mode, without the skipped
    images/annotations, so an evaluator can load it); `self.image_ids` lists image ids by index.
    """

    def __init__(self, img_dir, ann_file, transforms=None, train=True, invalid="strict"):
        if invalid not in INVALID_POLICIES:
            raise ValueError(f"invalid must be one of {INVALID_POLICIES} (config key data.invalid), got {invalid!r}")
        self.img_dir = Path(img_dir)
        self.ann_file = str(ann_file)
        self.transforms = transforms
        self.train = train
        self.invalid = invalid
        self.skipped = Counter()
        self.num_degenerate = 0

        coco = read_json(self.ann_file)
        if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
            raise ValueError(f"{self.ann_file}: expected a JSON object with an 'images' list")
        annotations = coco.get("annotations", [])
        if not isinstance(annotations, list):
            raise ValueError(f"{self.ann_file}: 'annotations' must be a list")
        try:
            self.category_map = CategoryMap(coco.get("categories"))
        except ValueError as e:
            raise ValueError(f"{self.ann_file}: {e}") from None

        images = self._parse_images(coco["images"])
        if not images:  # nothing to train on or evaluate, whatever the policy
            why = f"left after skipping bad records {dict(self.skipped)}" if self.skipped else "('images' is empty)"
            raise ValueError(f"{self.ann_file}: no images {why}")
        anns = self._parse_annotations(annotations, images)
        self.image_ids = [rec["id"] for rec in images]
        self._file_names = [rec["file_name"] for rec in images]
        self._hw = np.array([[rec["height"], rec["width"]] for rec in images], dtype=np.int64).reshape(-1, 2)
        self._store_boxes(anns, len(images))
        self.coco_gt = coco if not self.skipped else dict(coco, images=images, annotations=anns["records"])
        self.skipped = dict(self.skipped)

        if self.num_degenerate:
            logger.warning("%s: dropped %d degenerate boxes (zero or negative width/height after clipping "
                           "to the image)", self.ann_file, self.num_degenerate)
        if self.skipped:
            logger.warning("%s: skipped %d bad records (data.invalid=skip): %s",
                           self.ann_file, sum(self.skipped.values()), dict(self.skipped))

    def _bad(self, where, reason, detail=""):
        """Raise (strict) or count (skip, keyed by `reason`) a structurally bad record."""
        if self.invalid == "strict":
            raise ValueError(f"{self.ann_file}: {where}: {reason}{detail}. Fix the record, or set "
                             "data.invalid: skip to skip bad records.")
        self.skipped[reason] += 1

    def _parse_images(self, records):
        """Valid image records, each normalized to {'id', 'file_name', 'width', 'height', ...}."""
        images, seen = [], set()
        for k, rec in enumerate(records):
            where = f"images[{k}] (id={rec.get('id') if isinstance(rec, dict) else None})"
            if not isinstance(rec, dict):
                self._bad(where, "image record is not an object")
                continue
            missing = [key for key in ("id", "file_name", "width", "height") if key not in rec]
            if missing:
                self._bad(where, f"image missing key '{missing[0]}'")
                continue
            image_id, width, height = _as_int(rec["id"]), _as_int(rec["width"]), _as_int(rec["height"])
            if image_id is None:
                self._bad(where, "image id is not an integer")
            elif width is None or height is None or width <= 0 or height <= 0:
                self._bad(where, "image width/height are not positive integers")
            elif image_id in seen:
                self._bad(where, "duplicate image id")
            else:
                seen.add(image_id)
                images.append(dict(rec, id=image_id, width=width, height=height))
        return images

    def _parse_annotations(self, records, images):
        """Check annotation records; return flat lists (image position, clipped xyxy box, label,
        crowd flag, area) of the boxes kept, and the structurally valid records."""
        out = {key: [] for key in ("pos", "boxes", "cat_ids", "iscrowd", "area", "records")}
        known_cats = set(self.category_map.cat_ids.tolist())
        position_of_image = {rec["id"]: k for k, rec in enumerate(images)}
        for k, rec in enumerate(records):
            if not isinstance(rec, dict):
                self._bad(f"annotations[{k}]", "annotation record is not an object")
                continue
            where = f"annotations[{k}] (id={rec.get('id')}, image_id={rec.get('image_id')})"
            missing = [key for key in ("image_id", "category_id", "bbox") if key not in rec]
            if missing:
                self._bad(where, f"annotation missing key '{missing[0]}'")
                continue
            bbox, area, crowd = rec["bbox"], rec.get("area"), rec.get("iscrowd", 0)
            if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(map(_is_number, bbox)):
                self._bad(where, "bbox is not a list of 4 numbers")
            elif not all(map(math.isfinite, bbox)):
                self._bad(where, "non-finite bbox coordinates")
            elif area is not None and not (_is_number(area) and math.isfinite(area)):
                self._bad(where, "area is not a finite number")
            elif crowd not in (0, 1):
                self._bad(where, "iscrowd is not 0 or 1")
            elif _as_int(rec["category_id"]) not in known_cats:
                self._bad(where, "unknown category id", f" {rec['category_id']!r} (known: "
                          f"{sorted(known_cats)[:20]})")
            elif _as_int(rec["image_id"]) not in position_of_image:
                self._bad(where, "annotation refers to a missing image", " (no valid 'images' record has that id)")
            else:
                out["records"].append(rec)
                if crowd and self.train:
                    continue
                pos = position_of_image[_as_int(rec["image_id"])]
                if not self._add_box(out, images[pos], pos, bbox, area, rec):
                    self.num_degenerate += 1
        return out

    @staticmethod
    def _add_box(out, image, pos, bbox, area, rec):
        """Append the box clipped to `image`; False (nothing appended) when it is degenerate."""
        x, y, w, h = bbox
        x0, x1 = min(max(x, 0.0), image["width"]), min(max(x + w, 0.0), image["width"])
        y0, y1 = min(max(y, 0.0), image["height"]), min(max(y + h, 0.0), image["height"])
        if x1 <= x0 or y1 <= y0:
            return False
        out["pos"].append(pos)
        out["boxes"].append((x0, y0, x1, y1))
        out["cat_ids"].append(_as_int(rec["category_id"]))
        out["iscrowd"].append(int(bool(rec.get("iscrowd", 0))))
        out["area"].append((x1 - x0) * (y1 - y0) if area is None else area)
        return True

    def _store_boxes(self, anns, num_images):
        """Flat per-box arrays sorted by image, with offsets[i]:offsets[i+1] the boxes of image i."""
        pos = np.array(anns["pos"], dtype=np.int64)
        order = np.argsort(pos, kind="stable")
        self._boxes = np.array(anns["boxes"], dtype=np.float32).reshape(-1, 4)[order]
        self._labels = self.category_map.cat_id_to_label(np.array(anns["cat_ids"], dtype=np.int64))[order]
        self._iscrowd = np.array(anns["iscrowd"], dtype=np.int64)[order]
        self._area = np.array(anns["area"], dtype=np.float32)[order]
        self._offsets = np.concatenate([[0], np.cumsum(np.bincount(pos, minlength=num_images))]).astype(np.int64)

    def __len__(self):
        return len(self.image_ids)

    def image_path(self, index):
        return self.img_dir / self._file_names[index]

    def target(self, index):
        """The untransformed target of image `index` (fresh arrays; boxes xyxy pixels)."""
        start, end = self._offsets[index], self._offsets[index + 1]
        return {
            "boxes": self._boxes[start:end].copy(),
            "labels": self._labels[start:end].copy(),
            "image_id": np.int64(self.image_ids[index]),
            "orig_size": self._hw[index].copy(),
            "size": self._hw[index].copy(),
            "iscrowd": self._iscrowd[start:end].copy(),
            "area": self._area[start:end].copy(),
        }

    def read(self, index):
        """The RGB image of `index`, upright; FileNotFoundError, OSError (undecodable) or ValueError (not the size
        its record gives) naming the file when it cannot be used."""
        path = self.image_path(index)
        image = read_image(path)
        height, width = self._hw[index].tolist()
        if image.size != (width, height):
            raise ValueError(f"{path}: decoded image is {image.width}x{image.height} (after EXIF orientation) but "
                             f"{self.ann_file} gives {width}x{height} for image id {self.image_ids[index]}; "
                             "fix width/height in the annotation file")
        return image

    def load(self, index, rng):
        """(image, target) of `index`, augmented with `rng` (np.random.Generator).

        An image that cannot be used (see `read`) raises the error of `read` under data.invalid: strict, and
        SkippedImage under skip (before drawing from `rng`), for the loader to put another sample in its place.
        """
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        try:
            image = self.read(index)
        except (OSError, ValueError) as e:
            if self.invalid == "skip":
                raise SkippedImage(image_problem(e), str(e)) from None
            raise type(e)(f"{e} (or set data.invalid: skip to skip unusable images)") from None
        target = self.target(index)
        if self.transforms is not None:
            image, target = self.transforms(image, target, rng)
        return image, target

    def __getitem__(self, index):
        """(image, target) with the randomness the loader uses for seed 0, epoch 0."""
        index = index + len(self) if index < 0 else index
        return self.load(index, np.random.default_rng([0, 0, index]))
