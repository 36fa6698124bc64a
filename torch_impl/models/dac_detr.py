"""The DAC-DETR detector: backbone, multi-level input projection, deformable transformer, prediction heads.

Switches (see common/config/model_schema.py) make the same class Deformable-DETR (two-stage, box refinement),
DINO (+ contrastive denoising, mixed selection, look-forward-twice) or DAC-DETR (+ the C-decoder stream).

forward(images [B, 3, H, W], masks bool [B, H, W] True = padding, targets=None, dn_rng=None) -> dict:

    pred_logits  [B, Q, C]   last O-decoder layer, matching queries only (sigmoid class scores)
    pred_boxes   [B, Q, 4]   cxcywh in [0, 1] of the unpadded image
    aux_outputs  list of dec_layers - 1 dicts {pred_logits, pred_boxes}, earlier O-decoder layers
    enc_outputs  {pred_logits [B, S, C], pred_boxes [B, S, 4]}: every encoder token's proposal (two-stage;
                 only class 0 is trained, as a binary objectness score)
  training only:
    dn_meta      {pad_size P, num_groups, group_size, positive_idx: B (query_idx, gt_idx) numpy pairs}
                 (denoising on; P = 0 when no image of the batch has a GT)
    dn_outputs   {pred_logits [B, P, C], pred_boxes [B, P, 4], aux_outputs}, O-decoder, when P > 0
    c_outputs    {pred_logits, pred_boxes [B, Q, .], aux_outputs}, the C-decoder stream (dac on)
    c_dn_outputs the C-decoder's denoising queries (dac on and P > 0)

`targets` (training with denoising): B dicts with "labels" [n] and "boxes" [n, 4] cxcywh, numpy arrays or tensors.
`dn_rng`: numpy Generator for the denoising noise; by default one seeded from torch's global RNG.

Parameter names follow the official release (class_embed.N, bbox_embed.N.layers.M, query_embed, input_proj.N,
label_enc, transformer.*), except that the backbone is `backbone.body.*` (official: backbone.0.body.*) and the
heads are not registered a second time under transformer.decoder.
"""
import math

import torch.nn.functional as F
from torch import nn

from common.denoising import prepare_dn
from common.outputs import stream, with_dn_outputs

from .dn_components import dn_queries_to_tensors
from .position_encoding import PositionEmbeddingSine
from .utils import numpy_rng, targets_to_numpy


class MLP(nn.Module):
    """Linear layers with ReLU in between. x [..., input_dim] -> [..., output_dim]."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DACDETR(nn.Module):
    """See the module docstring. `dn`: None (no denoising) or dict(number, label_noise_ratio, box_noise_scale,
    contrastive); `dac`: train the C-decoder stream."""

    def __init__(self, backbone, transformer, num_classes, num_feature_levels=4, num_queries=900, two_stage=True,
                 mixed_selection=True, dn=None, dac=True, pe_temperature=10000.0):
        super().__init__()
        d = transformer.d_model
        if d % 32:
            raise ValueError(f"model.hidden_dim must be a multiple of 32 (GroupNorm(32) in input_proj), got {d}")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.two_stage = two_stage
        self.dn = dn
        self.dac = dac
        self.backbone = backbone
        self.transformer = transformer
        self.position_embedding = PositionEmbeddingSine(d // 2, pe_temperature)
        projs = [nn.Sequential(nn.Conv2d(c, d, 1), nn.GroupNorm(32, d)) for c in backbone.num_channels]
        in_ch = backbone.num_channels[-1]
        for _ in range(num_feature_levels - len(projs)):  # extra levels: stride-2 3x3 convs on C5, then on those
            projs.append(nn.Sequential(nn.Conv2d(in_ch, d, 3, stride=2, padding=1), nn.GroupNorm(32, d)))
            in_ch = d
        self.input_proj = nn.ModuleList(projs)
        num_pred = len(transformer.decoder.layers) + (1 if two_stage else 0)  # + the proposal head
        self.class_embed = nn.ModuleList(nn.Linear(d, num_classes) for _ in range(num_pred))
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(num_pred))
        self.init_queries(mixed_selection)
        self._reset_parameters()

    def init_queries(self, mixed_selection):
        """The learned queries: one-stage query_embed [Q, 2 D] (positional, content), two-stage with mixed selection
        query_embed [Q, D] (content); with denoising label_enc [C + 1, D] (subclasses build their own)."""
        d = self.transformer.d_model
        if self.dn is not None and not self.two_stage:
            raise ValueError("model.dn.enabled needs model.two_stage (denoising boxes join the selected proposals)")
        if not self.two_stage:
            self.query_embed = nn.Embedding(self.num_queries, 2 * d)
        elif mixed_selection:
            self.query_embed = nn.Embedding(self.num_queries, d)
        if self.dn is not None:
            self.label_enc = nn.Embedding(self.num_classes + 1, d)

    def _reset_parameters(self):
        prior = -math.log((1 - 0.01) / 0.01)  # every class starts at probability 0.01
        for head in self.class_embed:
            nn.init.constant_(head.bias, prior)
        for head in self.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        if not self.two_stage:  # one-stage: the first layer starts from small boxes around its point
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight)
            nn.init.zeros_(proj[0].bias)

    def features(self, images, masks):
        """-> (srcs L x [B, D, H_l, W_l], masks L x bool [B, H_l, W_l], pos L x [B, D, H_l, W_l])."""
        feats = self.backbone(images, masks)
        srcs = [proj(x) for proj, (x, _) in zip(self.input_proj, feats)]
        lvl_masks = [m for _, m in feats]
        for proj in self.input_proj[len(feats):]:
            srcs.append(proj(feats[-1][0] if len(srcs) == len(feats) else srcs[-1]))
            lvl_masks.append(F.interpolate(masks[None].float(), size=srcs[-1].shape[-2:])[0].bool())
        return srcs, lvl_masks, [self.position_embedding(m) for m in lvl_masks]

    def forward(self, images, masks, targets=None, dn_rng=None):
        srcs, lvl_masks, pos = self.features(images, masks)
        dn = None
        dn_content = dn_boxes = attn_mask = None
        if self.training and self.dn is not None:
            if targets is None:
                raise ValueError("DACDETR: training with denoising needs the targets: model(images, masks, targets)")
            rng = dn_rng if dn_rng is not None else numpy_rng()
            dn = prepare_dn(targets_to_numpy(targets), self.num_classes, self.num_queries, rng=rng, **self.dn)
            if dn["pad_size"] > 0:
                dn_content, dn_boxes, attn_mask = dn_queries_to_tensors(dn, self.label_enc, images.device)
        c_stream = self.training and self.dac
        query_embed = self.query_embed.weight if hasattr(self, "query_embed") else None
        n_dec = len(self.transformer.decoder.layers)
        enc_heads = (self.class_embed[n_dec], self.bbox_embed[n_dec]) if self.two_stage else None
        tr = self.transformer(srcs, lvl_masks, pos, enc_heads, self.bbox_embed[:n_dec], query_embed, dn_content,
                              dn_boxes, attn_mask, c_stream)

        pad = 0 if dn is None else dn["pad_size"]
        logits = [self.class_embed[i](h) for i, h in enumerate(tr["hs"])]
        out = with_dn_outputs(logits, tr["boxes"], dn)
        if self.two_stage:
            out["enc_outputs"] = {"pred_logits": tr["enc_logits"], "pred_boxes": tr["enc_boxes"]}
        if dn is not None and not pad:  # keep label_enc in the graph so DDP sees every parameter used in every step
            out["pred_logits"] = out["pred_logits"] + 0.0 * self.label_enc.weight.sum()
        if c_stream:
            logits_c = [self.class_embed[i](h) for i, h in enumerate(tr["hs_c"])]
            out["c_outputs"] = stream(logits_c, tr["boxes_c"], start=pad)
            if pad:
                out["c_dn_outputs"] = stream(logits_c, tr["boxes_c"], end=pad)
        return out
