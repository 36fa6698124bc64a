"""Conditional DETR's transformer (Meng et al., ICCV 2021): DETR's encoder and the conditional decoder.

Encoder: post-norm layers of multi-head self-attention (positions added to queries and keys, not to values) and
an FFN over the tokens of one feature map; padded tokens are masked out as keys.

Decoder, per layer (post-norm; the shared LayerNorm `norm` gives each layer's output h_l to the heads):
  self-attention   queries and keys = content + position through separate projections (sa_*), values = content;
  reference point  s = sigmoid(ref_point_head(query_pos)) [B, Q, 2] (x, y), one per object query, the same in
                   every layer (the detector predicts boxes relative to it);
  spatial query    p_q = lambda_q * PE(s), PE(s) the sine code of s with the feature map's frequencies (the code
                   of the pixel at s), lambda_q = query_scale(previous layer's output), 1 in layer 0;
  cross-attention  per head h, query [c_q,h ; p_q,h] and key [c_k,h ; p_k,h] (content ; spatial, concatenated so
                   the head dim doubles), so a logit is c_q.c_k + p_q.p_k: content and position are matched
                   separately. c_q = ca_qcontent_proj(tgt), c_k = ca_kcontent_proj(memory), p_q =
                   ca_qpos_sine_proj(lambda_q * PE(s)), p_k = ca_kpos_proj(PE(pixel)), values ca_v_proj(memory).
                   Layer 0 also adds the positions to the content parts, as DETR does: c_q += ca_qpos_proj(query_pos),
                   c_k += p_k; later layers have no ca_qpos_proj.
The decoder's input content is zero; the object queries (`query_pos`) are the detector's learned query_embed.
"""
import torch
from torch import nn

from .attention import MultiheadAttention, attend
from .dac_detr import MLP
from .position_encoding import sine_embedding


def _concat_heads(a, b, n_heads):
    """Per-head concatenation. a, b [B, N, D] -> [B, N, 2 D] whose head h is [a_h ; b_h] (D / n_heads each)."""
    bs, n, d = a.shape
    return torch.cat([a.view(bs, n, n_heads, d // n_heads), b.view(bs, n, n_heads, d // n_heads)], -1).flatten(2)


def ffn_activation(name):
    """The FFN nonlinearity of a layer: "relu", or "prelu" (one learned slope for negative inputs, `weight` [1],
    0.25 at init: the DAB-DETR release's default)."""
    if name not in ("relu", "prelu"):
        raise ValueError(f"model.activation must be relu or prelu, got {name!r}")
    return nn.PReLU() if name == "prelu" else nn.ReLU()


class ProjectedAttention(nn.Module):
    """Multi-head attention whose inputs the caller has projected: `attend`, then out_proj.

    forward(q [B, Nq, h * dk], k [B, Nk, h * dk], v [B, Nk, D], key_padding_mask bool [B, Nk] True = padded, or
    None; attn_mask bool [Nq, Nk] True = blocked, or None; bias float [B, h, Nq, Nk] added to the logits, or None)
    -> [B, Nq, D].
    """

    def __init__(self, d_model, n_heads, dropout=0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"model.hidden_dim ({d_model}) must be divisible by model.nheads ({n_heads})")
        self.n_heads = n_heads
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q, k, v, key_padding_mask=None, attn_mask=None, bias=None):
        return self.out_proj(attend(q, k, v, self.n_heads, attn_mask, key_padding_mask, self.dropout, bias))


class TransformerEncoderLayer(nn.Module):
    """Self-attention + FFN, post-norm (DETR).

    forward(src [B, S, D], pos [B, S, D], padding_mask bool [B, S]) -> [B, S, D]
    """

    def __init__(self, d_model, nhead, d_ffn, dropout, activation="relu"):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.activation = ffn_activation(activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)

    def forward(self, src, pos, padding_mask):
        q = src + pos
        src = self.norm1(src + self.dropout1(self.self_attn(q, q, src, key_padding_mask=padding_mask)))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout2(ffn))


class TransformerEncoder(nn.Module):
    """forward(src [B, S, D], pos [B, S, D], padding_mask bool [B, S]) -> memory [B, S, D]"""

    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, src, pos, padding_mask):
        for layer in self.layers:
            src = layer(src, pos, padding_mask)
        return src


class ConditionalDecoderLayer(nn.Module):
    """Self-attention, conditional cross-attention, FFN, each post-norm (module docstring). `first`: layer 0,
    which adds the positions to the content query and key and owns ca_qpos_proj.

    forward(tgt [B, Q, D], memory [B, S, D], pos [B, S, D] pixel codes, query_pos [B, Q, D], query_sine [B, Q, D]
    = lambda_q * PE(s), memory_mask bool [B, S], attn_mask bool [Q, Q] True = blocked (the self-attention's; DN-DETR's
    denoising groups) or None) -> [B, Q, D]
    """

    def __init__(self, d_model, nhead, d_ffn, dropout, first=False, activation="relu"):
        super().__init__()
        self.nhead = nhead
        self.sa_qcontent_proj = nn.Linear(d_model, d_model)
        self.sa_qpos_proj = nn.Linear(d_model, d_model)
        self.sa_kcontent_proj = nn.Linear(d_model, d_model)
        self.sa_kpos_proj = nn.Linear(d_model, d_model)
        self.sa_v_proj = nn.Linear(d_model, d_model)
        self.self_attn = ProjectedAttention(d_model, nhead, dropout)
        self.ca_qcontent_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_proj = nn.Linear(d_model, d_model) if first else None
        self.ca_kcontent_proj = nn.Linear(d_model, d_model)
        self.ca_kpos_proj = nn.Linear(d_model, d_model)
        self.ca_v_proj = nn.Linear(d_model, d_model)
        self.ca_qpos_sine_proj = nn.Linear(d_model, d_model)
        self.cross_attn = ProjectedAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.activation = ffn_activation(activation)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)

    def forward(self, tgt, memory, pos, query_pos, query_sine, memory_mask, attn_mask=None):
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)
        tgt = self.norm1(tgt + self.dropout1(self.self_attn(q, k, self.sa_v_proj(tgt), attn_mask=attn_mask)))

        q = self.ca_qcontent_proj(tgt)
        k = self.ca_kcontent_proj(memory)
        k_pos = self.ca_kpos_proj(pos)
        if self.ca_qpos_proj is not None:
            q = q + self.ca_qpos_proj(query_pos)
            k = k + k_pos
        q = _concat_heads(q, self.ca_qpos_sine_proj(query_sine), self.nhead)
        k = _concat_heads(k, k_pos, self.nhead)
        tgt = self.norm2(tgt + self.dropout2(self.cross_attn(q, k, self.ca_v_proj(memory), memory_mask)))

        ffn = self.linear2(self.dropout(self.activation(self.linear1(tgt))))
        return self.norm3(tgt + self.dropout3(ffn))


class ConditionalDecoder(nn.Module):
    """Decoder layers with one reference point per query (module docstring).

    forward(tgt [B, Q, D], memory [B, S, D], pos [B, S, D], query_pos [B, Q, D], memory_mask bool [B, S])
    -> (hs: one [B, Q, D] per layer, normalized by `norm`; reference [B, Q, 2] (x, y) in [0, 1])
    """

    def __init__(self, layers, d_model, pe_temperature=10000.0):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(d_model)
        self.query_scale = MLP(d_model, d_model, d_model, 2)
        self.ref_point_head = MLP(d_model, d_model, 2, 2)
        self.pe_temperature = pe_temperature

    def forward(self, tgt, memory, pos, query_pos, memory_mask):
        reference = self.ref_point_head(query_pos).sigmoid()
        # (y, x) blocks: the layout of PositionEmbeddingSine, so PE(s) is the code of the pixel at s
        pe = sine_embedding(reference.flip(-1), tgt.shape[-1] // 2, self.pe_temperature)
        hs, out = [], tgt
        for lid, layer in enumerate(self.layers):
            query_sine = pe if lid == 0 else self.query_scale(out) * pe
            out = layer(out, memory, pos, query_pos, query_sine, memory_mask)
            hs.append(self.norm(out))
        return hs, reference


class ConditionalTransformer(nn.Module):
    """Encoder + conditional decoder over one feature map (module docstring).

    forward(src [B, D, H, W] projected features, mask bool [B, H, W] True = padding, query_embed [Q, D] object
    queries, pos [B, D, H, W] sine codes of the pixels)
    -> (hs: dec_layers x [B, Q, D], reference [B, Q, 2] (x, y) in [0, 1])
    """

    def __init__(self, d_model=256, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, pe_temperature=10000.0, activation="relu"):
        super().__init__()
        if d_model % 4:
            raise ValueError(f"model.hidden_dim must be a multiple of 4 (a sin/cos pair per frequency for each of "
                             f"y and x), got {d_model}")
        self.d_model = d_model
        self.encoder = TransformerEncoder([TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation)
                                           for _ in range(num_encoder_layers)])
        self.decoder = ConditionalDecoder(
            [ConditionalDecoderLayer(d_model, nhead, dim_feedforward, dropout, first=(i == 0), activation=activation)
             for i in range(num_decoder_layers)], d_model, pe_temperature)
        for p in self.parameters():  # DETR's init: Xavier for every matrix, biases as constructed
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src, mask, query_embed, pos):
        memory = src.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2).to(memory.dtype)
        mask = mask.flatten(1)
        memory = self.encoder(memory, pos, mask)
        query_pos = query_embed[None].expand(memory.shape[0], -1, -1)
        return self.decoder(torch.zeros_like(query_pos), memory, pos, query_pos, mask)
