"""infer_cfg.yml's Preprocess list, in numpy: an image -> the exported program's inputs.

`Resize` follows the project's eval transform (common/data/transforms.resize: DETR's size rule, PIL resampling),
so a predictor sees exactly what `test.sh` evaluates; PaddleDetection's own Resize (OpenCV, its own rounding)
can differ from it by a pixel in the resized size.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from common.data.collate import collate
from common.data.transforms import resized_hw
from common.errors import UserError

RESAMPLING = {0: Image.Resampling.NEAREST, 1: Image.Resampling.BILINEAR, 2: Image.Resampling.BICUBIC}


def _resize(image: Image.Image, op: Dict) -> Image.Image:
    target = [int(t) for t in op["target_size"]]
    if op.get("keep_ratio", True):
        height, width = resized_hw(image.height, image.width, min(target), max(target))
    else:
        height, width = target
    interp = op.get("interp", 1)
    if interp not in RESAMPLING:
        raise UserError(f"infer_cfg Resize: interp {interp} is not supported (0 nearest, 1 linear, 2 cubic)")
    return image.resize((width, height), RESAMPLING[interp])


def preprocess(image: Image.Image, ops: Sequence[Dict]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB image -> (float32 [3, h, w], im_shape float32 [2] = (h, w), scale_factor float32 [2] =
    (h / original h, w / original w))."""
    orig_h, orig_w = image.height, image.width
    pixels = None
    for op in ops:
        kind = op.get("type")
        if kind == "Resize":
            if pixels is not None:
                raise UserError("infer_cfg Preprocess: Resize must come before NormalizeImage")
            image = _resize(image, op)
        elif kind == "NormalizeImage":
            pixels = np.asarray(image, dtype=np.float32)
            if op.get("is_scale", True):
                pixels = pixels / 255.0
            if op.get("norm_type", "mean_std") == "mean_std":
                mean = np.asarray(op["mean"], dtype=np.float32).reshape(1, 1, 3)
                std = np.asarray(op["std"], dtype=np.float32).reshape(1, 1, 3)
                pixels = (pixels - mean) / std
        elif kind == "Permute":
            if pixels is None:
                pixels = np.asarray(image, dtype=np.float32)
            pixels = np.ascontiguousarray(pixels.transpose(2, 0, 1))
        elif kind != "PadStride":  # applied to the batch (make_batch)
            raise UserError(f"infer_cfg Preprocess: op {kind!r} is not supported (Resize, NormalizeImage, "
                            "Permute, PadStride)")
    if pixels is None or pixels.ndim != 3 or pixels.shape[0] != 3:
        raise UserError("infer_cfg Preprocess must end with a [3, H, W] image (NormalizeImage, then Permute)")
    h, w = pixels.shape[1:]
    return pixels, np.array([h, w], np.float32), np.array([h / orig_h, w / orig_w], np.float32)


def make_batch(samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]], ops: Sequence[Dict]) -> Dict[str, np.ndarray]:
    """preprocess() outputs -> the program's inputs {image [B, 3, H, W] (zero-padded at the bottom / right, as
    the training loader pads), im_shape [B, 2], scale_factor [B, 2]}."""
    stride = max([int(op["stride"]) for op in ops if op.get("type") == "PadStride"], default=0)
    images = collate([(pixels, None) for pixels, _, _ in samples], size_divisibility=stride)["images"]
    return {"image": images, "im_shape": np.stack([s[1] for s in samples]),
            "scale_factor": np.stack([s[2] for s in samples])}
