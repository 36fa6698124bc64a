"""What the Conditional DETR tests of both trees share: a tiny config, a fixed batch, and a numpy float64
brute-force decoder layer written from the paper's formulas (loops over heads, content and spatial logits as two
separate dot products), to compare each tree's ConditionalDecoderLayer with."""
import numpy as np

from common.config.fields import Field
from common.config.model_schema import MODEL


def fill(schema, overrides):
    return {k: (overrides.get(k, v.default) if isinstance(v, Field) else fill(v, overrides.get(k, {})))
            for k, v in schema.items()}


def model_cfg(**overrides):
    """The model section of a tiny Conditional DETR (C4 of a ResNet-18, stride 16); overrides are nested dicts."""
    base = dict(arch="conditional_detr", num_classes=4, hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                dim_feedforward=64, num_queries=12, num_feature_levels=1, two_stage=False,
                backbone=dict(name="resnet18", frozen_stages=1, last_stage=3),
                dn=dict(enabled=False), dac=dict(enabled=False),
                loss=dict(type="focal", class_weight=2.0), postprocess=dict(num_select=20))
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    return fill(MODEL, base)


_rng = np.random.default_rng(0)
IMAGES = _rng.standard_normal((2, 3, 64, 80)).astype(np.float32)
MASKS = np.zeros((2, 64, 80), dtype=bool)
MASKS[1, 40:, :] = True  # image 1 is 40 x 48 of the padded 64 x 80
MASKS[1, :, 48:] = True
TARGETS = [{"labels": np.array([1, 3]), "boxes": np.array([[0.5, 0.5, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1]], np.float32)},
           {"labels": np.array([2]), "boxes": np.array([[0.4, 0.5, 0.3, 0.3]], np.float32)}]



def params_without_gradient_expected():
    """([names] at training step 0, [names] at step 1) of a Conditional / DAB-DETR model's parameters that get no
    gradient: layer 0's self-attention content weights never (the decoder's input is 0; as released, only their
    biases act), and at step 0 the box head's first layers (its last layer starts at 0, release init)."""
    dead = [f"transformer.decoder.layers.0.{n}.weight" for n in ("sa_qcontent_proj", "sa_kcontent_proj", "sa_v_proj")]
    return dead + [f"bbox_embed.layers.{j}.{w}" for j in (0, 1) for w in ("weight", "bias")], dead

def _linear(w, name, x):
    return x @ w[f"{name}.weight"].T + w[f"{name}.bias"]


def _layer_norm(w, name, x, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w[f"{name}.weight"] + w[f"{name}.bias"]


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def decoder_layer(w, nhead, tgt, memory, pos, query_pos, query_sine, memory_mask, first):
    """One conditional decoder layer, post-norm, no dropout, ReLU or (with `activation.weight` in w) PReLU in the
    FFN. w: the layer's state dict as float64 numpy in torch's layout (Linear weights [out, in]); tgt, query_pos,
    query_sine [B, Q, D]; memory, pos [B, S, D]; memory_mask bool [B, S] True = padded -> [B, Q, D]."""
    b_size, q_size, d = tgt.shape
    dh = d // nhead
    heads = [slice(h * dh, (h + 1) * dh) for h in range(nhead)]

    q = _linear(w, "sa_qcontent_proj", tgt) + _linear(w, "sa_qpos_proj", query_pos)
    k = _linear(w, "sa_kcontent_proj", tgt) + _linear(w, "sa_kpos_proj", query_pos)
    v = _linear(w, "sa_v_proj", tgt)
    sa = np.zeros_like(tgt)
    for b in range(b_size):
        for h in heads:
            sa[b, :, h] = _softmax(q[b, :, h] @ k[b, :, h].T / np.sqrt(dh)) @ v[b, :, h]
    tgt = _layer_norm(w, "norm1", tgt + _linear(w, "self_attn.out_proj", sa))

    c_q = _linear(w, "ca_qcontent_proj", tgt)       # content query
    c_k = _linear(w, "ca_kcontent_proj", memory)    # content key
    p_q = _linear(w, "ca_qpos_sine_proj", query_sine)  # spatial query: projected lambda_q * PE(s)
    p_k = _linear(w, "ca_kpos_proj", pos)           # spatial key: projected PE(pixel)
    v = _linear(w, "ca_v_proj", memory)
    if first:
        c_q = c_q + _linear(w, "ca_qpos_proj", query_pos)
        c_k = c_k + p_k
    ca = np.zeros_like(tgt)
    for b in range(b_size):
        for h in heads:
            logits = (c_q[b, :, h] @ c_k[b, :, h].T + p_q[b, :, h] @ p_k[b, :, h].T) / np.sqrt(2 * dh)
            logits[:, memory_mask[b]] = -np.inf
            ca[b, :, h] = _softmax(logits) @ v[b, :, h]
    tgt = _layer_norm(w, "norm2", tgt + _linear(w, "cross_attn.out_proj", ca))

    hidden = _linear(w, "linear1", tgt)
    slope = w.get("activation.weight", 0.0)  # PReLU's learned negative slope (model.activation prelu), else ReLU
    ffn = _linear(w, "linear2", np.maximum(hidden, 0.0) + slope * np.minimum(hidden, 0.0))
    return _layer_norm(w, "norm3", tgt + ffn)


def layer_inputs(d=32, q=5, s=12, b=2, seed=0):
    """Random float64 (tgt, memory, pos, query_pos, query_sine, memory_mask) for decoder_layer; image 1 has its
    last 5 tokens padded."""
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(shape) for shape in ((b, q, d), (b, s, d), (b, s, d), (b, q, d), (b, q, d))]
    mask = np.zeros((b, s), bool)
    mask[1, s - 5:] = True
    return (*arrays, mask)
