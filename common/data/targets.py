"""Training targets as the matchers, losses and denoising queries read them (shared by both model trees)."""
import numpy as np


def numpy_targets(targets, to_numpy=lambda x: x):
    """B target dicts (numpy arrays, or a framework's tensors converted by `to_numpy`) -> B dicts
    {"labels" int64 [n], "boxes" float32 [n, 4] cxcywh}; other keys are dropped. A missing key or a
    labels / boxes count mismatch is a ValueError naming the image."""
    out = []
    for b, t in enumerate(targets):
        for key in ("labels", "boxes"):
            if key not in t:
                raise ValueError(f"targets[{b}] has no '{key}' entry (expected the loader's target dicts)")
        labels = np.asarray(to_numpy(t["labels"]), dtype=np.int64).reshape(-1)
        boxes = np.asarray(to_numpy(t["boxes"]), dtype=np.float32).reshape(-1, 4)
        if len(labels) != len(boxes):
            raise ValueError(f"targets[{b}]: {len(labels)} labels but {len(boxes)} boxes")
        out.append({"labels": labels, "boxes": boxes})
    return out
