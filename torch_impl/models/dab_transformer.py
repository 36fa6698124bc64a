"""DAB-DETR's transformer (Liu et al., "DAB-DETR: Dynamic Anchor Boxes are Better Queries for DETR", ICLR 2022).

Conditional DETR's layers (conditional_transformer.py) driven by one anchor box per query instead of one fixed
reference point:

Encoder: Conditional DETR's encoder layers, except that each layer's pixel codes are scaled element-wise by
  query_scale(its input): pos_l = pos * query_scale(src_l) (the release's encoder `query_scale`).

Decoder, layer l, with the anchor a_l = (x, y, w, h) in [0, 1] of every query:
  anchor code      PE(a_l) = sine codes of (y, x, w, h) [B, Q, 2 D] (temperature 10000, as the release
                   hard-codes; the pixel codes use model.pe_temperature, 20 in the release);
  positional query query_pos = ref_point_head(PE(a_l)) (2 D -> D -> D), recomputed every layer;
  spatial query    the (y, x) half of PE(a_l), times query_scale(output of l - 1) (1 in layer 0), with the
                   y block times h_ref / h and the x block times w_ref / w, (w_ref, h_ref) =
                   sigmoid(ref_anchor_head(output of l - 1)): the positional attention of a query widens or
                   narrows with its box (the paper's width / height-modulated attention);
  layer            ConditionalDecoderLayer(tgt, memory, pos, query_pos, spatial query): self-attention, the
                   per-head [content ; spatial] cross-attention, FFN; only layer 0 adds ca_qpos_proj(query_pos)
                   to the content query (the release's keep_query_pos false);
  anchor update    a_{l+1} = sigmoid(bbox_embed(out_l) + logit(a_l)), from the layer's output before the shared
                   `norm`, as the release does; a_{l+1} is detached before it feeds layer l + 1.

The detector predicts layer l's boxes relative to layer l's anchor (reference_l): a_0 = sigmoid(refpoint_embed)
itself, and for l >= 1 the update above *before* its detach, as in the release, so layer l's box loss also
trains bbox_embed through layer l - 1's update. The decoder's input content is zero (the release's
num_patterns 0; pattern embeddings are not built).
"""
import torch
from torch import nn

from .conditional_transformer import ConditionalDecoderLayer, TransformerEncoderLayer
from .dac_detr import MLP
from .position_encoding import anchor_code
from .utils import inverse_sigmoid

class DABEncoder(nn.Module):
    """Encoder layers whose pixel codes are rescaled per layer by query_scale(input).

    forward(src [B, S, D], pos [B, S, D], padding_mask bool [B, S]) -> memory [B, S, D]
    """

    def __init__(self, layers, d_model):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.query_scale = MLP(d_model, d_model, d_model, 2)

    def forward(self, src, pos, padding_mask):
        for layer in self.layers:
            src = layer(src, pos * self.query_scale(src), padding_mask)
        return src


class DABDecoder(nn.Module):
    """Decoder layers with layer-wise updated anchor boxes (module docstring).

    forward(tgt [B, Q, D], memory [B, S, D], pos [B, S, D], anchor [B, Q, 4] (x, y, w, h) in [0, 1], memory_mask
    bool [B, S], box_head: the detector's bbox_embed, [..., D] -> [..., 4] logit offsets, attn_mask bool [Q, Q]
    True = blocked: the queries' self-attention mask (DN-DETR's denoising groups), or None)
    -> (hs: one [B, Q, D] per layer, normalized by `norm`; references: one [B, Q, 4] per layer, the anchor each
    layer's boxes are predicted from)
    """

    def __init__(self, layers, d_model):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)
        self.ref_anchor_head = MLP(d_model, d_model, 2, 2)
        self.d_model = d_model

    def spatial_query(self, lid, out, anchor, code):
        """Layer lid's spatial query: the (y, x) code scaled by query_scale and modulated by w_ref / w, h_ref / h.
        out [B, Q, D] previous layer's output (tgt for layer 0), anchor [B, Q, 4], code [B, Q, 2 D] -> [B, Q, D]."""
        half = self.d_model // 2
        sine = code[..., :self.d_model] if lid == 0 else code[..., :self.d_model] * self.query_scale(out)
        ref_wh = self.ref_anchor_head(out).sigmoid()  # (w_ref, h_ref)
        return torch.cat([sine[..., :half] * (ref_wh[..., 1:2] / anchor[..., 3:4]),
                          sine[..., half:] * (ref_wh[..., 0:1] / anchor[..., 2:3])], -1)

    def forward(self, tgt, memory, pos, anchor, memory_mask, box_head, attn_mask=None):
        hs, references, out = [], [], tgt
        for lid, layer in enumerate(self.layers):
            references.append(anchor)
            if lid > 0:
                anchor = anchor.detach()
            code = anchor_code(anchor, self.d_model)
            out = layer(out, memory, pos, self.ref_point_head(code), self.spatial_query(lid, out, anchor, code),
                        memory_mask, attn_mask)
            hs.append(self.norm(out))
            anchor = (box_head(out) + inverse_sigmoid(anchor)).sigmoid()
        return hs, references


class DABTransformer(nn.Module):
    """Encoder + anchor-box decoder over one feature map (module docstring).

    forward(src [B, D, H, W] projected features, mask bool [B, H, W] True = padding, refpoint_embed [Q, 4] anchor
    logits (or [B, Q, 4]: per image, e.g. with DN-DETR's denoising anchors first), pos [B, D, H, W] sine codes of
    the pixels, box_head: bbox_embed, tgt [B, Q, D] the decoder's input content or None (zero, as DAB-DETR),
    attn_mask bool [Q, Q] True = blocked (the decoder self-attention's) or None)
    -> (hs: dec_layers x [B, Q, D], references: dec_layers x [B, Q, 4] (x, y, w, h) in [0, 1])
    """

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.0, activation="prelu"):
        super().__init__()
        if d_model % 4:
            raise ValueError(f"model.hidden_dim must be a multiple of 4 (a sin/cos pair per frequency for each "
                             f"anchor coordinate), got {d_model}")
        self.d_model = d_model
        self.encoder = DABEncoder([TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation)
                                   for _ in range(num_encoder_layers)], d_model)
        self.decoder = DABDecoder([ConditionalDecoderLayer(d_model, nhead, dim_feedforward, dropout, first=(i == 0),
                                                          activation=activation)
                                   for i in range(num_decoder_layers)], d_model)
        for p in self.parameters():  # the release's init: Xavier for every matrix, biases as constructed
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, refpoint_embed, pos, box_head, tgt=None, attn_mask=None):
        memory = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2).to(memory.dtype)
        mask = mask.flatten(1)
        memory = self.encoder(memory, pos, mask)
        anchor = refpoint_embed.sigmoid().expand(memory.shape[0], -1, -1)
        if tgt is None:
            tgt = memory.new_zeros(anchor.shape[:2] + (self.d_model,))
        return self.decoder(tgt, memory, pos, anchor, mask, box_head, attn_mask)
