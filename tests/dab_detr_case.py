"""What the DAB-DETR tests of both trees share: a tiny config and a numpy float64 brute-force DAB decoder written
from the paper's and the release's formulas (each anchor coordinate's sine code from its definition, the width /
height modulation and the anchor update spelled out; the per-head cross-attention is conditional_detr_case's
decoder_layer, which writes the content and spatial dot products separately)."""
import numpy as np

from common.config.model_schema import MODEL
from tests.conditional_detr_case import (  # noqa: F401 (the batch and expectations are re-exported)
    IMAGES, MASKS, TARGETS, _layer_norm, _linear, decoder_layer, fill, params_without_gradient_expected)


def model_cfg(**overrides):
    """The model section of a tiny DAB-DETR (C4 of a ResNet-18, stride 16, PReLU FFNs as released); overrides are
    nested dicts."""
    base = dict(arch="dab_detr", num_classes=4, hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                dim_feedforward=64, num_queries=12, num_feature_levels=1, two_stage=False, pe_temperature=20.0,
                activation="prelu",
                backbone=dict(name="resnet18", frozen_stages=1, last_stage=3),
                dn=dict(enabled=False), dac=dict(enabled=False),
                loss=dict(type="focal", class_weight=1.0), postprocess=dict(num_select=20))
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    return fill(MODEL, base)


def _sub(w, prefix):
    return {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}


def _mlp(w, x):
    """MLP with ReLU between its layers; w: {layers.i.weight [out, in], layers.i.bias}."""
    n = len({k.split(".")[1] for k in w})
    for i in range(n):
        x = _linear(w, f"layers.{i}", x)
        x = np.maximum(x, 0.0) if i < n - 1 else x
    return x


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def sine_code(c, n_feats, temperature=10000.0):
    """The sine code of one coordinate c [...] in [0, 1] -> [..., n_feats]: feature k is sin (k even) or cos
    (k odd) of 2 pi c / temperature^(2 floor(k / 2) / n_feats), the divisor rounded to float32 as both trees
    compute their frequencies (position_encoding.sine_embedding) whatever the input's precision."""
    out = np.zeros(c.shape + (n_feats,))
    for k in range(n_feats):
        angle = 2 * np.pi * c / np.float64(np.float32(temperature ** (2 * (k // 2) / n_feats)))
        out[..., k] = np.sin(angle) if k % 2 == 0 else np.cos(angle)
    return out


def decoder(w, box, nhead, memory, pos, anchor, memory_mask, modulate=True):
    """The DAB decoder, post-norm, no dropout, zero input content. w: the decoder's state dict (float64 numpy,
    torch layout), box: bbox_embed's; memory, pos [B, S, D]; anchor [B, Q, 4] (x, y, w, h) in [0, 1]; memory_mask
    bool [B, S] True = padded; modulate=False leaves out the w / h modulation (a control)
    -> (hs: per layer [B, Q, D] after `norm`, references: per layer the [B, Q, 4] anchor the layer used)."""
    d = memory.shape[-1]
    out = np.zeros(anchor.shape[:2] + (d,))
    hs, references = [], []
    for lid in range(len({k.split(".")[1] for k in w if k.startswith("layers.")})):
        x, y, bw, bh = (anchor[..., i] for i in range(4))
        code_y, code_x = sine_code(y, d // 2), sine_code(x, d // 2)
        query_pos = _mlp(_sub(w, "ref_point_head."), np.concatenate(
            [code_y, code_x, sine_code(bw, d // 2), sine_code(bh, d // 2)], -1))
        scale = np.ones_like(out) if lid == 0 else _mlp(_sub(w, "query_scale."), out)
        ref_w, ref_h = np.moveaxis(_sigmoid(_mlp(_sub(w, "ref_anchor_head."), out)), -1, 0)
        mod_y, mod_x = (ref_h / bh, ref_w / bw) if modulate else (1.0, 1.0)
        query_sine = np.concatenate([scale[..., :d // 2] * code_y * np.asarray(mod_y)[..., None],
                                     scale[..., d // 2:] * code_x * np.asarray(mod_x)[..., None]], -1)
        out = decoder_layer(_sub(w, f"layers.{lid}."), nhead, out, memory, pos, query_pos, query_sine, memory_mask,
                            first=lid == 0)
        hs.append(_layer_norm(w, "norm", out))
        references.append(anchor)
        anchor = _sigmoid(_mlp(box, out) + np.log(anchor / (1 - anchor)))
    return hs, references


def decoder_inputs(d=32, q=5, s=12, b=2, seed=0):
    """Random float64 (memory [B, S, D], pos [B, S, D], anchor [B, Q, 4] in (0.1, 0.9), memory_mask [B, S]); image 1
    has its last 5 tokens padded."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, s), bool)
    mask[1, s - 5:] = True
    return rng.standard_normal((b, s, d)), rng.standard_normal((b, s, d)), rng.uniform(0.1, 0.9, (b, q, 4)), mask
