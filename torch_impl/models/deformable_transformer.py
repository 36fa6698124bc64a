"""Deformable transformer with two-stage query selection and DAC-DETR's parallel C-decoder stream.

Encoder: deformable self-attention over all feature levels. Two-stage: every encoder token proposes a box
(grid anchor of side 0.05 * 2^level refined by the proposal head); the top `num_queries` by their class-0
logit become the decoder's reference boxes (detached), and their sine embedding through pos_trans gives the
queries' positional part (mixed selection: the content part is the learned `query_embed`).

Decoder (iterative box refinement): layer l's head gives delta_l, its reference is r_l = sigmoid(delta_l +
logit(r_{l-1}.detach())) and its output box is sigmoid(delta_l + logit(r_{l-1})) with look-forward-twice (same
value, but layer l's box loss also updates layer l-1's head, and no further) or sigmoid(delta_l +
logit(r_{l-1}.detach())) without; layer l+1 attends around r_l.detach().

C-decoder (DAC-DETR, training only): a second query stream that goes through each layer's cross-attention
and FFN but not its self-attention, with its own reference boxes and every parameter shared. As in the
release, it starts from the O-decoder's query after the first layer's self-attention; with the same weights,
input and references, its first-layer output equals the O-decoder's, so that output is reused rather than
computed twice (identical values and gradients; only with dropout > 0 would the release draw a second
mask). From layer 2 on, both streams go through cross-attention + FFN in one call (per-query operations, so
concatenating along the query axis changes nothing).

DAB-Deformable-DETR (`dab`, one-stage): the queries are learned anchor boxes (x, y, w, h) and content vectors
given by the detector; each layer makes its positional query from its own reference box, query_pos_l =
ref_point_head(PE(r_l)) (PE: the anchor code of DAB-DETR, position_encoding.anchor_code, of the box scaled by
the first level's valid ratios), times query_scale(output of layer l - 1) from layer 1 on, instead of one fixed
query_pos for every layer.

The prediction heads are owned by the detector (top-level `class_embed` / `bbox_embed`) and passed in at call
time, so every tensor has a single name.
"""
import torch
import torch.nn.functional as F
from torch import nn

from .attention import MSDeformAttn, MultiheadAttention
from .dac_detr import MLP
from .position_encoding import anchor_code, box_sine_embedding
from .utils import inverse_sigmoid


class DeformableTransformerEncoderLayer(nn.Module):
    """Deformable self-attention + FFN, post-norm.

    forward(src [B, S, D], pos [B, S, D], reference_points [B, S, L, 2], spatial_shapes int64 [L, 2],
    level_start_index int64 [L], padding_mask bool [B, S]) -> [B, S, D]
    """

    def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points, backend):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        src = self.norm1(src + self.dropout1(attn))
        ffn = self.linear2(self.dropout2(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeformableTransformerEncoder(nn.Module):
    """Stack of encoder layers whose reference points are the pixel centres of every level.

    forward(src, pos [B, S, D], spatial_shapes int64 [L, 2], level_start_index int64 [L], valid_ratios [B, L, 2],
    padding_mask bool [B, S], shapes: L (H, W)) -> memory [B, S, D]
    """

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(shapes, valid_ratios):
        """Pixel centres in units of the valid image, per level. -> [B, S, L, 2] (x, y)."""
        refs = []
        for lvl, (h, w) in enumerate(shapes):
            # arange + 0.5 (= linspace(0.5, h - 0.5, h), exactly): linspace would freeze symbolic export sizes
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                                    torch.arange(w, dtype=torch.float32, device=valid_ratios.device) + 0.5,
                                    indexing="ij")
            refs.append(torch.stack([xs.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w),
                                     ys.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)], -1))
        return torch.cat(refs, 1)[:, :, None] * valid_ratios[:, None]

    def forward(self, src, pos, spatial_shapes, level_start_index, valid_ratios, padding_mask, shapes):
        reference_points = self.reference_points(shapes, valid_ratios)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class DeformableTransformerDecoderLayer(nn.Module):
    """Self-attention, then deformable cross-attention + FFN (each post-norm); the two halves are separate
    methods because the C-decoder stream only uses the second one."""

    def __init__(self, d_model, d_ffn, dropout, n_levels, n_heads, n_points, backend):
        super().__init__()
        self.cross_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, backend)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward_self_attn(self, tgt, query_pos, attn_mask=None):
        """tgt, query_pos [B, N, D], attn_mask bool [N, N] True = blocked -> [B, N, D]."""
        q = tgt + query_pos
        return self.norm2(tgt + self.dropout2(self.self_attn(q, q, tgt, attn_mask)))

    def forward_cross_ffn(self, tgt, query_pos, reference_points, memory, spatial_shapes, level_start_index,
                          memory_mask):
        """tgt, query_pos [B, N, D], reference_points [B, N, L, 2 or 4] (scaled by the valid ratios),
        memory [B, S, D], memory_mask bool [B, S] -> [B, N, D]."""
        attn = self.cross_attn(tgt + query_pos, reference_points, memory, spatial_shapes, level_start_index,
                               memory_mask)
        tgt = self.norm1(tgt + self.dropout1(attn))
        ffn = self.linear2(self.dropout3(F.relu(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout4(ffn))


def top_proposals(scores, k):
    """Indices of the k best proposals per image. scores [B, S] -> int64 [B, k]. (convert.check records and
    replays these to compare two-stage models across frameworks; every two-stage arch selects through here.)"""
    return torch.topk(scores, k, dim=1)[1]


def _apply_delta(delta, reference):
    """Box from a head's output and a reference. delta [B, N, 4] logits, reference [B, N, 4] boxes or [B, N, 2]
    points in [0, 1] -> [B, N, 4] cxcywh in [0, 1] (a 2-d point only refines the centre)."""
    if reference.shape[-1] == 2:
        return torch.cat([delta[..., :2] + inverse_sigmoid(reference), delta[..., 2:]], -1).sigmoid()
    return (delta + inverse_sigmoid(reference)).sigmoid()


def _refine_step(box_head, hidden, ref, prev):
    """One refinement step -> (the layer's box [B, N, 4], the next layer's undetached reference [B, N, 4]).

    The box is delta + logit(prev), prev = the previous layer's undetached reference (look-forward-twice) or
    `ref`, its detached copy; the next reference is delta + logit(ref), so gradients go back one layer at most.
    """
    delta = box_head(hidden)
    box = _apply_delta(delta, prev)
    return box, (box if prev is ref else _apply_delta(delta, ref))


def _scale_to_levels(reference, valid_ratios):
    """reference [B, N, 2 or 4] in the valid image, valid_ratios [B, L, 2] -> [B, N, L, 2 or 4] per level."""
    ratios = valid_ratios if reference.shape[-1] == 2 else torch.cat([valid_ratios, valid_ratios], -1)
    return reference[:, :, None] * ratios[:, None]


class DeformableTransformerDecoder(nn.Module):
    """Decoder layers with iterative box refinement and the optional C-decoder stream (module docstring); `dab`:
    positional queries made per layer from the reference boxes (query_scale, ref_point_head)."""

    def __init__(self, layers, look_forward_twice=True, dab=False, d_model=256):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.look_forward_twice = look_forward_twice
        self.dab = dab
        if dab:
            self.query_scale = MLP(d_model, d_model, d_model, 2)
            self.ref_point_head = MLP(2 * d_model, d_model, d_model, 2)

    def anchor_query_pos(self, lid, hidden, ref_levels):
        """DAB: layer lid's positional query. hidden [B, N, D] (output of layer lid - 1), ref_levels [B, N, L, 4]
        -> [B, N, D]."""
        query_pos = self.ref_point_head(anchor_code(ref_levels[:, :, 0], hidden.shape[-1]))
        return query_pos if lid == 0 else query_pos * self.query_scale(hidden)

    def forward(self, tgt, reference, memory, spatial_shapes, level_start_index, valid_ratios, query_pos,
                memory_mask, attn_mask, box_heads, c_stream=False):
        """tgt, query_pos [B, N, D] (None with dab), reference [B, N, 4] (or [B, N, 2]) in [0, 1], no gradient,
        memory [B, S, D], valid_ratios [B, L, 2], memory_mask bool [B, S], attn_mask bool [N, N] or None, box_heads:
        one per layer.

        -> dict hs, boxes (O-decoder, one [B, N, D] / [B, N, 4] per layer) and, with c_stream, hs_c, boxes_c.
        """
        out = dict(hs=[], boxes=[], hs_c=[], boxes_c=[])
        n = tgt.shape[1]
        hidden, ref, prev = tgt, reference, reference
        hidden_c = ref_c = prev_c = None
        if self.dab and c_stream:
            raise ValueError("the C-decoder stream shares one positional query per query; dab makes one per layer")
        for lid, layer in enumerate(self.layers):
            ref_levels = _scale_to_levels(ref, valid_ratios)
            if self.dab:
                query_pos = self.anchor_query_pos(lid, hidden, ref_levels)
            query = layer.forward_self_attn(hidden, query_pos, attn_mask)
            if c_stream and lid > 0:
                both = layer.forward_cross_ffn(
                    torch.cat([query, hidden_c], 1), torch.cat([query_pos, query_pos], 1),
                    _scale_to_levels(torch.cat([ref, ref_c], 1), valid_ratios),
                    memory, spatial_shapes, level_start_index, memory_mask)
                hidden, hidden_c = both[:, :n], both[:, n:]
            else:
                hidden = layer.forward_cross_ffn(query, query_pos, ref_levels, memory, spatial_shapes,
                                                 level_start_index, memory_mask)
            box, new_ref = _refine_step(box_heads[lid], hidden, ref, prev)
            out["hs"].append(hidden)
            out["boxes"].append(box)
            if c_stream:
                if lid == 0:  # same input, references and weights as the O-decoder: same output
                    hidden_c, box_c, new_ref_c = hidden, box, new_ref
                else:
                    box_c, new_ref_c = _refine_step(box_heads[lid], hidden_c, ref_c, prev_c)
                out["hs_c"].append(hidden_c)
                out["boxes_c"].append(box_c)
                ref_c = new_ref_c.detach()
                prev_c = new_ref_c if self.look_forward_twice else ref_c
            ref = new_ref.detach()
            prev = new_ref if self.look_forward_twice else ref
        return out


class DeformableTransformer(nn.Module):
    """Encoder, two-stage query selection (or learned queries) and decoder; see the module docstring.

    forward(srcs: L x [B, D, H_l, W_l], masks: L x bool [B, H_l, W_l], pos_embeds: L x [B, D, H_l, W_l],
    enc_heads: (class head, box head) for the proposals, box_heads: dec_layers box heads,
    query_embed: [Q, D] learned content (mixed selection), [Q, 2 D] learned (pos, content) (one-stage), [B, N, D]
    the content of the anchors (dab) or None, dn_content [B, P, D] / dn_boxes [B, P, 4] (logits) denoising
    queries placed first (two-stage), attn_mask bool [N, N] (N = P + Q), c_stream bool, anchors [B, N, 4] logits
    (dab: the learned anchors, denoising ones first))
    -> the decoder's dict plus, two-stage, enc_logits [B, S, C] and enc_boxes [B, S, 4] for every token.
    """

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.0, num_feature_levels=4, enc_n_points=4, dec_n_points=4, two_stage=True,
                 num_queries=900, mixed_selection=True, look_forward_twice=True, backend="auto", dab=False):
        super().__init__()
        if dab and two_stage:
            raise ValueError("dab (learned anchor boxes) is one-stage: two_stage must be false")
        self.d_model = d_model
        self.two_stage = two_stage
        self.dab = dab
        self.num_queries = num_queries
        self.mixed_selection = mixed_selection
        self.encoder = DeformableTransformerEncoder([
            DeformableTransformerEncoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                              enc_n_points, backend) for _ in range(num_encoder_layers)])
        self.decoder = DeformableTransformerDecoder([
            DeformableTransformerDecoderLayer(d_model, dim_feedforward, dropout, num_feature_levels, nhead,
                                              dec_n_points, backend) for _ in range(num_decoder_layers)],
            look_forward_twice, dab, d_model)
        self.level_embed = nn.Parameter(torch.empty(num_feature_levels, d_model))
        if two_stage:
            self.enc_output = nn.Linear(d_model, d_model)
            self.enc_output_norm = nn.LayerNorm(d_model)
            self.pos_trans = nn.Linear(d_model * 2, d_model * 2)
            self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        elif not dab:
            self.reference_points = nn.Linear(d_model, 2)
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        if not self.two_stage and not self.dab:
            nn.init.zeros_(self.reference_points.bias)
        nn.init.normal_(self.level_embed)

    def gen_encoder_output_proposals(self, memory, padding_mask, shapes):
        """One anchor per encoder token: its pixel centre (in the valid image) and side 0.05 * 2^level.

        memory [B, S, D], padding_mask bool [B, S], shapes: L (H, W) -> (output_memory [B, S, D],
        proposals [B, S, 4] as logits, +inf where padded or too close to the border (valid range 0.01-0.99)).
        """
        b = memory.shape[0]
        proposals, start = [], 0
        for lvl, (h, w) in enumerate(shapes):
            mask = padding_mask[:, start:start + h * w].view(b, h, w)
            valid_h = (~mask[:, :, 0]).sum(1).float()
            valid_w = (~mask[:, 0, :]).sum(1).float()
            ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=memory.device),
                                    torch.arange(w, dtype=torch.float32, device=memory.device), indexing="ij")
            grid = torch.stack([xs, ys], -1)[None] + 0.5  # [1, H, W, 2]
            grid = grid / torch.stack([valid_w, valid_h], -1)[:, None, None, :]
            wh = torch.full_like(grid, 0.05 * 2.0 ** lvl)
            proposals.append(torch.cat([grid, wh], -1).view(b, -1, 4))
            start += h * w
        proposals = torch.cat(proposals, 1)
        valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)
        proposals = torch.log(proposals / (1 - proposals))
        proposals = proposals.masked_fill(padding_mask[..., None], float("inf"))
        proposals = proposals.masked_fill(~valid, float("inf"))
        output_memory = memory.masked_fill(padding_mask[..., None], 0.0).masked_fill(~valid, 0.0)
        return self.enc_output_norm(self.enc_output(output_memory)), proposals

    def forward(self, srcs, masks, pos_embeds, enc_heads, box_heads, query_embed=None, dn_content=None,
                dn_boxes=None, attn_mask=None, c_stream=False, anchors=None):
        shapes = [tuple(s.shape[-2:]) for s in srcs]
        src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
        mask = torch.cat([m.flatten(1) for m in masks], 1)
        pos = torch.cat([p.flatten(2).transpose(1, 2) + self.level_embed[lvl][None, None]
                         for lvl, p in enumerate(pos_embeds)], 1)
        spatial_shapes, level_start_index = self.level_index(shapes, src.device)
        valid_ratios = torch.stack([self.valid_ratio(m) for m in masks], 1)
        memory = self.encoder(src, pos, spatial_shapes, level_start_index, valid_ratios, mask, shapes)

        b, s, d = memory.shape
        extra = {}
        if self.two_stage:
            output_memory, proposals = self.gen_encoder_output_proposals(memory, mask, shapes)
            enc_class_head, enc_box_head = enc_heads
            enc_logits = enc_class_head(output_memory)
            enc_coords = enc_box_head(output_memory) + proposals
            if isinstance(s, int) and self.num_queries > s:  # (symbolic while exporting)
                raise ValueError(f"model.num_queries ({self.num_queries}) exceeds the {s} encoder tokens of this "
                                 "input; lower num_queries or use larger images")
            topk = top_proposals(enc_logits[..., 0], self.num_queries)
            reference = torch.gather(enc_coords, 1, topk[..., None].expand(-1, -1, 4)).detach()  # logits
            extra = dict(enc_logits=enc_logits, enc_boxes=enc_coords.sigmoid())
            if dn_boxes is not None:
                reference = torch.cat([dn_boxes, reference], 1)
            pos_out = self.pos_trans_norm(self.pos_trans(box_sine_embedding(reference, d // 2)))
            query_pos, content = pos_out[..., :d], pos_out[..., d:]
            content = content[:, reference.shape[1] - self.num_queries:]
            if self.mixed_selection:
                content = query_embed[None].expand(b, -1, -1)
            reference = reference.sigmoid()
        elif self.dab:  # the decoder makes query_pos from each layer's reference
            query_pos, content, reference = None, query_embed, anchors.sigmoid()
        else:
            query_pos = query_embed[None, :, :d].expand(b, -1, -1)
            content = query_embed[None, :, d:].expand(b, -1, -1)
            reference = self.reference_points(query_pos).sigmoid()
        if dn_content is not None:
            content = torch.cat([dn_content, content], 1)
        out = self.decoder(content, reference, memory, spatial_shapes, level_start_index, valid_ratios, query_pos,
                           mask, attn_mask, box_heads, c_stream)
        out.update(extra)
        return out

    @staticmethod
    def level_index(shapes, device):
        """Level sizes L x (H, W) -> (spatial_shapes int64 [L, 2], level_start_index int64 [L]). While exporting,
        the sizes are the graph's symbolic ints and stay Python lists: a tensor made of them would freeze them
        to the traced image's values, and the grid_sample path slices with them."""
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        if torch.compiler.is_exporting():
            return [list(hw) for hw in shapes], starts
        return (torch.as_tensor(shapes, dtype=torch.long, device=device),
                torch.as_tensor(starts, dtype=torch.long, device=device))

    @staticmethod
    def valid_ratio(mask):
        """Unpadded fraction of each image. mask bool [B, H, W] -> [B, 2] (w ratio, h ratio)."""
        _, h, w = mask.shape
        valid_h = (~mask[:, :, 0]).sum(1).float() / h
        valid_w = (~mask[:, 0, :]).sum(1).float() / w
        return torch.stack([valid_w, valid_h], -1)
