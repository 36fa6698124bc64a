"""Batching of variable-size images: zero padding at the bottom/right plus a padding mask."""
import numpy as np


def collate(samples, size_divisibility=0):
    """samples: [(image float32 [3, h_i, w_i], target dict)] * B ->
    {"images": float32 [B, 3, H, W], "masks": bool [B, H, W] (True = padding), "targets": [dict] * B},
    H, W = the largest h_i, w_i, rounded up to a multiple of size_divisibility when it is > 0."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    images = [image for image, _ in samples]
    for image in images:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[0] != 3:
            raise TypeError(f"collate expects float32 [3, H, W] arrays, got {type(image).__name__} "
                            f"{getattr(image, 'shape', '')}; is Normalize the last transform?")
    height = max(image.shape[1] for image in images)
    width = max(image.shape[2] for image in images)
    if size_divisibility > 0:
        height = -(-height // size_divisibility) * size_divisibility
        width = -(-width // size_divisibility) * size_divisibility
    batch = np.zeros((len(images), 3, height, width), dtype=np.float32)
    masks = np.ones((len(images), height, width), dtype=bool)
    for k, image in enumerate(images):
        batch[k, :, : image.shape[1], : image.shape[2]] = image
        masks[k, : image.shape[1], : image.shape[2]] = False
    return {"images": batch, "masks": masks, "targets": [target for _, target in samples]}
