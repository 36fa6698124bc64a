"""Detection augmentations on (PIL image, target) pairs, following DETR's recipe.

Every transform is `t(image, target, rng) -> (image, target)` and draws randomness only from `rng`
(np.random.Generator), so a sample's augmentation is fixed by its (seed, epoch, index). Boxes are
xyxy pixels until `Normalize`, which turns them into cxcywh normalized by the image (w, h). Targets
are never modified in place.
"""
from collections.abc import Mapping

import numpy as np
from PIL import Image

PER_BOX_KEYS = ("boxes", "labels", "iscrowd", "area")


def resized_hw(height, width, size, max_size=None):
    """(h, w) after scaling the short side to `size`, keeping the aspect ratio; when the long side
    would exceed `max_size`, the short side shrinks to round(max_size * short / long). Sizes are
    truncated to int as in DETR, so the long side can end a pixel or two above max_size."""
    if max_size is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * size > max_size:
            size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def resize(image, target, size, max_size=None):
    """Resize (bilinear) so the short side is `size`; boxes [n, 4] xyxy and areas [n] follow."""
    height, width = resized_hw(image.height, image.width, size, max_size)
    scale_w, scale_h = width / image.width, height / image.height
    image = image.resize((width, height), Image.Resampling.BILINEAR)
    target = dict(target)
    target["boxes"] = (target["boxes"] * np.array([scale_w, scale_h, scale_w, scale_h])).astype(np.float32)
    if "area" in target:
        target["area"] = (target["area"] * (scale_w * scale_h)).astype(np.float32)
    target["size"] = np.array([height, width], dtype=np.int64)
    return image, target


def hflip(image, target):
    """Mirror left-right; boxes [n, 4] xyxy: x -> width - x (x0 and x1 swap roles)."""
    width = image.width
    target = dict(target)
    x0, y0, x1, y1 = np.moveaxis(target["boxes"], -1, 0)
    target["boxes"] = np.stack([width - x1, y0, width - x0, y1], axis=-1).astype(np.float32)
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), target


def crop(image, target, top, left, height, width):
    """Crop the pixel window [top, top+height) x [left, left+width); boxes [n, 4] xyxy are shifted and
    clipped to it, and boxes left with no area are removed with their per-box fields. Area becomes the
    clipped box area (the segment area is unknown after cropping)."""
    image = image.crop((left, top, left + width, top + height))
    boxes = target["boxes"] - np.array([left, top, left, top], dtype=np.float32)
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    target = dict(target, boxes=boxes.astype(np.float32), size=np.array([height, width], dtype=np.int64))
    if "area" in target:
        target["area"] = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).astype(np.float32)
    for key in PER_BOX_KEYS:
        if key in target:
            target[key] = target[key][keep]
    return image, target


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, image, target, rng):
        for t in self.transforms:
            image, target = t(image, target, rng)
        return image, target


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, image, target, rng):
        return hflip(image, target) if rng.random() < self.p else (image, target)


class RandomResize:
    """Short side to a scale drawn uniformly from `scales`, long side capped by `max_size` (None: no cap)."""

    def __init__(self, scales, max_size=None):
        if not scales or any(int(s) != s or s <= 0 for s in scales):
            raise ValueError(f"scales must be a non-empty list of positive integers, got {scales!r}")
        self.scales = [int(s) for s in scales]
        self.max_size = max_size

    def __call__(self, image, target, rng):
        return resize(image, target, self.scales[rng.integers(len(self.scales))], self.max_size)


class RandomSizeCrop:
    """Crop of random width and height, each uniform in [min_size, min(image side, max_size)], at a
    uniformly random position. A side shorter than min_size is kept whole."""

    def __init__(self, min_size, max_size):
        if not 0 < min_size <= max_size:
            raise ValueError(f"RandomSizeCrop needs 0 < min_size <= max_size, got ({min_size}, {max_size})")
        self.min_size, self.max_size = int(min_size), int(max_size)

    def _side(self, length, rng):
        high = min(length, self.max_size)
        return int(rng.integers(min(self.min_size, high), high, endpoint=True))

    def __call__(self, image, target, rng):
        width = self._side(image.width, rng)
        height = self._side(image.height, rng)
        top = int(rng.integers(0, image.height - height, endpoint=True))
        left = int(rng.integers(0, image.width - width, endpoint=True))
        return crop(image, target, top, left, height, width)


class RandomSelect:
    """`t1` with probability p, else `t2`."""

    def __init__(self, t1, t2, p=0.5):
        self.t1, self.t2, self.p = t1, t2, p

    def __call__(self, image, target, rng):
        return (self.t1 if rng.random() < self.p else self.t2)(image, target, rng)


class Normalize:
    """PIL RGB image -> float32 [3, H, W], (x / 255 - mean) / std; boxes [n, 4] xyxy pixels -> cxcywh
    normalized by (W, H); target["size"] = (H, W)."""

    def __init__(self, mean, std):
        self.mean = np.asarray(mean, dtype=np.float32).reshape(1, 1, 3)
        self.std = np.asarray(std, dtype=np.float32).reshape(1, 1, 3)

    def __call__(self, image, target, rng):
        pixels = np.asarray(image, dtype=np.float32) / 255.0
        height, width = pixels.shape[:2]
        pixels = (pixels - self.mean) / self.std
        target = dict(target, size=np.array([height, width], dtype=np.int64))
        x0, y0, x1, y1 = np.moveaxis(target["boxes"], -1, 0)
        cxcywh = np.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], axis=-1)
        target["boxes"] = (cxcywh / np.array([width, height, width, height])).astype(np.float32)
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), target


def config_value(section, key, where):
    """section[key], or a KeyError naming the config key `where.key` when it is missing."""
    try:
        return section[key]
    except (KeyError, TypeError):
        raise KeyError(f"config key {where}.{key} is missing") from None


def build_transforms(data_cfg: Mapping, split: str, train: bool) -> Compose:
    """DETR's augmentation for training, a deterministic resize for evaluation; both end in Normalize.

    data_cfg is the config's `data` section; the split's keys are read from data_cfg[split]. Train:
    flip, then with probability 1 - crop_prob a plain multi-scale resize, else resize to crop_scales ->
    random crop (crop_size = [min, max]) -> multi-scale resize. Eval: short side to `size`.
    """
    section = config_value(data_cfg, split, "data")

    def get(key):
        return config_value(section, key, f"data.{split}")

    normalize = Normalize(config_value(data_cfg, "mean", "data"), config_value(data_cfg, "std", "data"))
    if not train:
        return Compose([RandomResize([get("size")], get("max_size")), normalize])
    crop_size = get("crop_size")
    if not isinstance(crop_size, (list, tuple)) or len(crop_size) != 2:
        raise ValueError(f"config key data.{split}.crop_size must be [min, max], got {crop_size!r}")
    plain = RandomResize(get("scales"), get("max_size"))
    cropped = Compose([RandomResize(get("crop_scales")), RandomSizeCrop(*crop_size),
                       RandomResize(get("scales"), get("max_size"))])
    return Compose([RandomHorizontalFlip(get("hflip_prob")),
                    RandomSelect(plain, cropped, p=1.0 - get("crop_prob")), normalize])
