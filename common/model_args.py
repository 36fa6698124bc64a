"""The constructor arguments of every model part, read from the config's `model` section.

Both framework trees build the same classes with the same arguments; this is the one place that turns config
keys into those arguments (and checks the ones a constructor cannot), so the two build.py files stay short and
cannot disagree.
"""
from typing import Dict

from common.matching import HungarianMatcher, OneToManyAssigner
from common.matching.one_to_many import assigner_fraction


def check(m) -> None:
    if m["num_classes"] is None or m["num_classes"] < 1:
        raise ValueError(f"model.num_classes must be a positive integer, got {m['num_classes']!r} (it is filled "
                         "from the training annotations when left unset)")
    if m["num_feature_levels"] < 1:
        raise ValueError(f"model.num_feature_levels must be >= 1, got {m['num_feature_levels']}")


def is_swin(m) -> bool:
    """The backbone is a Swin Transformer (swin.SwinBackbone), not a ResNet (backbone.Backbone)."""
    return m["backbone"]["name"].startswith("swin")


def backbone_args(m) -> Dict:
    """Arguments of swin.SwinBackbone when is_swin(m), else of backbone.Backbone."""
    bb = m["backbone"]
    if is_swin(m):
        if bb["dilation"]:
            raise ValueError(f"model.backbone.dilation needs resnet50 or resnet101, not {bb['name']}")
        return dict(name=bb["name"], frozen_stages=bb["frozen_stages"], num_levels=min(m["num_feature_levels"], 3),
                    drop_path_rate=bb["drop_path_rate"])
    return dict(name=bb["name"], frozen_stages=bb["frozen_stages"], dilation=bb["dilation"],
                num_levels=min(m["num_feature_levels"], 3), norm=bb["norm"])


def transformer_args(m) -> Dict:
    return dict(d_model=m["hidden_dim"], nhead=m["nheads"], num_encoder_layers=m["enc_layers"],
                num_decoder_layers=m["dec_layers"], dim_feedforward=m["dim_feedforward"], dropout=m["dropout"],
                num_feature_levels=m["num_feature_levels"], enc_n_points=m["enc_n_points"],
                dec_n_points=m["dec_n_points"], two_stage=m["two_stage"], num_queries=m["num_queries"],
                mixed_selection=m["mixed_selection"], look_forward_twice=m["look_forward_twice"],
                backend=m["deform_attn_backend"])


def dn_args(m):
    """None (denoising off) or the dict DACDETR takes as `dn`."""
    dn = m["dn"]
    return {k: dn[k] for k in ("number", "label_noise_ratio", "box_noise_scale", "contrastive")} if dn["enabled"] else None


def detr_args(m) -> Dict:
    """DACDETR's arguments after (backbone, transformer)."""
    return dict(num_classes=m["num_classes"], num_feature_levels=m["num_feature_levels"],
                num_queries=m["num_queries"], two_stage=m["two_stage"], mixed_selection=m["mixed_selection"],
                dn=dn_args(m), dac=m["dac"]["enabled"], pe_temperature=m["pe_temperature"])


def criterion_args(m) -> Dict:
    """SetCriterion's arguments, the numpy matcher and one-to-many assigner included."""
    loss, mc, dac = m["loss"], m["matcher"], m["dac"]
    matcher = HungarianMatcher(mc["cost_class"], mc["cost_bbox"], mc["cost_giou"], loss["focal_alpha"],
                               loss["focal_gamma"])
    assigner = None
    if dac["enabled"]:
        assigner = OneToManyAssigner(
            dac["k"], dac["threshold"], dac["iou_weight"],
            assigner_fraction(dac["positive_fraction"], dac["sample_queries"], m["num_queries"]))
    return dict(num_classes=m["num_classes"], matcher=matcher, assigner=assigner, num_layers=m["dec_layers"],
                two_stage=m["two_stage"], dn=m["dn"]["enabled"], loss_type=loss["type"],
                focal_alpha=loss["focal_alpha"], focal_gamma=loss["focal_gamma"], ice_alpha=loss["ice_alpha"],
                rank_tau=loss["rank_tau"], class_weight=loss["class_weight"], bbox_weight=loss["bbox_weight"],
                giou_weight=loss["giou_weight"], enc_class_weight=loss["enc_class_weight"],
                dac_loss_norm=dac["loss_norm"], dac_assign_boxes=dac["assign_boxes"])


def postprocess_args(m) -> Dict:
    pp = m["postprocess"]
    return dict(num_select=pp["num_select"], nms_iou=pp["nms_iou"], pre_nms_topk=pp["pre_nms_topk"])
