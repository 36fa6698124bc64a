"""Checks of a ResNet backbone's pretrained weights against the model, shared by both trees' backbone.py.

A weights file is either a torchvision ResNet state dict (ImageNet weights: `fc.*` is the classifier) or the
checkpoint of a DETR-family detector whose backbone is a ResNet: this project's (`backbone.body.*`, either
framework) or facebookresearch DETR / Deformable-DETR's and the DAC-DETR release's (`backbone.0.body.*`). From a
detector only the ResNet is taken, so the backbone of one detector (e.g. the one `sh train.sh` trains) can start
another. Key names only: values are whatever the caller read (torch tensors or numpy arrays).
"""
COUNTER_SUFFIX = "num_batches_tracked"  # torch BatchNorm's step counter: no Paddle counterpart, no use here
DETECTOR_PREFIXES = ("backbone.body.", "backbone.0.body.")


def resnet_part(state):
    """-> (the ResNet's {torchvision name: value}, the detector prefix it was under or None, count of the
    detector's other keys left out). A file with a ResNet under neither prefix is returned as it is."""
    for prefix in DETECTOR_PREFIXES:
        inner = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if inner:
            return inner, prefix, len(state) - len(inner)
    return state, None, 0


def split_pretrained(state, own, path, last_stage, rename=lambda name: name):
    """Checks a ResNet weights file's state dict against the body's (`own`: {name: tensor}).

    -> (used {model name: value}, ignored file names, description of the source for the log). The classifier,
    the stages the body does not build (layer4.* with last_stage 3) and BatchNorm counters are ignored; any
    other missing or unexpected key, or a shape mismatch, is a ValueError naming `path` and the keys. `rename`
    maps a torchvision name to the model's (Paddle's BatchNorm statistics are named differently).
    """
    state, prefix, others = resnet_part(state)
    unbuilt = ("fc.",) + tuple(f"layer{i}." for i in range(last_stage + 1, 5))
    ignored = sorted(k for k in state if k.startswith(unbuilt) or k.endswith(COUNTER_SUFFIX))
    used = {rename(k): v for k, v in state.items() if k not in ignored}
    missing = sorted(set(own) - set(used))
    unexpected = sorted(set(used) - set(own))
    if missing or unexpected:
        raise ValueError(f"model.backbone.pretrained: {path!r} does not fit this backbone: "
                         f"missing {missing[:5]}{' ...' if len(missing) > 5 else ''} ({len(missing)} keys), "
                         f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''} "
                         f"({len(unexpected)} keys); is it a torchvision ResNet, or a detector with a ResNet "
                         f"backbone, of the configured depth and norm?")
    bad = [k for k in own if tuple(own[k].shape) != tuple(used[k].shape)]
    if bad:
        raise ValueError(f"model.backbone.pretrained: {path!r}: shape mismatch at {bad[0]}: file "
                         f"{tuple(used[bad[0]].shape)}, model {tuple(own[bad[0]].shape)}")
    counters = sum(k.endswith(COUNTER_SUFFIX) for k in ignored)
    named = sorted({k.split(".")[0] + ".*" for k in ignored if not k.endswith(COUNTER_SUFFIX)})  # fc.*, layer4.*
    source = f"{len(used)} tensors"
    if prefix:
        source += f" from {prefix}* of a detector checkpoint ({others} other keys left out)"
    source += f"; ignored {', '.join(named) or 'nothing'}" + (f" and {counters} {COUNTER_SUFFIX}" if counters else "")
    return used, ignored, source
