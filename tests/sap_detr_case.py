"""What the SAP-DETR tests of both trees share: a tiny config (C4 of a ResNet-18, hidden 32, a 3 x 2 query grid)
and a numpy float64 brute-force decoder written from the paper's and the release's formulas: the sine codes of the
point and of the box corners coordinate by coordinate, the self-attention with point and box positions, the
cross-attention per head as three separate dot products (content, point, box) plus the side-directed Gaussian
(tests/side_gaussian_case.py's direct loops), the side and point updates with the release's clamped logit."""
import numpy as np

from common.config.model_schema import MODEL
from tests.conditional_detr_case import IMAGES, MASKS, TARGETS, _layer_norm, _linear, _softmax, fill  # noqa: F401
from tests.dab_detr_case import _mlp, _sigmoid, _sub, sine_code
from tests.side_gaussian_case import sdg_direct

GRID = (3, 2)  # columns, rows: 6 queries


def model_cfg(**overrides):
    """The model section of a tiny SAP-DETR (C4 of a ResNet-18, stride 16, ReLU FFNs as the release's scripts);
    overrides are nested dicts."""
    base = dict(arch="sap_detr", num_classes=4, hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                dim_feedforward=64, num_queries=GRID[0] * GRID[1], num_feature_levels=1, two_stage=False,
                pe_temperature=20.0, backbone=dict(name="resnet18", frozen_stages=1, last_stage=3),
                dn=dict(enabled=False), dac=dict(enabled=False), sap=dict(grid=list(GRID)),
                loss=dict(type="focal", class_weight=1.0), postprocess=dict(num_select=20))
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    return fill(MODEL, base)


def logit(x, eps=1e-3):
    """The release's inverse_sigmoid: x clamped to [0, 1], then log(max(x, eps) / max(1 - x, eps))."""
    x = np.clip(x, 0, 1)
    return np.log(np.maximum(x, eps) / np.maximum(1 - x, eps))


def codes(coords, d):
    """Sine codes (temperature 20, d / 2 features) of each coordinate in order. coords [..., K] -> [..., K d / 2]."""
    return np.concatenate([sine_code(coords[..., k], d // 2, 20.0) for k in range(coords.shape[-1])], -1)


def decoder_layer(w, nhead, tgt, memory, pos, query_pos, bbox_pos, point_sine, box_sine, point, ltrb, shape,
                  memory_mask, first):
    """One SAP decoder layer, post-norm, no dropout, ReLU FFN; the SDG when w has sdg.* weights. w: the layer's
    state dict (float64 numpy, torch layout); point [B, Q, 2], ltrb [B, Q, 4] in [0, 1] of the (H, W) `shape`
    map -> [B, Q, D]."""
    b_size, q_size, d = tgt.shape
    dh = d // nhead
    heads = [slice(h * dh, (h + 1) * dh) for h in range(nhead)]

    q = _linear(w, "sa_qcontent_proj", tgt) + _linear(w, "sa_point_qpos_proj", query_pos) + \
        _linear(w, "sa_bbox_qpos_proj", bbox_pos)
    k = _linear(w, "sa_kcontent_proj", tgt) + _linear(w, "sa_point_kpos_proj", query_pos) + \
        _linear(w, "sa_bbox_kpos_proj", bbox_pos)
    v = _linear(w, "sa_v_proj", tgt)
    sa = np.zeros_like(tgt)
    for b in range(b_size):
        for h in heads:
            sa[b, :, h] = _softmax(q[b, :, h] @ k[b, :, h].T / np.sqrt(dh)) @ v[b, :, h]
    tgt = _layer_norm(w, "norm1", tgt + _linear(w, "self_attn.out_proj", sa))

    bias = np.zeros((b_size, nhead, q_size, memory.shape[1]))
    if any(key.startswith("sdg.") for key in w):
        hh, ww = shape
        bias = sdg_direct(_sub(w, "sdg."), tgt, point * [ww, hh], ltrb * [ww, hh, ww, hh], shape)
    c_q = _linear(w, "ca_qcontent_proj", tgt)
    c_k = _linear(w, "ca_kcontent_proj", memory)
    p_k = _linear(w, "ca_kpos_proj", pos)
    p_q = _linear(w, "ca_qpos_sine_proj", point_sine)
    b_q = _linear(w, "ca_bbox_qpos_sine_proj", box_sine)
    v = _linear(w, "ca_v_proj", memory)
    if first:
        c_q = c_q + _linear(w, "ca_point_qpos_proj", query_pos) + _linear(w, "ca_bbox_qpos_proj", bbox_pos)
        c_k = c_k + p_k
    ca = np.zeros_like(tgt)
    for b in range(b_size):
        for i, h in enumerate(heads):
            logits = (c_q[b, :, h] @ c_k[b, :, h].T + p_q[b, :, h] @ p_k[b, :, h].T + b_q[b, :, h] @ p_k[b, :, h].T)
            logits = logits / np.sqrt(3 * dh) + bias[b, i]
            logits[:, memory_mask[b]] = -np.inf
            ca[b, :, h] = _softmax(logits) @ v[b, :, h]
    tgt = _layer_norm(w, "norm2", tgt + _linear(w, "cross_attn.out_proj", ca))
    ffn = _linear(w, "linear2", np.maximum(_linear(w, "linear1", tgt), 0.0))
    return _layer_norm(w, "norm3", tgt + ffn)


def decoder(w, box_ws, point_ws, nhead, memory, pos, shape, memory_mask, grid, ltrb, cell):
    """The SAP decoder from zero content. w: the decoder's state dict, box_ws / point_ws: per layer the box / point
    head's (float64 numpy, torch layout); memory, pos [B, S, D], S = H W of `shape`; grid [B, Q, 2], ltrb [B, Q, 4];
    cell [2] -> (hs: per layer [B, Q, D] after `norm`, points, sides: per layer the references of its predictions:
    the sides it attended with and the point of the layer before it, the grid point for layers 0 and 1)."""
    d = memory.shape[-1]
    n_layers = len({k.split(".")[1] for k in w if k.startswith("layers.")})
    out, point = np.zeros(grid.shape[:2] + (d,)), grid
    hs, points, sides = [], [grid], [ltrb]
    for lid in range(n_layers):
        point_sine = codes(point, d)
        box_sine = codes(np.concatenate([point - ltrb[..., :2], point + ltrb[..., 2:]], -1), d)
        query_pos = _mlp(_sub(w, "ref_point_head."), point_sine)
        bbox_pos = _mlp(_sub(w, "ref_bbox_head."), box_sine)
        if lid > 0:
            scale = _mlp(_sub(w, "query_scale."), out)
            point_sine, box_sine = point_sine * scale, box_sine * np.concatenate([scale, scale], -1)
        out = decoder_layer(_sub(w, f"layers.{lid}."), nhead, out, memory, pos, query_pos, bbox_pos, point_sine,
                            box_sine, point, ltrb, shape, memory_mask, first=lid == 0)
        hs.append(_layer_norm(w, "norm", out))
        if lid < n_layers - 1:
            points.append(point)
            ltrb = _sigmoid(_mlp(box_ws[lid], out) + logit(ltrb))
            sides.append(ltrb)
            point = grid + cell * _sigmoid(_mlp(point_ws[lid], out) + logit(point - grid))
    return hs, points, sides


def decoder_inputs(d=32, shape=(3, 4), b=2, seed=0):
    """Random float64 (memory [B, S, D], pos [B, S, D], grid [B, Q, 2] of a 3 x 2 grid, ltrb [B, Q, 4] in
    (0.05, 0.4), memory_mask [B, S]; S = H W); image 1 has its last 5 tokens padded."""
    rng = np.random.default_rng(seed)
    s = shape[0] * shape[1]
    mask = np.zeros((b, s), bool)
    mask[1, s - 5:] = True
    ys, xs = np.meshgrid(np.arange(GRID[1]) / GRID[1], np.arange(GRID[0]) / GRID[0], indexing="ij")
    grid = np.broadcast_to(np.stack([xs.ravel(), ys.ravel()], -1), (b, GRID[0] * GRID[1], 2)).copy()
    return (rng.standard_normal((b, s, d)), rng.standard_normal((b, s, d)), grid,
            rng.uniform(0.05, 0.4, (b, GRID[0] * GRID[1], 4)), mask)
