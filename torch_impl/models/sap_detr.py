"""SAP-DETR (Liu et al., CVPR 2023; release github liuyang-ict/SAP-DETR): the detector.

Conditional DETR's single-scale layout (one feature map projected to the transformer width and its sine codes)
with query-specific salient points (sap_transformer.py). The Q = cols x rows queries own one grid cell each:
refpoint_embed [Q, 2] holds the logits of the cells' top-left corners (fixed, not trained, as released) and
refbbox_embed [Q, 4] the learned logits of the first side distances. Layer l predicts

    point_l = move_point(point_embed_l(h_l), points_l, grid, cell)   (stays in its cell)
    sides_l = sigmoid(bbox_embed_l(h_l) + logit(sides_l))          (left, top, right, bottom from point_l)
    box_l   = the box (point_l - (l, t), point_l + (r, b)) as cxcywh
    class_l = class_embed_0(h_0) in layer 0, class_embed_1(h_l) after (an MLP each, as released)
    obj_l   = obj_embed(h_l), an objectness logit trained towards the IoU with the matched GT

with (points_l, sides_l) the decoder's references (SAPDecoder). Box and point heads are one per layer (the
release's scripts: bbox_embed_diff_each_layer), all starting as copies of one.

forward(images [B, 3, H, W], masks bool [B, H, W] True = padding, targets=None, dn_rng=None) -> dict:

    pred_logits  [B, Q, C]   last decoder layer (sigmoid class scores; inference ranks by these alone, as released)
    pred_boxes   [B, Q, 4]   cxcywh in [0, 1] of the unpadded image
    pred_objs    [B, Q, 1]   objectness logits (matching cost and loss_obj)
    pred_points  [B, Q, 2]   salient points (matching constraint and loss_inner)
    aux_outputs  list of dec_layers - 1 dicts with the same keys, earlier layers

`targets` and `dn_rng` are accepted for the engines' call signature and unused. Losses: the shared SetCriterion
with the SAP terms (common/set_criterion.py). Parameter names follow the release (refpoint_embed, refbbox_embed,
obj_embed, class_embed.{0,1}, bbox_embed.N, point_embed.N, input_proj, transformer.encoder.{layers.N,
query_scales.N}, transformer.decoder.{layers.N.{sa,ca}_*_proj, norm, query_scale, ref_point_head, ref_bbox_head},
transformer.point_transfer), except: backbone.body.* (release: backbone.0.body.*), the encoder attention's
torch.nn.MultiheadAttention names, a layer's SDG MLP as layers.N.sdg.gaussian_proj (release: layers.N.gaussian_proj),
and the heads registered once (the release's checkpoints also hold them under transformer.decoder and the shared
class head under class_embed.2..N). Differences from the release: the grid is model.sap.grid for any query count
(the release special-cases 306 = 18 x 17 and otherwise moves points by 1 / sqrt(Q) of the map in the decoder but
1 / 20 in the detector); the code width follows model.hidden_dim (the release hard-codes 128 features per
coordinate); loss_obj's IoU target is detached (common/set_criterion.py).
"""
import torch
from torch import nn

from common.outputs import stream

from .conditional_detr import PRIOR_LOGIT, SingleScaleDETR
from .dac_detr import MLP
from .sap_transformer import LOGIT_EPS, move_point, refine_sides
from .utils import inverse_sigmoid


def grid_corners(cols, rows):
    """Top-left corners of a cols x rows grid over [0, 1]^2, row by row. -> [rows * cols, 2] (x, y)."""
    y, x = torch.meshgrid(torch.arange(rows) / rows, torch.arange(cols) / cols, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], -1)


def point_sides_to_cxcywh(point, ltrb):
    """point [..., 2] (x, y), ltrb [..., 4] distances to its box's sides -> the box [..., 4] cxcywh."""
    x1y1, x2y2 = point - ltrb[..., :2], point + ltrb[..., 2:]
    return torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], -1)


class SAPDETR(SingleScaleDETR):
    """See the module docstring. grid (cols, rows): the query grid, cols * rows = num_queries."""

    def __init__(self, backbone, transformer, num_classes, num_queries=306, grid=(18, 17), pe_temperature=20.0):
        cols, rows = grid
        if cols * rows != num_queries:
            raise ValueError(f"model.sap.grid {list(grid)} gives {cols * rows} queries, model.num_queries is "
                             f"{num_queries}: set num_queries to cols * rows")
        super().__init__(backbone, transformer, num_classes, num_queries, pe_temperature, shared_heads=False)
        d, n_layers = transformer.d_model, len(transformer.decoder.layers)
        self.obj_embed = nn.Linear(d, 1)
        self.bbox_embed = nn.ModuleList(MLP(d, d, 4, 3) for _ in range(n_layers))
        self.point_embed = nn.ModuleList(MLP(d, d, 2, 3) for _ in range(n_layers))
        self.class_embed = nn.ModuleList(MLP(d, d, num_classes, 3) for _ in range(2))
        nn.init.constant_(self.obj_embed.bias, PRIOR_LOGIT)  # every class and the objectness start at p = 0.01
        nn.init.constant_(self.class_embed[0].layers[-1].bias, PRIOR_LOGIT)
        for head in (self.bbox_embed[0], self.point_embed[0]):  # first predictions: the references themselves
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)
        for heads in (self.bbox_embed, self.point_embed, self.class_embed):  # copies of one, as released
            for head in heads[1:]:
                head.load_state_dict(heads[0].state_dict())
        self.refpoint_embed = nn.Embedding(num_queries, 2)
        with torch.no_grad():
            self.refpoint_embed.weight.copy_(inverse_sigmoid(grid_corners(cols, rows), LOGIT_EPS))
        self.refpoint_embed.weight.requires_grad_(False)
        self.refbbox_embed = nn.Embedding(num_queries, 4)
        self.grid = (cols, rows)
        self.init_heads()

    def forward(self, images, masks, targets=None, dn_rng=None):
        x, mask = self.backbone(images, masks)[-1]
        cols, rows = self.grid
        cell = torch.tensor([1.0 / cols, 1.0 / rows], dtype=x.dtype, device=x.device)
        hs, ref_points, ref_sides = self.transformer(
            self.input_proj(x), mask, self.refpoint_embed.weight, self.refbbox_embed.weight,
            self.position_embedding(mask), cell, self.bbox_embed, self.point_embed)
        grid = ref_points[0]
        logits, boxes, objs, points = [], [], [], []
        for lid, (h, ref_point, ref_ltrb) in enumerate(zip(hs, ref_points, ref_sides)):
            point = move_point(self.point_embed[lid](h), ref_point, grid, cell)
            boxes.append(point_sides_to_cxcywh(point, refine_sides(self.bbox_embed[lid](h), ref_ltrb)))
            logits.append(self.class_embed[min(lid, 1)](h))
            objs.append(self.obj_embed(h))
            points.append(point)
        return stream(logits, boxes, extras={"pred_objs": objs, "pred_points": points})
