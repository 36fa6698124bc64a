"""SAP-DETR's transformer (Liu et al., "SAP-DETR: Bridging the Gap Between Salient Points and Queries-Based
Transformer Detector for Fast Model Convergency", CVPR 2023; release github liuyang-ict/SAP-DETR).

Every query owns a salient point p (x, y) and the distances from it to the four sides of its box, ltrb =
(left, top, right, bottom), all in [0, 1] of the feature map. The points start on a grid (one per cell, at the
cell's top-left corner g) and stay in their cell: p = g + cell * sigmoid(.) (move_point).

Encoder: Conditional DETR's post-norm layers; layer i's pixel codes are scaled by query_scales[i](its input).

Decoder, layer l (post-norm; the shared LayerNorm `norm` gives each layer's output h_l to the heads):
  codes            point code PE(p) [B, Q, D] (x block, then y), box code PE(x1, y1, x2, y2) [B, Q, 2 D] of the
                   box's corners (p - (l, t), p + (r, b)); sine codes with temperature 20, D / 2 features per
                   coordinate;
  positional query query_pos = ref_point_head(PE(p)), bbox_query_pos = ref_bbox_head(PE(corners));
  self-attention   q = sa_qcontent(c) + sa_point_qpos(query_pos) + sa_bbox_qpos(bbox_query_pos), k likewise with
                   the k projections, v = sa_v(c);
  cross-attention  per head [content ; point ; box] (head dim triples): query [ca_qcontent(c) ;
                   ca_qpos_sine(lambda PE(p)) ; ca_bbox_qpos_sine(lambda PE(corners))], key [ca_kcontent(memory)
                   ; ca_kpos(PE(pixel)) ; ca_kpos(PE(pixel))], lambda = query_scale(h_{l-1}) (1 in layer 0);
                   layer 0 also adds ca_point_qpos(query_pos) + ca_bbox_qpos(bbox_query_pos) to the content query
                   and PE(pixel) codes to the content key. With `sdg`, the side-directed Gaussian of each head
                   (side_gaussian.py, from the content after self-attention) is added to the logits;
  update           ltrb' = sigmoid(bbox_embed_l(out) + logit(ltrb)), p' = move_point(point_embed_l(out), p, g),
                   from the output before `norm`; both detached before they feed layer l + 1.

As released, the points of the padded feature map and the image-normalized boxes share one [0, 1] frame (the
Gaussian and the conv init read the points on the padded map), and logit() clamps at 1e-3.
`conv_init` (the release's newconvinit): the first content of every query is sampled (bilinear) at its grid point
from point_transfer(memory), three 3x3 conv + GroupNorm(32) + ReLU blocks; otherwise it is zero.

Mirror of torch_impl/models/sap_transformer.py; Linear layers are layers.Linear (torch's default init), the conv
blocks layers.Conv2D / layers.GroupNorm. The pixel codes come in float32 and are cast to the features' dtype.
"""
import paddle
import paddle.nn.functional as F
from paddle import nn

from .conditional_transformer import ProjectedAttention, TransformerEncoderLayer, ffn_activation
from .dac_detr import MLP
from .layers import Conv2D, GroupNorm, Linear
from .position_encoding import sine_embedding
from .side_gaussian import SideDirectedGaussian
from .utils import inverse_sigmoid

SAP_PE_TEMPERATURE = 20.0  # the release's query codes (gen_sineembed_for_position), not configurable
LOGIT_EPS = 1e-3  # the release's inverse_sigmoid clamp


def move_point(delta, point, grid, cell):
    """The release's point update: grid + cell * sigmoid(delta + logit(point - grid)).

    delta [B, Q, 2], point [B, Q, 2], grid [B, Q, 2] (x, y) in [0, 1], cell [2] (w, h) of a grid cell -> [B, Q, 2].
    (point - grid is at most a cell, so its logit is not that of the point's position in the cell: the release's.)
    """
    return grid + cell * F.sigmoid(delta + inverse_sigmoid(point - grid, LOGIT_EPS))


def refine_sides(delta, ltrb):
    """ltrb' = sigmoid(delta + logit(ltrb)). delta, ltrb [B, Q, 4] -> [B, Q, 4]."""
    return F.sigmoid(delta + inverse_sigmoid(ltrb, LOGIT_EPS))


def _concat_heads(parts, n_heads):
    """Per-head concatenation of [B, N, D] tensors -> [B, N, len(parts) D], head h = [a_h ; b_h ; ...]."""
    bs, n, d = parts[0].shape
    return paddle.concat([p.reshape([bs, n, n_heads, d // n_heads]) for p in parts], -1).flatten(2)


class SAPEncoder(nn.Layer):
    """forward(src [B, S, D], pos [B, S, D], padding_mask bool [B, S]) -> memory [B, S, D]; layer i reads
    pos * query_scales[i](its input)."""

    def __init__(self, layers, d_model):
        super().__init__()
        self.layers = nn.LayerList(layers)
        self.query_scales = nn.LayerList([MLP(d_model, d_model, d_model, 2) for _ in layers])

    def forward(self, src, pos, padding_mask):
        for layer, scale in zip(self.layers, self.query_scales):
            src = layer(src, pos * scale(src), padding_mask)
        return src


class SAPDecoderLayer(nn.Layer):
    """Self-attention, point-enhanced cross-attention (+ SDG), FFN, each post-norm (module docstring). `first`:
    layer 0, which owns ca_point_qpos_proj and ca_bbox_qpos_proj.

    forward(tgt [B, Q, D], memory [B, S, D], pos [B, S, D] pixel codes, query_pos, bbox_query_pos [B, Q, D],
    point_sine [B, Q, D], box_sine [B, Q, 2 D] (scaled by lambda), point [B, Q, 2], ltrb [B, Q, 4],
    spatial_shape (H, W), memory_mask bool [B, S]) -> [B, Q, D]
    """

    def __init__(self, d_model, nhead, d_ffn, dropout, first=False, activation="relu", sdg=True):
        super().__init__()
        self.nhead = nhead
        self.sa_qcontent_proj = Linear(d_model, d_model)
        self.sa_point_qpos_proj = Linear(d_model, d_model)
        self.sa_bbox_qpos_proj = Linear(d_model, d_model)
        self.sa_kcontent_proj = Linear(d_model, d_model)
        self.sa_point_kpos_proj = Linear(d_model, d_model)
        self.sa_bbox_kpos_proj = Linear(d_model, d_model)
        self.sa_v_proj = Linear(d_model, d_model)
        self.self_attn = ProjectedAttention(d_model, nhead, dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.ca_qcontent_proj = Linear(d_model, d_model)
        self.ca_point_qpos_proj = Linear(d_model, d_model) if first else None
        self.ca_bbox_qpos_proj = Linear(d_model, d_model) if first else None
        self.ca_kcontent_proj = Linear(d_model, d_model)
        self.ca_kpos_proj = Linear(d_model, d_model)
        self.ca_v_proj = Linear(d_model, d_model)
        self.ca_bbox_qpos_sine_proj = Linear(2 * d_model, d_model)
        self.ca_qpos_sine_proj = Linear(d_model, d_model)
        self.cross_attn = ProjectedAttention(d_model, nhead, dropout)
        self.sdg = SideDirectedGaussian(d_model, nhead) if sdg else None
        self.linear1 = Linear(d_model, d_ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = Linear(d_ffn, d_model)
        self.activation = ffn_activation(activation)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos, bbox_query_pos, point_sine, box_sine, point, ltrb, spatial_shape,
                memory_mask):
        q = self.sa_qcontent_proj(tgt) + self.sa_point_qpos_proj(query_pos) + self.sa_bbox_qpos_proj(bbox_query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_point_kpos_proj(query_pos) + self.sa_bbox_kpos_proj(bbox_query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt))))

        bias = None
        if self.sdg is not None:
            h, w = spatial_shape  # points and sides in cells (scalar products: symbolic sizes export)
            point_cells = paddle.stack([point[..., 0] * w, point[..., 1] * h], -1)
            sides_cells = paddle.stack([ltrb[..., 0] * w, ltrb[..., 1] * h, ltrb[..., 2] * w, ltrb[..., 3] * h], -1)
            bias = self.sdg(tgt, point_cells, sides_cells, spatial_shape)
        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.ca_point_qpos_proj is not None:
            q = q + self.ca_point_qpos_proj(query_pos) + self.ca_bbox_qpos_proj(bbox_query_pos)
            k = k + k_pos
        q = _concat_heads([q, self.ca_qpos_sine_proj(point_sine), self.ca_bbox_qpos_sine_proj(box_sine)], self.nhead)
        k = _concat_heads([k, k_pos, k_pos], self.nhead)
        out = self.cross_attn(q, k, self.ca_v_proj(memory), memory_mask, bias=bias)
        tgt = self.norm2(tgt + self.dropout2(out))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class SAPDecoder(nn.Layer):
    """Decoder layers with per-query salient points and side distances (module docstring).

    forward(tgt [B, Q, D], memory [B, S, D], pos [B, S, D], spatial_shape (H, W), memory_mask bool [B, S],
    grid [B, Q, 2] the points' cells (top-left corners), ltrb [B, Q, 4] first side distances, cell [2],
    box_heads, point_heads: one MLP per layer ([..., D] -> [..., 4] / [..., 2]))
    -> (hs: one [B, Q, D] per layer, normalized by `norm`; points, sides: one [B, Q, 2] / [B, Q, 4] per layer,
    the references layer l's predictions are made from: the sides layer l attended with (undetached from layer
    l - 1's update, as released) and, as released, the point of layer l - 1 (layers 0 and 1: the grid point).
    """

    def __init__(self, layers, d_model):
        super().__init__()
        self.layers = nn.LayerList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, d_model, 2)
        self.ref_bbox_head = MLP(2 * d_model, d_model, d_model, 2)
        self.d_model = d_model

    def forward(self, tgt, memory, pos, spatial_shape, memory_mask, grid, ltrb, cell, box_heads, point_heads):
        hs, points, sides = [], [grid], [ltrb]
        out, point = tgt, grid
        for lid, layer in enumerate(self.layers):
            if lid > 0:  # layer 0's sides are refbbox_embed's, which learn through it
                ltrb = ltrb.detach()
            point_sine = sine_embedding(point, self.d_model // 2, SAP_PE_TEMPERATURE)
            corners = paddle.concat([point - ltrb[..., :2], point + ltrb[..., 2:]], -1)
            box_sine = sine_embedding(corners, self.d_model // 2, SAP_PE_TEMPERATURE)
            query_pos, bbox_query_pos = self.ref_point_head(point_sine), self.ref_bbox_head(box_sine)
            if lid > 0:
                scale = self.query_scale(out)
                point_sine, box_sine = point_sine * scale, box_sine * scale.tile([1, 1, 2])
            out = layer(out, memory, pos, query_pos, bbox_query_pos, point_sine, box_sine, point, ltrb,
                        spatial_shape, memory_mask)
            hs.append(self.norm(out))
            if lid < len(self.layers) - 1:
                points.append(point)
                ltrb = refine_sides(box_heads[lid](out), ltrb)
                sides.append(ltrb)
                point = move_point(point_heads[lid](out), point, grid, cell).detach()
        return hs, points, sides


class SAPTransformer(nn.Layer):
    """Encoder + salient-point decoder over one feature map (module docstring).

    forward(src [B, D, H, W] projected features, mask bool [B, H, W] True = padding, refpoint_embed [Q, 2] grid
    point logits, refbbox_embed [Q, 4] side logits, pos float32 [B, D, H, W] sine codes of the pixels, cell [2],
    box_heads, point_heads) -> SAPDecoder's (hs, points, sides)
    """

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.0, activation="relu", sdg=True, conv_init=True):
        super().__init__()
        if d_model % 4:
            raise ValueError(f"model.hidden_dim must be a multiple of 4 (a sin/cos pair per frequency for each "
                             f"point coordinate), got {d_model}")
        if conv_init and d_model % 32:
            raise ValueError(f"model.sap.conv_init uses GroupNorm(32): model.hidden_dim must be a multiple of 32, "
                             f"got {d_model}")
        self.d_model = d_model
        self.encoder = SAPEncoder([TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation)
                                   for _ in range(num_encoder_layers)], d_model)
        self.decoder = SAPDecoder([SAPDecoderLayer(d_model, nhead, dim_feedforward, dropout, first=(i == 0),
                                                   activation=activation, sdg=sdg)
                                   for i in range(num_decoder_layers)], d_model)
        # the release's init: Xavier for every matrix of its transformer, which does not own the ref heads
        xavier = nn.initializer.XavierUniform()
        for part in (self.encoder, self.decoder.layers, self.decoder.query_scale):
            for p in part.parameters():
                if p.ndim > 1:
                    xavier(p)
        self.point_transfer = None
        if conv_init:
            blocks = []
            for _ in range(3):
                conv = Conv2D(d_model, d_model, 3, padding=1)
                nn.initializer.Normal(0.0, 0.01)(conv.weight)
                nn.initializer.Constant(0.0)(conv.bias)
                blocks += [conv, GroupNorm(32, d_model), nn.ReLU()]
            self.point_transfer = nn.Sequential(*blocks)

    def initial_content(self, memory_2d, grid):
        """The queries' first content: zero, or point_transfer(memory) sampled at the grid points (conv_init).
        memory_2d [B, D, H, W], grid [B, Q, 2] in [0, 1] of the map -> [B, Q, D]."""
        b, q = grid.shape[:2]
        if self.point_transfer is None:
            return paddle.zeros([b, q, self.d_model], memory_2d.dtype)
        sampled = F.grid_sample(self.point_transfer(memory_2d), grid[:, None] * 2 - 1, mode="bilinear",
                                padding_mode="zeros", align_corners=False)  # [B, D, 1, Q]
        return sampled[:, :, 0].transpose([0, 2, 1])

    def forward(self, src, mask, refpoint_embed, refbbox_embed, pos, cell, box_heads, point_heads):
        b, d, h, w = src.shape
        memory = src.flatten(2).transpose([0, 2, 1])
        pos = pos.flatten(2).transpose([0, 2, 1]).astype(memory.dtype)
        mask = mask.flatten(1)
        memory = self.encoder(memory, pos, mask)
        grid = F.sigmoid(refpoint_embed).expand([b] + refpoint_embed.shape)
        ltrb = F.sigmoid(refbbox_embed).expand([b] + refbbox_embed.shape)
        tgt = self.initial_content(memory.transpose([0, 2, 1]).reshape([b, d, h, w]), grid)
        return self.decoder(tgt, memory, pos, (h, w), mask, grid, ltrb, cell, box_heads, point_heads)
