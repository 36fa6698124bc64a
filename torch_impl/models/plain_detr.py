"""Plain-DETR (Lin et al., ICCV 2023): one stride-16 feature map, no encoder, a global decoder with box relative
position bias (plain_transformer.py), two-stage proposals from a small pyramid, and hybrid matching.

Hybrid matching (H-DETR): in training, num_queries one-to-one queries and num_queries_one2many more are selected
together; the self-attention mask keeps the two groups apart, and the second group is trained one-to-many (Hungarian
against every GT repeated hybrid.k times, common/set_criterion.py). Inference runs the one-to-one queries only.

forward(images [B, 3, H, W], masks bool [B, H, W] True = padding, targets=None, dn_rng=None) -> dict:

    pred_logits  [B, Q, C], pred_boxes [B, Q, 4] (cxcywh in [0, 1] of the unpadded image): the one-to-one queries
    aux_outputs  their earlier decoder layers
    enc_outputs  {pred_logits [B, S, C], pred_boxes [B, S, 4]} of every pyramid cell's proposal (class 0 trained)
    image_size   [B, 2] (w, h) unpadded pixels
    one2many_outputs (training, num_queries_one2many > 0) the same for the one-to-many queries
  with reparam, every layer dict also has pred_deltas and ref_boxes (plain_transformer.PlainTransformer).

`targets` and `dn_rng` are accepted for the engine's common call and unused (no denoising).
Parameter names follow the release (class_embed.N, bbox_embed.N, query_embed, input_proj.0, transformer.*), with
the backbone as backbone.body.* as in the other archs.
"""
import torch
from torch import nn

from common.outputs import stream

from .dac_detr import DACDETR
from .position_encoding import PositionEmbeddingSine


def hybrid_attn_mask(num_one2one, num_one2many, device):
    """Self-attention mask keeping the one-to-one and one-to-many query groups apart. -> bool [N, N] True =
    blocked, N = num_one2one + num_one2many."""
    group = torch.arange(num_one2one + num_one2many, device=device) >= num_one2one
    return group[:, None] != group[None, :]


class PlainDETR(DACDETR):
    """See the module docstring. A DACDETR with one feature level, two-stage and no denoising or C-decoder: the
    input projection, heads and their init are the same; the transformer and the forward are Plain-DETR's."""

    def __init__(self, backbone, transformer, num_classes, num_queries=300, num_queries_one2many=1500,
                 mixed_selection=True, pe_temperature=10000.0, pe_normalize=False):
        super().__init__(backbone, transformer, num_classes, num_feature_levels=1, num_queries=num_queries,
                         two_stage=True, mixed_selection=False, dn=None, dac=False, pe_temperature=pe_temperature)
        # the release's reparam script codes the pixels by cell index ("sine_unnorm"), its others normalized
        self.position_embedding = PositionEmbeddingSine(transformer.d_model // 2, pe_temperature,
                                                        normalize=pe_normalize)
        self.num_queries_one2many = num_queries_one2many
        if mixed_selection:
            self.query_embed = nn.Embedding(num_queries + num_queries_one2many, transformer.d_model)

    def forward(self, images, masks, targets=None, dn_rng=None):
        srcs, lvl_masks, pos = self.features(images, masks)
        image_size = torch.stack([(~masks[:, 0, :]).sum(1), (~masks[:, :, 0]).sum(1)], -1).to(srcs[0].dtype)
        one2many = self.num_queries_one2many if self.training else 0
        n = self.num_queries + one2many
        query_embed = self.query_embed.weight[:n] if hasattr(self, "query_embed") else None
        attn_mask = hybrid_attn_mask(self.num_queries, one2many, images.device) if one2many else None
        n_dec = len(self.transformer.decoder.layers)
        tr = self.transformer(srcs[0], lvl_masks[0], pos[0], image_size, (self.class_embed[n_dec],
                              self.bbox_embed[n_dec]), self.bbox_embed[:n_dec], query_embed, n, attn_mask)

        logits = [self.class_embed[i](h) for i, h in enumerate(tr["hs"])]
        extras = {k: tr[k] for k in ("pred_deltas", "ref_boxes") if k in tr}
        out = stream(logits, tr["boxes"], end=self.num_queries, extras=extras)
        out["enc_outputs"] = tr["enc_outputs"]
        out["image_size"] = image_size
        if one2many:
            out["one2many_outputs"] = stream(logits, tr["boxes"], start=self.num_queries, extras=extras)
        return out
