"""Plain-DETR's transformer (Lin et al., "DETR Does Not Need Multi-Scale or Locality Design", ICCV 2023).

No encoder: the decoder reads one stride-16 map directly. Two-stage proposals come from a small pyramid built from
that map (strides 8, 16, 32, 64: 2x2 transposed convolutions up, 2x2 stride-2 convolutions down, LayerNorm + GELU
between two steps), one grid box per pyramid cell, refined by the proposal head; the top `num_queries` by class-0
logit become the decoder's reference boxes (detached), and their sine embedding through pos_trans its positional
queries (mixed selection: the content part is the learned `query_embed`).

Decoder: pre-norm layers of self-attention, global cross-attention with the box relative position bias of each
query's reference box (box_rpb.GlobalCrossAttention) and FFN; a final LayerNorm before the heads (the next layer
reads the un-normalized output). Iterative box refinement with look-forward-twice as in deformable_transformer.

Boxes (`reparam`): true, the release's box reparameterization: references are cxcywh in pixels of the image,
a head's delta moves them by common.box_ops' deltas (box_ops.apply_box_delta: centre + d * size, size * exp(d),
clipped to the image), proposals are cells of side 50 * 2^level px. False: references are cxcywh in [0, 1] of the
image, refined in logit space (sigmoid(delta + logit(r))), proposals of side 0.05 * 2^level. Either way the
outputs are also given in [0, 1] (what the criterion, post-processing and export read), and the cross-attention
bias sees the boxes in pixels.

Parameter names follow the release (transformer.decoder.layers.N.{cross_attn, norm1, self_attn, norm2, linear1,
linear2, norm3}, decoder.final_layer_norm, level_embed, enc_output(_norm), pos_trans(_norm), enc_output_proj.N).
Differences from the release: image sizes are the exact unpadded pixel sizes (the release rounds them up to whole
stride-16 cells), the reparameterized L1 targets use detached reference boxes (common/set_criterion.py), padded
pixels get no attention at all (box_rpb.py; the release adds -100 to their logits), and with reparam false the
dummy proposals' logit is 11.5 (utils.inverse_sigmoid's clamp), not +inf.
Mirrors torch_impl; grids are made in the features' dtype (Paddle does not promote dtypes silently).
"""
import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from .attention import MultiheadAttention
from .box_ops import apply_box_delta, box_cxcywh_to_xyxy
from .box_rpb import GlobalCrossAttention
from .deformable_transformer import top_proposals
from .layers import Linear
from .position_encoding import sine_embedding
from .utils import inverse_sigmoid

PROPOSAL_MIN_SIZE = 50.0  # reparam: pixel side of the finest proposals (the release's proposal_min_size)


class BoxCoder:
    """Where reference boxes live and how a head's delta moves them (module docstring): reparam, cxcywh in pixels;
    otherwise cxcywh in [0, 1] of the image, refined in logit space. Boxes [B, N, 4], image_size [B, 2] (w, h)."""

    def __init__(self, reparam):
        self.reparam = reparam

    def decode(self, reference, delta, image_size):
        """A head's delta [B, N, 4] applied to references [B, N, 4] -> [B, N, 4] (reference space)."""
        if self.reparam:
            return apply_box_delta(reference, delta, image_size)
        return F.sigmoid(delta + inverse_sigmoid(reference))

    def normalized(self, boxes, image_size):
        """Reference space -> cxcywh in [0, 1] of the image."""
        return boxes / paddle.tile(image_size, [1, 2])[:, None] if self.reparam else boxes

    def pixels(self, boxes, image_size):
        """Reference space -> cxcywh in pixels."""
        return boxes if self.reparam else boxes * paddle.tile(image_size, [1, 2])[:, None]


class LayerNorm2D(nn.Layer):
    """LayerNorm over the channels of a map. x [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels):
        super().__init__()
        self.ln = nn.LayerNorm(channels)

    def forward(self, x):
        return self.ln(x.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])


def pyramid_projection(d_model, in_stride, stride):
    """The layers taking the stride-in_stride map to stride `stride` (powers of two apart): identity, 2x2 stride-2
    convolutions (coarser) or transposed convolutions (finer), LayerNorm2D + GELU between two steps.
    [B, D, H, W] -> [B, D, H * in_stride / stride, W * in_stride / stride]."""
    if stride == in_stride:
        return nn.Identity()
    conv = nn.Conv2D if stride > in_stride else nn.Conv2DTranspose
    steps = round(abs(math.log2(stride / in_stride)))
    layers = []
    for _ in range(steps - 1):
        layers += [conv(d_model, d_model, 2, stride=2), LayerNorm2D(d_model), nn.GELU()]
    layers.append(conv(d_model, d_model, 2, stride=2))
    return nn.Sequential(*layers)


class GlobalDecoderLayer(nn.Layer):
    """Pre-norm self-attention, global cross-attention with BoxRPB, FFN.

    forward(tgt, query_pos [B, N, D], boxes [B, N, 4] x1y1x2y2 in pixels, memory, memory_pos [B, S, D],
    spatial_shape (H, W), memory_mask bool [B, S] True = padded, attn_mask bool [N, N] True = blocked or None)
    -> [B, N, D].
    """

    def __init__(self, d_model, d_ffn, dropout, n_heads, rpe_hidden_dim, rpe_type, feature_stride):
        super().__init__()
        self.cross_attn = GlobalCrossAttention(d_model, n_heads, rpe_hidden_dim, feature_stride, rpe_type)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.linear1 = Linear(d_model, d_ffn)
        self.dropout3 = nn.Dropout(dropout)
        self.linear2 = Linear(d_ffn, d_model)
        self.dropout4 = nn.Dropout(dropout)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt, query_pos, boxes, memory, memory_pos, spatial_shape, memory_mask, attn_mask=None):
        x = self.norm2(tgt)
        tgt = tgt + self.dropout2(self.self_attn(x + query_pos, x + query_pos, x, attn_mask))
        x = self.norm1(tgt)
        tgt = tgt + self.dropout1(self.cross_attn(x + query_pos, memory + memory_pos, memory, boxes, spatial_shape,
                                                  memory_mask))
        x = self.norm3(tgt)
        return tgt + self.dropout4(self.linear2(self.dropout3(F.relu(self.linear1(x)))))


class GlobalDecoder(nn.Layer):
    """Decoder layers with iterative box refinement: layer l's box is decode(r_{l-1}, delta_l) with r_{l-1}
    undetached (look-forward-twice) or detached; layer l + 1 reads decode(r_{l-1}.detach(), delta_l), detached.
    The heads read the outputs after final_layer_norm.

    forward(tgt, query_pos [B, N, D], reference [B, N, 4] (reference space, no gradient), memory, memory_pos
    [B, S, D], spatial_shape (H, W), memory_mask bool [B, S], attn_mask bool [N, N] or None, box_heads: one per layer,
    box_coder: BoxCoder, image_size [B, 2]) -> dict hs, boxes (normalized), pred_deltas, ref_boxes: one [B, N, .]
    per layer (PlainTransformer's docstring).
    """

    def __init__(self, layers, d_model, look_forward_twice=True):
        super().__init__()
        self.layers = nn.LayerList(layers)
        self.final_layer_norm = nn.LayerNorm(d_model)
        self.look_forward_twice = look_forward_twice

    def reset_parameters(self):
        """The release re-initializes the decoder's Linear layers as Swin does (LayerNorms stay 1 / 0):
        N(0, 0.02) = timm's trunc_normal_(std=0.02), whose cut at +-2 is 100 std away; zero biases."""
        normal, zeros = nn.initializer.Normal(0.0, 0.02), nn.initializer.Constant(0.0)
        for m in self.sublayers():
            if isinstance(m, nn.Linear):
                normal(m.weight)
                if m.bias is not None:
                    zeros(m.bias)

    def forward(self, tgt, query_pos, reference, memory, memory_pos, spatial_shape, memory_mask, attn_mask,
                box_heads, box_coder, image_size):
        out = dict(hs=[], boxes=[], pred_deltas=[], ref_boxes=[])
        hidden, ref, prev = tgt, reference, reference
        for lid, layer in enumerate(self.layers):
            boxes = box_cxcywh_to_xyxy(box_coder.pixels(ref, image_size))
            hidden = layer(hidden, query_pos, boxes, memory, memory_pos, spatial_shape, memory_mask, attn_mask)
            normed = self.final_layer_norm(hidden)
            delta = box_heads[lid](normed)
            box = box_coder.decode(prev, delta, image_size)
            new_ref = box if prev is ref else box_coder.decode(ref, delta, image_size)
            out["hs"].append(normed)
            out["boxes"].append(box_coder.normalized(box, image_size))
            out["pred_deltas"].append(delta)
            out["ref_boxes"].append(ref)
            ref = new_ref.detach()
            prev = new_ref if self.look_forward_twice else ref
        return out


class PlainTransformer(nn.Layer):
    """Proposal pyramid, top-k query selection and the global decoder; see the module docstring.

    forward(src [B, D, H, W] the stride-16 map, mask bool [B, H, W], pos [B, D, H, W], image_size [B, 2] (w, h)
    unpadded pixels, enc_heads (class head, box head) of the proposals, box_heads: one per decoder layer,
    query_embed [N, D] learned content (mixed selection) or None, num_queries N (queries selected), attn_mask bool
    [N, N] or None) -> dict
        hs        dec_layers x [B, N, D] (after the final LayerNorm)
        boxes     dec_layers x [B, N, 4] cxcywh in [0, 1] of the image
        enc_outputs {pred_logits [B, S, C], pred_boxes [B, S, 4]} of the S pyramid cells
      reparam, also (for the losses, common/set_criterion.py): pred_deltas (dec_layers x [B, N, 4], the heads'
        outputs), ref_boxes (dec_layers x [B, N, 4] cxcywh pixels, detached: the boxes those deltas move), and the
        same two keys in enc_outputs (ref_boxes: the grid proposals).
    """

    def __init__(self, d_model=256, nhead=8, num_decoder_layers=6, dim_feedforward=2048, dropout=0.0,
                 mixed_selection=True, look_forward_twice=True, reparam=True, rpe_hidden_dim=512, rpe_type="linear",
                 feature_stride=16, proposal_strides=(8, 16, 32, 64)):
        super().__init__()
        self.d_model = d_model
        self.mixed_selection = mixed_selection
        self.reparam = reparam
        self.feature_stride = feature_stride
        self.proposal_strides = tuple(proposal_strides)
        self.box_coder = BoxCoder(reparam)
        self.decoder = GlobalDecoder([
            GlobalDecoderLayer(d_model, dim_feedforward, dropout, nhead, rpe_hidden_dim, rpe_type, feature_stride)
            for _ in range(num_decoder_layers)], d_model, look_forward_twice)
        self.level_embed = self.create_parameter([1, d_model])
        self.enc_output = Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.pos_trans = Linear(d_model * 2, d_model * 2)
        self.pos_trans_norm = nn.LayerNorm(d_model * 2)
        self.enc_output_proj = nn.LayerList([pyramid_projection(d_model, feature_stride, s)
                                             for s in proposal_strides])
        self._reset_parameters()

    def _reset_parameters(self):
        xavier = nn.initializer.XavierUniform()
        for p in self.parameters():
            if p.ndim > 1:
                xavier(p)
        nn.initializer.Normal(0.0, 1.0)(self.level_embed)
        self.decoder.reset_parameters()

    def proposals(self, src, mask, image_size):
        """Grid proposals over the pyramid built from src.

        src [B, D, H, W], mask bool [B, H, W], image_size [B, 2] -> (output_memory [B, S, D] for the proposal heads,
        proposals [B, S, 4] in reference space; cells in the padding or too close to the border (outside 1-99% of
        the image) get zero memory and a dummy box: all-ones (normalized) or max(H, W) * stride px (reparam)).
        """
        b = src.shape[0]
        memory, boxes, masks = [], [], []
        for lvl, (proj, stride) in enumerate(zip(self.enc_output_proj, self.proposal_strides)):
            x = proj(src)
            h, w = x.shape[-2:]
            lvl_mask = F.interpolate(mask[None].astype("float32"), size=(h, w))[0].astype("bool")
            ys, xs = paddle.meshgrid(paddle.arange(h, dtype=src.dtype) + 0.5, paddle.arange(w, dtype=src.dtype) + 0.5)
            centres = paddle.stack([xs, ys], -1).reshape([1, h * w, 2])
            if self.reparam:
                centres, side = centres * stride, PROPOSAL_MIN_SIZE * 2.0 ** lvl
            else:
                valid_wh = paddle.stack([(~lvl_mask[:, 0, :]).astype(src.dtype).sum(1),
                                         (~lvl_mask[:, :, 0]).astype(src.dtype).sum(1)], -1)
                centres, side = centres / valid_wh[:, None], 0.05 * 2.0 ** lvl
            sizes = paddle.full_like(centres, side)
            boxes.append(paddle.concat([centres.expand([b, -1, -1]), sizes.expand([b, -1, -1])], -1))
            memory.append(x.flatten(2).transpose([0, 2, 1]))
            masks.append(lvl_mask.flatten(1))
        memory, boxes, padded = paddle.concat(memory, 1), paddle.concat(boxes, 1), paddle.concat(masks, 1)
        bound = paddle.tile(image_size, [1, 2])[:, None] if self.reparam else 1.0
        valid = ((boxes > 0.01 * bound) & (boxes < 0.99 * bound)).all(-1) & ~padded  # [B, S]
        dummy = 1.0
        if self.reparam:  # from the shape tensor: static graphs (export) have no Python sizes
            dummy = paddle.shape(src)[2:].max().astype(boxes.dtype) * self.feature_stride
        boxes = boxes.masked_fill(~valid[..., None], dummy)
        memory = memory.masked_fill(~valid[..., None], 0.0)
        return self.enc_output_norm(self.enc_output(memory)), boxes

    def forward(self, src, mask, pos, image_size, enc_heads, box_heads, query_embed, num_queries, attn_mask=None):
        b, d, h, w = src.shape
        memory = src.flatten(2).transpose([0, 2, 1])
        memory_pos = pos.flatten(2).transpose([0, 2, 1]).astype(src.dtype) + self.level_embed[0]
        memory_mask = mask.flatten(1)

        output_memory, proposals = self.proposals(src, mask, image_size)
        enc_class_head, enc_box_head = enc_heads
        enc_logits = enc_class_head(output_memory)
        enc_deltas = enc_box_head(output_memory)
        enc_boxes = self.box_coder.decode(proposals, enc_deltas, image_size)
        if isinstance(enc_logits.shape[1], int) and num_queries > enc_logits.shape[1]:  # (symbolic while exporting)
            raise ValueError(f"model.num_queries (+ hybrid.num_queries in training: {num_queries}) exceeds the "
                             f"{enc_logits.shape[1]} proposals of this input; lower them or use larger images")
        topk = top_proposals(enc_logits[..., 0], num_queries)
        reference = paddle.take_along_axis(enc_boxes, topk[..., None].tile([1, 1, 4]), 1).detach()
        pos_out = self.pos_trans_norm(self.pos_trans(sine_embedding(reference, d // 2)))
        query_pos, content = pos_out[..., :d], pos_out[..., d:]
        if self.mixed_selection:
            content = query_embed[None].expand([b, -1, -1])

        out = self.decoder(content, query_pos, reference, memory, memory_pos, (h, w), memory_mask, attn_mask,
                           box_heads, self.box_coder, image_size)
        enc = {"pred_logits": enc_logits, "pred_boxes": self.box_coder.normalized(enc_boxes, image_size),
               "pred_deltas": enc_deltas, "ref_boxes": proposals}
        if not self.reparam:  # the L1 terms are on the boxes
            for stream in (out, enc):
                del stream["pred_deltas"], stream["ref_boxes"]
        out["enc_outputs"] = enc
        return out
