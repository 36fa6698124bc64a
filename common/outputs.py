"""The detectors' output dicts, assembled from per-layer predictions the same way in both trees.

Only indexing and dicts: the functions take torch or Paddle tensors alike (logits [B, N, C] and boxes [B, N, 4] per
decoder layer, the N queries being P denoising ones followed by the matching ones).
"""


def stream(logits, boxes, start=0, end=None, extras=None):
    """Per-layer outputs sliced to queries [start:end] -> {pred_logits, pred_boxes, aux_outputs} (last layer on top,
    aux_outputs the earlier layers'). extras: {key: one [B, N, ...] tensor per layer}, sliced and added the same way
    (e.g. Plain-DETR's pred_deltas and ref_boxes)."""
    layers = [{"pred_logits": lg[:, start:end], "pred_boxes": bx[:, start:end]} for lg, bx in zip(logits, boxes)]
    for key, values in (extras or {}).items():
        for layer, value in zip(layers, values):
            layer[key] = value[:, start:end]
    return dict(layers[-1], aux_outputs=layers[:-1])


def with_dn_outputs(logits, boxes, dn):
    """Per-layer outputs of P denoising queries followed by the matching ones, dn: prepare_dn's dict or None (P = 0)
    -> the matching queries' stream, plus, with dn, dn_meta and (P > 0) dn_outputs, the denoising queries' stream."""
    pad = 0 if dn is None else dn["pad_size"]
    out = stream(logits, boxes, start=pad)
    if dn is not None:
        out["dn_meta"] = {k: dn[k] for k in ("pad_size", "num_groups", "group_size", "positive_idx")}
        if pad:
            out["dn_outputs"] = stream(logits, boxes, end=pad)
    return out
