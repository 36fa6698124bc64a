"""DAB-Deformable-DETR (Liu et al., ICLR 2022, the deformable variant of DAB-DETR) and DN-Deformable-DETR (Li et al.,
CVPR 2022, its DN-DETR form): DACDETR's multi-scale layout (input projections, deformable encoder, one class and
box head per decoder layer, iterative box refinement) with learned anchor boxes as the queries, one-stage.

Queries: refpoint_embed [Q, 4] holds the anchors' logits (x, y, w, h) and tgt_embed their content; the decoder
makes each layer's positional query from that layer's reference box (deformable_transformer.py, `dab`). Boxes
are refined layer by layer without look-forward-twice: layer l's box is sigmoid(bbox_embed_l(h_l) +
logit(r_l)), r_l the detached box of layer l - 1 (r_0 the anchor).

With `dn` (model.dn.enabled) it is DN-Deformable-DETR: label_enc [C + 1, D - 1] embeds the denoising labels with
DN-DETR's indicator feature (1), tgt_embed has D - 1 features and indicator 0 (the release's form), and in training
P plain denoising queries (common/denoising.prepare_dn) go before the Q matching queries, hidden from them by the
self-attention mask.

forward(images [B, 3, H, W], masks bool [B, H, W] True = padding, targets=None, dn_rng=None) -> dict:

    pred_logits  [B, Q, C]   last decoder layer, matching queries only (sigmoid class scores)
    pred_boxes   [B, Q, 4]   cxcywh in [0, 1] of the unpadded image
    aux_outputs  list of dec_layers - 1 dicts {pred_logits, pred_boxes}, earlier layers
  training with dn only:
    dn_meta      {pad_size P, num_groups, group_size, positive_idx: B (query_idx, gt_idx) numpy pairs}
    dn_outputs   {pred_logits [B, P, C], pred_boxes [B, P, 4], aux_outputs}, when P > 0

Parameter names follow the releases (tgt_embed, refpoint_embed, label_enc, class_embed.N, bbox_embed.N,
input_proj.N, transformer.decoder.{query_scale, ref_point_head}), with DACDETR's exceptions (backbone.body.*; the
heads are not registered a second time under transformer.decoder).
"""
import torch
from torch import nn

from common.outputs import with_dn_outputs

from .dac_detr import DACDETR
from .dn_components import with_dn_queries


class DABDeformableDETR(DACDETR):
    """See the module docstring. `dn`: None (no denoising) or prepare_dn's options (common.model_args.dn_args),
    plain DN (contrastive false)."""

    def __init__(self, backbone, transformer, num_classes, num_feature_levels=4, num_queries=300, dn=None,
                 pe_temperature=10000.0):
        if dn is not None and dn["contrastive"]:
            raise ValueError("model.arch dab_deformable_detr (DN-Deformable-DETR) has plain denoising only: set "
                             "model.dn.contrastive false")
        if not transformer.dab:
            raise ValueError("DABDeformableDETR needs DeformableTransformer(dab=True)")
        super().__init__(backbone, transformer, num_classes, num_feature_levels, num_queries, two_stage=False,
                         mixed_selection=False, dn=dn, dac=False, pe_temperature=pe_temperature)

    def init_queries(self, mixed_selection):
        """The anchor queries: tgt_embed (content) and refpoint_embed (anchor logits); with dn, label_enc, and
        tgt_embed has D - 1 features (DN-DETR's indicator is the last)."""
        d = self.transformer.d_model
        if self.dn is not None:
            self.label_enc = nn.Embedding(self.num_classes + 1, d - 1)  # + the indicator feature
        self.tgt_embed = nn.Embedding(self.num_queries, d if self.dn is None else d - 1)
        self.refpoint_embed = nn.Embedding(self.num_queries, 4)

    def queries(self, batch_size, targets, dn_rng, device):
        """The decoder's queries -> (anchor logits [B, N, 4], content [B, N, D], self-attention mask bool [N, N] or
        None, prepare_dn's dict or None); N = P + Q, P = 0 unless training with dn."""
        content = self.tgt_embed.weight
        if self.dn is not None:  # indicator 0
            content = torch.cat([content, content.new_zeros(self.num_queries, 1)], -1)
        content = content.expand(batch_size, -1, -1)
        anchors = self.refpoint_embed.weight
        if self.dn is None or not self.training:
            return anchors.expand(batch_size, -1, -1), content, None, None
        return with_dn_queries(self.dn, self.num_classes, self.label_enc, anchors, content, targets, dn_rng, device)

    def forward(self, images, masks, targets=None, dn_rng=None):
        srcs, lvl_masks, pos = self.features(images, masks)
        anchors, content, attn_mask, dn = self.queries(images.shape[0], targets, dn_rng, images.device)
        tr = self.transformer(srcs, lvl_masks, pos, None, self.bbox_embed, content, attn_mask=attn_mask,
                              anchors=anchors)
        logits = [head(h) for head, h in zip(self.class_embed, tr["hs"])]
        out = with_dn_outputs(logits, tr["boxes"], dn)
        if dn is not None and not dn["pad_size"]:  # keep label_enc in the graph: every parameter used
            out["pred_logits"] = out["pred_logits"] + 0.0 * self.label_enc.weight.sum()
        return out
