"""What the DAB-Deformable-DETR / DN-Deformable-DETR tests of both trees share: a tiny config (2 levels of a
ResNet-18, hidden 32, 12 anchor queries, 3 decoder layers) with and without DN-DETR's denoising (dn_dab_detr_case's
options: 3 groups), and the numpy definition of a layer's positional query."""
import numpy as np

from common.config.model_schema import MODEL
from tests.conditional_detr_case import IMAGES, MASKS, TARGETS, fill  # noqa: F401
from tests.dab_detr_case import _mlp, _sub, sine_code
from tests.dn_dab_detr_case import DN, NO_GT, ONE_EMPTY, check_queries, expected_dn  # noqa: F401


def model_cfg(dn=False, **overrides):
    """The model section of a tiny DAB-Deformable-DETR (DN-Deformable-DETR with dn); overrides are nested dicts."""
    base = dict(arch="dab_deformable_detr", num_classes=4, hidden_dim=32, nheads=4, enc_layers=2, dec_layers=3,
                dim_feedforward=64, num_queries=12, num_feature_levels=2, two_stage=False, mixed_selection=False,
                look_forward_twice=False, backbone=dict(name="resnet18", frozen_stages=1),
                dn=DN if dn else dict(enabled=False), dac=dict(enabled=False),
                loss=dict(type="focal", class_weight=1.0), postprocess=dict(num_select=20))
    for k, v in overrides.items():
        base[k] = dict(base.get(k, {}), **v) if isinstance(v, dict) else v
    return fill(MODEL, base)


def query_pos(w, reference, valid_ratio, previous):
    """A decoder layer's positional query from its definition (DAB-DETR's deformable decoder), float64.

    w: the decoder's state dict (numpy, torch layout), reference [B, N, 4] (x, y, w, h) the layer's reference box,
    valid_ratio [B, 2] (w, h) of the first level, previous [B, N, D] the previous layer's output or None (layer 0)
    -> ref_point_head(sine codes of the box in the first level's frame, in (y, x, w, h) order), times
    query_scale(previous) after layer 0.
    """
    d = w["ref_point_head.layers.1.weight"].shape[0]
    box = reference * np.concatenate([valid_ratio, valid_ratio], -1)[:, None]
    code = np.concatenate([sine_code(box[..., i], d // 2) for i in (1, 0, 2, 3)], -1)
    out = _mlp(_sub(w, "ref_point_head."), code)
    return out if previous is None else out * _mlp(_sub(w, "query_scale."), previous)
