"""Conditional DETR (Meng et al., "Conditional DETR for Fast Training Convergence", ICCV 2021): the detector.

One feature map (C5, DC5 with backbone.dilation, or C4 with backbone.last_stage 3) projected to the transformer
width, its sine position codes, conditional_transformer.ConditionalTransformer, and one class head and one box
head shared by every decoder layer. The box head predicts an offset from the query's reference point s: box =
sigmoid(bbox_embed(h) + (logit(s_x), logit(s_y), 0, 0)), so s is a box centre before any offset; s gets
gradients from the boxes of every layer as well as through the spatial queries.

forward(images [B, 3, H, W], masks bool [B, H, W] True = padding, targets=None, dn_rng=None) -> dict:

    pred_logits  [B, Q, C]   last decoder layer (sigmoid class scores)
    pred_boxes   [B, Q, 4]   cxcywh in [0, 1] of the unpadded image
    aux_outputs  list of dec_layers - 1 dicts {pred_logits, pred_boxes}, earlier layers

`targets` and `dn_rng` are accepted for the engines' call signature and unused (no denoising queries). Losses:
the shared SetCriterion (focal loss, Hungarian matching, every layer).

Parameter names follow the official release (class_embed, bbox_embed.layers.M, query_embed, input_proj,
transformer.encoder.layers.N.*, transformer.decoder.{layers.N.{sa,ca}_*_proj, norm, query_scale,
ref_point_head}), except the backbone: `backbone.body.*` (official: backbone.0.body.*), and the encoder's
attention, which keeps torch.nn.MultiheadAttention's names.
"""
import math

import torch
from torch import nn

from common.outputs import stream

from .dac_detr import MLP
from .position_encoding import PositionEmbeddingSine
from .utils import inverse_sigmoid

PRIOR_LOGIT = -math.log((1 - 0.01) / 0.01)  # a sigmoid score of 0.01: the focal-loss detectors' first scores


class SingleScaleDETR(nn.Module):
    """What the single-scale detectors (ConditionalDETR, dab_detr.DABDETR, sap_detr.SAPDETR) share: the backbone's
    last feature map projected to the transformer width (input_proj), its sine position codes and, with
    shared_heads, one class head and one box head for every decoder layer. A subclass registers its queries after
    them, then calls init_heads (the releases' init, drawn after the queries' so that a seed gives the releases'
    order of random draws)."""

    two_stage = False  # no encoder proposals (read by convert.check)

    def __init__(self, backbone, transformer, num_classes, num_queries, pe_temperature, shared_heads=True):
        super().__init__()
        d = transformer.d_model
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.backbone = backbone
        self.transformer = transformer
        self.position_embedding = PositionEmbeddingSine(d // 2, pe_temperature)
        self.shared_heads = shared_heads
        self.input_proj = nn.Conv2d(backbone.num_channels[-1], d, 1)
        if shared_heads:
            self.class_embed = nn.Linear(d, num_classes)
            self.bbox_embed = MLP(d, d, 4, 3)

    def init_heads(self):
        """The shared heads' init (classes start at p = 0.01, boxes at the references) and input_proj's."""
        if self.shared_heads:
            nn.init.constant_(self.class_embed.bias, PRIOR_LOGIT)
            nn.init.zeros_(self.bbox_embed.layers[-1].weight)
            nn.init.zeros_(self.bbox_embed.layers[-1].bias)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)


class ConditionalDETR(SingleScaleDETR):
    """See the module docstring."""

    def __init__(self, backbone, transformer, num_classes, num_queries=300, pe_temperature=10000.0):
        super().__init__(backbone, transformer, num_classes, num_queries, pe_temperature)
        self.query_embed = nn.Embedding(num_queries, transformer.d_model)
        self.init_heads()

    def forward(self, images, masks, targets=None, dn_rng=None):
        x, mask = self.backbone(images, masks)[-1]
        hs, reference = self.transformer(self.input_proj(x), mask, self.query_embed.weight,
                                         self.position_embedding(mask))
        ref_logit = inverse_sigmoid(reference)
        boxes = []
        for h in hs:
            delta = self.bbox_embed(h)
            boxes.append(torch.cat([delta[..., :2] + ref_logit, delta[..., 2:]], -1).sigmoid())
        return stream([self.class_embed(h) for h in hs], boxes)
