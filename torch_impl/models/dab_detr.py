"""DAB-DETR (Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries for DETR", ICLR 2022): the detector.

Conditional DETR's single-scale layout (one feature map projected to the transformer width, its sine position
codes, one class head and one box head shared by every decoder layer) with learned anchor boxes as the queries:
refpoint_embed [Q, 4] holds their logits, sigmoid(refpoint_embed) = (x, y, w, h) in [0, 1].
dab_transformer.DABTransformer refines the anchors layer by layer with bbox_embed; layer l's boxes are
sigmoid(bbox_embed(h_l) + logit(reference_l)), reference_l the anchor layer l attended with.

With `dn` (model.dn.enabled) it is DN-DETR (Li et al., "DN-DETR: Accelerate DETR Training by Introducing Query
DeNoising", CVPR 2022; the release's DN-DAB-DETR): label_enc [C + 1, D - 1] embeds classes, every matching query's
content is the "unknown" class C's embedding with an indicator feature 0 (dn_components.matching_content; zero
content without dn), in training and inference. In training, P denoising queries (common/denoising.prepare_dn:
groups of noised GT copies, plain DN) go before the Q matching queries: content = label_enc(noised label) with
indicator 1, anchor = the noised box (its logit prepended to refpoint_embed); the self-attention mask hides the
groups from each other and every denoising query from the matching queries, so the matching queries' outputs are
those without denoising queries. The denoising queries are not built at inference.

forward(images [B, 3, H, W], masks bool [B, H, W] True = padding, targets=None, dn_rng=None) -> dict:

    pred_logits  [B, Q, C]   last decoder layer, matching queries only (sigmoid class scores)
    pred_boxes   [B, Q, 4]   cxcywh in [0, 1] of the unpadded image
    aux_outputs  list of dec_layers - 1 dicts {pred_logits, pred_boxes}, earlier layers
  training with dn only:
    dn_meta      {pad_size P, num_groups, group_size, positive_idx: B (query_idx, gt_idx) numpy pairs} (P = 0 when
                 no image of the batch has a GT)
    dn_outputs   {pred_logits [B, P, C], pred_boxes [B, P, 4], aux_outputs}, when P > 0

`targets` (training with dn): B dicts "labels" [n], "boxes" [n, 4] cxcywh, numpy arrays or tensors; `dn_rng`:
numpy Generator of the noise (default: seeded from torch's global RNG); both unused without dn. Losses: the shared
SetCriterion (focal loss, Hungarian matching, every layer; with dn the reconstruction terms *_dn of every layer,
normalized by GT count x groups as the release's). One difference from the release: its denoising class loss
covers only the slots holding a GT copy, the shared criterion's also the empty padding slots (as background).

Parameter names follow the official release (refpoint_embed, class_embed, bbox_embed.layers.M, input_proj, label_enc,
transformer.encoder.{layers.N.*, query_scale}, transformer.decoder.{layers.N.{sa,ca}_*_proj, norm, query_scale,
ref_point_head, ref_anchor_head}), except the backbone: `backbone.body.*` (official: backbone.0.body.*); the
encoder's attention keeps torch.nn.MultiheadAttention's names; bbox_embed is not registered a second time under
transformer.decoder (the release's checkpoints hold it twice). With model.activation prelu (the release's default
and this project's DAB configs) every layer has a learned slope `activation.weight`, as in the release.
"""
from torch import nn

from common.outputs import with_dn_outputs

from .conditional_detr import SingleScaleDETR
from .dn_components import matching_content, with_dn_queries
from .utils import inverse_sigmoid


class DABDETR(SingleScaleDETR):
    """See the module docstring. `dn`: None (no denoising) or prepare_dn's options (common.model_args.dn_args),
    plain DN (contrastive false)."""

    def __init__(self, backbone, transformer, num_classes, num_queries=300, pe_temperature=20.0, dn=None):
        if dn is not None and dn["contrastive"]:
            raise ValueError("model.arch dab_detr (DN-DETR) has plain denoising only: set model.dn.contrastive false")
        super().__init__(backbone, transformer, num_classes, num_queries, pe_temperature)
        self.dn = dn
        self.refpoint_embed = nn.Embedding(num_queries, 4)
        if dn is not None:
            self.label_enc = nn.Embedding(num_classes + 1, transformer.d_model - 1)  # + the indicator feature
        self.init_heads()

    def queries(self, batch_size, targets, dn_rng, device):
        """The decoder's queries -> (anchor logits [Q, 4] or [B, P + Q, 4], content None (zero) or [B, P + Q, D],
        self-attention mask bool [P + Q, P + Q] or None, prepare_dn's dict or None); P = 0 unless training with dn."""
        anchors = self.refpoint_embed.weight
        if self.dn is None:
            return anchors, None, None, None
        content = matching_content(self.label_enc).expand(batch_size, self.num_queries, -1)
        if not self.training:
            return anchors, content, None, None
        return with_dn_queries(self.dn, self.num_classes, self.label_enc, anchors, content, targets, dn_rng, device)

    def forward(self, images, masks, targets=None, dn_rng=None):
        x, mask = self.backbone(images, masks)[-1]
        anchors, content, attn_mask, dn = self.queries(images.shape[0], targets, dn_rng, images.device)
        hs, references = self.transformer(self.input_proj(x), mask, anchors, self.position_embedding(mask),
                                          self.bbox_embed, content, attn_mask)
        logits = [self.class_embed(h) for h in hs]
        boxes = [(self.bbox_embed(h) + inverse_sigmoid(ref)).sigmoid() for h, ref in zip(hs, references)]
        return with_dn_outputs(logits, boxes, dn)
