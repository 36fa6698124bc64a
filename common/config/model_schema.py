"""The `model` section of the config schema: every switch of the DAC-DETR family, defaults = the release.

Defaults reproduce the official DAC-DETR R50 12-epoch recipe (github huzhengdongcs/DAC-DETR,
configs/r50_deformplus_cdn_ice_ep12.sh: two-stage Deformable-DETR with box refinement, mixed query
selection, look-forward-twice, 900 queries, dropout 0, CDN denoising and the IoU-aware "ice" loss). The
other variants are the same model with switches off, so that each differs from the next by one idea:

    deformable_detr   dn.enabled=false, dac.enabled=false, loss.type=focal: the release's own baseline
                      ("deformplus", H-DETR's Deformable-DETR++: mixed selection and look-forward-twice kept);
                      the original paper's model also sets mixed_selection=false, look_forward_twice=false,
                      num_queries=300, dropout=0.1, dim_feedforward=1024
    dino              dac.enabled=false, loss.type=focal          (+ contrastive denoising)
    dac_cdn           loss.type=focal                             (+ the C-decoder)
    dac_cdn_ice       the defaults                                (+ the IoU-aware loss)

`arch` picks the detector. dac_detr is the family above; conditional_detr is Conditional DETR (Meng et al.,
ICCV 2021: single-scale DETR encoder, conditional spatial queries in the decoder, focal loss); dab_detr is
DAB-DETR (Liu et al., ICLR 2022: Conditional DETR's layers with learned anchor boxes as queries, refined layer
by layer, and width / height-modulated cross-attention). The two single-scale archs read the shared keys
(backbone, hidden_dim, nheads, enc/dec_layers, dim_feedforward, dropout, num_queries, pe_temperature, loss,
matcher, postprocess) and have none of the deformable / two-stage / dac keys (nor dn, for conditional_detr),
which they ignore at their defaults and refuse otherwise (common/model_args.py: NOT_APPLICABLE). dab_detr with
dn.enabled is DN-DETR (Li et al., CVPR 2022: DN-DAB-DETR, plain denoising queries; configs/dn_dab_detr_*.yml).
dab_deformable_detr is DAB-Deformable-DETR: the dac_detr layout (deformable encoder and decoder, box refinement)
one-stage, with learned anchor boxes whose codes give each decoder layer its positional queries; it has the
deformable keys but not two_stage / mixed_selection / look_forward_twice / dac, and with dn.enabled (plain) it is
DN-Deformable-DETR (configs/dn_dab_deformable_detr_*.yml). plain_detr is Plain-DETR (Lin et al., ICCV 2023): one
stride-16 map (ResNet with backbone.last_stage 3 or dilation), no encoder, a decoder with global cross-attention
biased by each query's box (BoxRPB), two-stage proposals from a small pyramid, box reparameterization and hybrid
matching (its own sections `plain` and `hybrid`; of the deformable keys it has two_stage (true), mixed_selection
and look_forward_twice). sap_detr is SAP-DETR (Liu et al., CVPR 2023): Conditional DETR's single-scale layout with
one salient point per query, kept inside its cell of a query grid, boxes as distances from the point to their
sides, point-enhanced cross-attention with a side-directed Gaussian bias, and an objectness head (its own section
`sap`; it reads the same shared keys as dab_detr and has no dn).
"""
from common.config.fields import Field as F

ARCHS = ["dac_detr", "conditional_detr", "dab_detr", "dab_deformable_detr", "plain_detr", "sap_detr"]

MODEL = {
    "arch": F(str, "dac_detr", "detector: dac_detr (the DAC-DETR / DINO / Deformable-DETR family, switched by the "
                               "keys below), conditional_detr (single scale, conditional spatial queries), "
                               "dab_detr (single scale, anchor-box queries refined per layer), "
                               "dab_deformable_detr (multi-scale deformable, one-stage anchor-box queries), "
                               "plain_detr (one stride-16 map, global cross-attention with box bias) or "
                               "sap_detr (single scale, salient-point queries on a grid)",
              choices=ARCHS),
    "num_classes": F(int, None, "number of classes (null: the number of categories in the training annotations)",
                     bounds="[1, inf)"),
    "backbone": {
        "name": F(str, "resnet50", "ResNet depth (torchvision layout, FrozenBatchNorm) or Swin size (official "
                                   "layout; window 7 = the 224-px ImageNet weights, window12 = the 384-px ones; "
                                   "the DAC-DETR / DINO Swin-L is swin_large_window12)",
                  choices=["resnet18", "resnet34", "resnet50", "resnet101", "swin_tiny", "swin_small", "swin_base",
                           "swin_base_window12", "swin_large", "swin_large_window12"]),
        "pretrained": F(str, None, "path to an ImageNet state dict: torchvision ResNet (.pth/.pt/.safetensors; fc.* "
                                   "is ignored) or Microsoft Swin (.pth, its `model` entry; head.*, norm.*, "
                                   "*.attn_mask are ignored); Paddle also reads .pdparams. A ResNet may also come "
                                   "from a detector checkpoint (its backbone.body.* or backbone.0.body.*, e.g. "
                                   "output/torch/demo/checkpoint_last.pth); null: random init"),
        "frozen_stages": F(int, 1, "stages not trained: -1 none, 0 the stem, 1 stem + layer1 (DETR), ... 4 all; "
                                   "use -1 when training from random init. Swin: 0 patch_embed, k: also layers.0 "
                                   "..layers.{k-1} (the official Swin code's k + 1); the release trains all (-1)",
                           bounds="[-1, 4]"),
        "norm": F(str, "frozen_bn", "ResNet normalization layers: frozen_bn (pretrained weights), bn (trainable "
                                    "BatchNorm) or gn (GroupNorm(32): for training from random init); Swin: "
                                    "ignored (LayerNorm)",
                  choices=["frozen_bn", "bn", "gn"]),
        "dilation": F(bool, False, "replace the stride of layer4 by dilation (DC5; resnet50/101 only)"),
        "last_stage": F(int, 4, "last ResNet stage built: 4 (layer4: features end at C5, stride 32, or 16 with "
                                "dilation) or 3 (no layer4: they end at C4, stride 16; the cheap stride-16 choice "
                                "for resnet18/34, whose blocks have no dilated form)", choices=[3, 4]),
        "drop_path_rate": F(float, 0.2, "Swin: stochastic depth rate of the last block (linear from 0; the release: "
                                        "0.2 for 12 epochs, 0.5 for 24); ignored for ResNet", bounds="[0, 1)"),
    },
    "hidden_dim": F(int, 256, "transformer width (dac_detr: a multiple of 32 because of GroupNorm(32) in "
                              "input_proj; conditional_detr, dab_detr: a multiple of 4 and of nheads)",
                    bounds="[1, inf)"),
    "nheads": F(int, 8, "attention heads (deformable and self-attention)", bounds="[1, inf)"),
    "num_feature_levels": F(int, 4, "feature levels: C3, C4, C5, then stride-2 3x3 convs on C5 (1: C5 only; "
                                    "with backbone.last_stage 3, C4 takes C5's place)", bounds="[1, inf)"),
    "enc_layers": F(int, 6, "encoder layers (deformable; conditional_detr, dab_detr: standard self-attention)",
                    bounds="[0, inf)"),
    "dec_layers": F(int, 6, "decoder layers (dac_detr: each with its own class / box head; conditional_detr, "
                            "dab_detr: one pair shared by all)", bounds="[1, inf)"),
    "dim_feedforward": F(int, 2048, "FFN hidden size in encoder and decoder layers", bounds="[1, inf)"),
    "activation": F(str, "relu", "FFN nonlinearity of conditional_detr / dab_detr layers: relu, or prelu (one "
                                 "learned negative slope per layer, the DAB-DETR release's default); dac_detr's "
                                 "deformable layers use relu", choices=["relu", "prelu"]),
    "dropout": F(float, 0.0, "dropout in the transformer (the DAC-DETR and DAB-DETR releases train with 0, "
                             "Conditional DETR with 0.1)", bounds="[0, 1)"),
    "enc_n_points": F(int, 4, "sampling points per head and level in encoder deformable attention", bounds="[1, inf)"),
    "dec_n_points": F(int, 4, "sampling points per head and level in decoder cross-attention", bounds="[1, inf)"),
    "num_queries": F(int, 900, "object queries (= two-stage proposals kept; plain_detr: the one-to-one ones)",
                     bounds="[1, inf)"),
    "two_stage": F(bool, True, "queries from the top-scoring encoder proposals (false: learned queries; "
                               "then dn must be off)"),
    "mixed_selection": F(bool, True, "two-stage: learned content queries + positional part from the proposals "
                                     "(false: both parts from the proposals)"),
    "look_forward_twice": F(bool, True, "a layer's box loss also updates the previous layer's box (undetached)"),
    "pe_temperature": F(float, 10000.0, "temperature of the sine position encoding of the feature maps (and of "
                                        "conditional_detr's reference points); the DAB-DETR release uses 20 for "
                                        "the pixels and a fixed 10000 for its anchor boxes' codes", bounds="(0, inf)"),
    "deform_attn_backend": F(str, "auto", "multi-scale deformable attention: kernel (compiled), reference "
                                          "(grid_sample) or auto (kernel when it builds)",
                             choices=["auto", "kernel", "reference"]),
    "dn": {
        "enabled": F(bool, True, "denoising queries in training (dac_detr: needs two_stage; dab_detr, "
                                 "dab_deformable_detr: DN-DETR, plain denoising only)"),
        "number": F(int, 100, "denoising budget: groups = max(1, number // max GT per image)"
                              " (contrastive), else number groups (DN-DETR: 5)", bounds="[0, inf)"),
        "label_noise_ratio": F(float, 0.5, "label noise: a noised label is replaced by a random class with "
                                           "probability label_noise_ratio / 2 or label_noise_ratio (see "
                                           "label_flip_prob; DN-DETR: 0.2 with ratio)", bounds="[0, 1]"),
        "label_flip_prob": F(str, "half_ratio", "probability of replacing a noised label: half_ratio = "
                                                "label_noise_ratio / 2 (DINO's and DAC-DETR's convention) or "
                                                "ratio = label_noise_ratio (DN-DETR's)",
                             choices=["half_ratio", "ratio"]),
        "box_noise_scale": F(float, 0.4, "box noise scale lambda (the DAC-DETR release hard-codes 0.4; DINO's "
                                         "default is 1.0; DN-DETR: 0.4), used as box_noise_form says",
                             bounds="[0, inf)"),
        "box_noise_form": F(str, "corners", "corners: each corner moved by up to lambda half box sizes (DINO, "
                                            "DAC-DETR); center_size: the centre moved by up to lambda * (w / 2, "
                                            "h / 2) and w, h scaled by a factor in [1 - lambda, 1 + lambda] "
                                            "(DN-DETR; needs contrastive false)",
                            choices=["corners", "center_size"]),
        "contrastive": F(bool, True, "CDN (DINO): each group adds negatives pushed 1-2 half-sizes away and the "
                                     "group count adapts to the GT count; false: plain DN (positives only, "
                                     "`number` fixed groups; dab_detr: always false)"),
    },
    "dac": {
        "enabled": F(bool, True, "train the cross-attention-free C-decoder stream (no new parameters)"),
        "k": F(int, 6, "one-to-many: at most k queries per GT", bounds="[1, inf)"),
        "threshold": F(float, 0.4, "one-to-many: quality threshold of a positive", bounds="[0, 1]"),
        "iou_weight": F(float, 0.7, "one-to-many quality = iou_weight * IoU + (1 - iou_weight) * class prob",
                        bounds="[0, 1]"),
        "positive_fraction": F(float, 0.25, "one-to-many: positives are capped at positive_fraction * "
                                            "sample_queries per image", bounds="(0, 1]"),
        "sample_queries": F(int, 300, "query count the positive cap is computed from (the release hard-codes "
                                      "300, so 75 positives, whatever num_queries is); null: num_queries",
                            nullable=True, bounds="[1, inf)"),
        "assign_boxes": F(str, "o_decoder", "boxes in the one-to-many quality: o_decoder (the release: C-decoder "
                                            "scores with O-decoder boxes of the same layer) or c_decoder",
                          choices=["o_decoder", "c_decoder"]),
        "loss_norm": F(float, 3.0, "C-decoder one-to-many losses are divided by loss_norm * num_boxes",
                       bounds="(0, inf)"),
    },
    "plain": {
        "reparam": F(bool, True, "plain_detr: box reparameterization (boxes in pixels, deltas relative to the "
                                 "reference box, L1 loss and cost on the deltas; the release's best setting)"),
        "rpe_type": F(str, "linear", "BoxRPB input: linear (pixel offsets, the release's) or abs_log8 "
                                     "(sign(d) log2(|d| + 1) / 3)", choices=["linear", "abs_log8"]),
        "rpe_hidden_dim": F(int, 512, "hidden width of the two BoxRPB MLPs", bounds="[1, inf)"),
        "pe_normalize": F(bool, False, "plain_detr: sine codes of the pixels normalized by the image extent (as "
                                       "the other archs) or, false, of the cell index (the release's reparam "
                                       "script, 'sine_unnorm'; its other scripts normalize)"),
        "proposal_strides": F(list, [8, 16, 32, 64], "strides of the proposal pyramid built from the decoder's "
                                                     "map (each a power-of-two multiple or divisor of its stride)",
                              items=int, bounds="[1, inf)"),
    },
    "hybrid": {
        "num_queries": F(int, 1500, "plain_detr: one-to-many queries added in training (0: off); inference runs "
                                    "the num_queries one-to-one queries only", bounds="[0, inf)"),
        "k": F(int, 6, "one-to-many queries are matched to every GT repeated k times", bounds="[1, inf)"),
        "weight": F(float, 1.0, "weight of the one-to-many losses relative to the one-to-one ones", bounds="[0, inf)"),
    },
    "sap": {
        "grid": F(list, [18, 17], "sap_detr: the query grid (columns, rows), one query per cell; num_queries must "
                                  "be columns * rows (the release: 18 x 17 = 306)", items=int, bounds="[1, inf)"),
        "sdg": F(bool, True, "side-directed Gaussian bias in the decoder cross-attention"),
        "conv_init": F(bool, True, "first query content sampled at the grid points from three conv blocks over "
                                   "the encoder output (the release's newconvinit; false: zero)"),
        "obj_weight": F(float, 1.0, "weight of the objectness loss (focal, target the IoU with the matched GT)",
                        bounds="[0, inf)"),
        "inner_weight": F(float, 2.0, "weight of loss_inner, the share of matched points outside their GT box: a "
                                      "count without gradient, in the total as the release's", bounds="[0, inf)"),
        "cost_inner": F(float, 9999.0, "matching cost of a query whose point is outside the GT box (the release's "
                                       "hard constraint)", bounds="[0, inf)"),
    },
    "loss": {
        "type": F(str, "ice", "decoder classification loss: focal (sigmoid focal) or ice (IoU-aware BCE of the "
                              "release, which also weights one-to-many box losses by rank)",
                  choices=["focal", "ice"]),
        "focal_alpha": F(float, 0.25, "focal loss alpha", bounds="[0, 1]"),
        "focal_gamma": F(float, 2.0, "focal loss gamma; also the exponent of the ice negative weight p^gamma",
                         bounds="[0, inf)"),
        "ice_alpha": F(float, 0.25, "ice target t = p^ice_alpha * IoU^(1 - ice_alpha)", bounds="[0, 1]"),
        "rank_tau": F(float, 1.5, "ice: one-to-many positive of rank r (by t, within its GT) gets exp(-r / tau)",
                      bounds="(0, inf)"),
        "class_weight": F(float, 1.0, "weight of the classification losses", bounds="[0, inf)"),
        "bbox_weight": F(float, 5.0, "weight of the L1 box losses", bounds="[0, inf)"),
        "giou_weight": F(float, 2.0, "weight of the GIoU losses", bounds="[0, inf)"),
        "enc_class_weight": F(float, 2.0, "weight of the encoder proposal classification loss (release: 2)",
                              bounds="[0, inf)"),
    },
    "matcher": {
        "cost_class": F(float, 2.0, "Hungarian cost of the focal class term", bounds="[0, inf)"),
        "cost_bbox": F(float, 5.0, "Hungarian cost of the L1 box term", bounds="[0, inf)"),
        "cost_giou": F(float, 2.0, "Hungarian cost of the GIoU term", bounds="[0, inf)"),
    },
    "postprocess": {
        "num_select": F(int, 300, "detections kept per image (top-k over queries x classes)", bounds="[1, inf)"),
        "nms_iou": F(float, None, "class-wise NMS IoU threshold (null: no NMS; the release evaluates with 0.8)",
                     bounds="(0, 1]"),
        "pre_nms_topk": F(int, 10000, "with NMS: candidates (query, class) pairs considered before NMS",
                          bounds="[1, inf)"),
    },
}
