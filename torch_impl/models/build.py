"""build_model(cfg) -> (model, criterion, postprocessor) from the config's `model` section.

The four variants are switches of one model (common/config/model_schema.py lists them): deformable_detr is the
release's baseline (two-stage, box refinement, mixed selection, look-forward-twice; no denoising, no C-decoder,
focal loss), dino adds contrastive denoising, dac_cdn the C-decoder, dac_cdn_ice the IoU-aware loss (the release).
"""
from common.matching import HungarianMatcher, OneToManyAssigner
from common.matching.one_to_many import assigner_fraction

from .backbone import Backbone, load_pretrained
from .criterion import SetCriterion
from .dac_detr import DACDETR
from .deformable_transformer import DeformableTransformer
from .postprocess import PostProcess
from .utils import targets_to_tensors  # noqa: F401  (re-exported for the engine)


def build_model(cfg):
    """cfg: the resolved config (uses cfg["model"], all keys present) -> (DACDETR, SetCriterion, PostProcess)."""
    m = cfg["model"]
    if m["num_classes"] is None or m["num_classes"] < 1:
        raise ValueError(f"model.num_classes must be a positive integer, got {m['num_classes']!r} (it is filled "
                         "from the training annotations when left unset)")
    levels = m["num_feature_levels"]
    if levels < 1:
        raise ValueError(f"model.num_feature_levels must be >= 1, got {levels}")
    bb = m["backbone"]
    backbone = Backbone(bb["name"], bb["frozen_stages"], bb["dilation"], num_levels=min(levels, 3),
                        norm=bb["norm"])
    if bb["pretrained"]:
        load_pretrained(backbone.body, bb["pretrained"])
    transformer = DeformableTransformer(
        d_model=m["hidden_dim"], nhead=m["nheads"], num_encoder_layers=m["enc_layers"],
        num_decoder_layers=m["dec_layers"], dim_feedforward=m["dim_feedforward"], dropout=m["dropout"],
        num_feature_levels=levels, enc_n_points=m["enc_n_points"], dec_n_points=m["dec_n_points"],
        two_stage=m["two_stage"], num_queries=m["num_queries"], mixed_selection=m["mixed_selection"],
        look_forward_twice=m["look_forward_twice"], backend=m["deform_attn_backend"])
    dn_cfg = m["dn"]
    dn = None
    if dn_cfg["enabled"]:
        dn = {k: dn_cfg[k] for k in ("number", "label_noise_ratio", "box_noise_scale", "contrastive")}
    dac = m["dac"]
    model = DACDETR(backbone, transformer, m["num_classes"], levels, m["num_queries"], m["two_stage"],
                    m["mixed_selection"], dn=dn, dac=dac["enabled"], pe_temperature=m["pe_temperature"])

    loss, mc = m["loss"], m["matcher"]
    matcher = HungarianMatcher(mc["cost_class"], mc["cost_bbox"], mc["cost_giou"], loss["focal_alpha"],
                               loss["focal_gamma"])
    assigner = None
    if dac["enabled"]:
        assigner = OneToManyAssigner(
            dac["k"], dac["threshold"], dac["iou_weight"],
            assigner_fraction(dac["positive_fraction"], dac["sample_queries"], m["num_queries"]))
    criterion = SetCriterion(
        m["num_classes"], matcher, assigner, num_layers=m["dec_layers"], two_stage=m["two_stage"],
        dn=dn is not None, loss_type=loss["type"], focal_alpha=loss["focal_alpha"], focal_gamma=loss["focal_gamma"],
        ice_alpha=loss["ice_alpha"], rank_tau=loss["rank_tau"], class_weight=loss["class_weight"],
        bbox_weight=loss["bbox_weight"], giou_weight=loss["giou_weight"], enc_class_weight=loss["enc_class_weight"],
        dac_loss_norm=dac["loss_norm"], dac_assign_boxes=dac["assign_boxes"])
    pp = m["postprocess"]
    return model, criterion, PostProcess(pp["num_select"], pp["nms_iou"], pp["pre_nms_topk"])
