"""Checks of a Swin trunk's pretrained weights against the model, shared by both trees' swin.py (numpy only):
which keys are used, ignored (classifier, final norm, attention masks) or kept at init (the output norms)."""
import numpy as np

IGNORED = ("head.", "norm.")
IGNORED_SUFFIX = ".attn_mask"


def split_pretrained(state, own, path):
    """Checks a Swin state dict against the body's (`own`: {name: tensor}); -> (used names, ignored names, model
    names kept at init). Only the output norms (normK.*, absent from ImageNet checkpoints) may be missing; any
    other missing or unexpected key, a shape mismatch or a different relative-position index is an error naming
    `path` and the keys."""
    ignored = sorted(k for k in state if k.startswith(IGNORED) or k.endswith(IGNORED_SUFFIX))
    used = sorted(k for k in state if k not in ignored)
    missing = sorted(set(own) - set(used))
    kept = [k for k in missing if k.split(".")[0] in {f"norm{i}" for i in range(1, 4)}]
    missing = [k for k in missing if k not in kept]
    unexpected = sorted(set(used) - set(own))
    if missing or unexpected:
        raise ValueError(f"model.backbone.pretrained: {path!r} does not fit this backbone: "
                         f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} keys), "
                         f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                         f"({len(unexpected)} keys); is it a Swin checkpoint of the configured size?")
    return used, ignored, kept


def summarize(names):
    """'head.*, layers.0.blocks.1.attn_mask, ...' -> a short description of a key list for the log."""
    groups = sorted({"*.attn_mask" if k.endswith(IGNORED_SUFFIX) else k.split(".")[0] + ".*" for k in names})
    return ", ".join(groups) or "nothing"


def check_tensors(state, shapes, indices, path):
    """state: {name: array} to load; shapes: the model's {name: shape} in the file's layout; indices: the model's
    {name: relative_position_index array}. Raises ValueError naming `path` and the first bad key."""
    bad = [k for k in state if tuple(np.shape(state[k])) != tuple(shapes[k])]
    if bad:
        k = bad[0]
        hint = (" (another window size: choose the backbone name with the checkpoint's window)"
                if "relative_position" in k else "")
        raise ValueError(f"model.backbone.pretrained: {path!r}: shape mismatch at {k}: file "
                         f"{tuple(np.shape(state[k]))}, model {tuple(shapes[k])}{hint}")
    for k, index in indices.items():
        if k in state and not np.array_equal(np.asarray(state[k]), index):
            raise ValueError(f"model.backbone.pretrained: {path!r}: {k} differs from the official index")
