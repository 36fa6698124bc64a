"""The constructor arguments of every model part, read from the config's `model` section.

Both framework trees build the same classes with the same arguments; this is the one place that turns config
keys into those arguments (and checks the ones a constructor cannot), so the two build.py files stay short and
cannot disagree.
"""
import math
from typing import Dict

from common.config.fields import Field
from common.config.model_schema import MODEL
from common.matching import HungarianMatcher, OneToManyAssigner
from common.matching.one_to_many import assigner_fraction

_OFF = object()  # NOT_APPLICABLE: the key has no value meaning "off"

# Keys of the DAC-DETR family that another arch does not have (a section name covers all its keys). Left at
# the schema default such a key is ignored; set to its "off" value given here it is accepted (so a config can
# say dn.enabled: false); set to anything else it is an error naming the key. effective() turns the keys that
# have an off value to it, so the argument functions below read what the arch really does.
_DEFORMABLE = {"two_stage": False, "mixed_selection": False, "look_forward_twice": False, "enc_n_points": _OFF,
               "dec_n_points": _OFF, "deform_attn_backend": _OFF, "dn": _OFF, "dn.enabled": False, "dac": _OFF,
               "dac.enabled": False, "loss.enc_class_weight": _OFF}
_PLAIN = {"plain": _OFF, "hybrid": _OFF}  # Plain-DETR's own sections
_SAP = {"sap": _OFF}  # SAP-DETR's
NOT_APPLICABLE = {
    "dac_detr": {"activation": _OFF, **_PLAIN, **_SAP},
    "conditional_detr": dict(_DEFORMABLE, num_feature_levels=1, **_PLAIN, **_SAP),  # single scale
    # DN-DETR: dab_detr takes plain denoising queries (dn.*), not DINO's contrastive ones
    "dab_detr": dict({k: v for k, v in _DEFORMABLE.items() if not k.startswith("dn")}, num_feature_levels=1,
                     **{"dn.contrastive": False}, **_PLAIN, **_SAP),
    # DAB-Deformable-DETR / DN-Deformable-DETR: deformable, one-stage, plain denoising, no C-decoder
    "dab_deformable_detr": {"activation": _OFF, "two_stage": False, "mixed_selection": False,
                            "look_forward_twice": False, "dac": _OFF, "dac.enabled": False,
                            "loss.enc_class_weight": _OFF, "dn.contrastive": False, **_PLAIN, **_SAP},
    # Plain-DETR: one feature map, no encoder, two-stage global decoder, no denoising or C-decoder
    "plain_detr": {"activation": _OFF, "num_feature_levels": 1, "enc_layers": _OFF, "enc_n_points": _OFF,
                   "dec_n_points": _OFF, "deform_attn_backend": _OFF, "two_stage": _OFF, "dn": _OFF,
                   "dn.enabled": False, "dac": _OFF, "dac.enabled": False, **_SAP},
    "sap_detr": dict(_DEFORMABLE, num_feature_levels=1, **_PLAIN),  # single scale, no denoising
}


def _flat_fields(schema, prefix=""):
    """{dotted key: Field} of a schema section."""
    out = {}
    for k, v in schema.items():
        out.update({f"{prefix}{k}": v} if isinstance(v, Field) else _flat_fields(v, f"{prefix}{k}."))
    return out


_FIELDS = _flat_fields(MODEL)


def _get(m, dotted):
    for part in dotted.split("."):
        m = m[part]
    return m


def _off_values(arch) -> Dict:
    """{dotted key: its off value, or _OFF} of every schema key the arch does not have."""
    table = NOT_APPLICABLE[arch]
    out = {}
    for key in _FIELDS:
        section = key.split(".")[0]
        if key in table or section in table:
            out[key] = table.get(key, table.get(section))
    return out


def check(m) -> None:
    if m["arch"] not in NOT_APPLICABLE:
        raise ValueError(f"model.arch must be one of {list(NOT_APPLICABLE)}, got {m['arch']!r}")
    if m["num_classes"] is None or m["num_classes"] < 1:
        raise ValueError(f"model.num_classes must be a positive integer, got {m['num_classes']!r} (it is filled "
                         "from the training annotations when left unset)")
    if m["num_feature_levels"] < 1:
        raise ValueError(f"model.num_feature_levels must be >= 1, got {m['num_feature_levels']}")
    for key, off in _off_values(m["arch"]).items():
        value = _get(m, key)
        if value != _FIELDS[key].default and (off is _OFF or value != off):
            allowed = "leave it unset" + ("" if off is _OFF else f" or set it to {off}")
            raise ValueError(f"model.{key}={value!r} does not apply to model.arch={m['arch']}; {allowed}")


def effective(m) -> Dict:
    """check(m), then a copy of the model section as its arch reads it: every key the arch does not have and
    that has an off value (NOT_APPLICABLE) set to that value (e.g. dn.enabled false for conditional_detr)."""
    check(m)
    m = dict(m)
    for key, off in _off_values(m["arch"]).items():
        if off is not _OFF:
            *parents, leaf = key.split(".")
            node = m
            for part in parents:
                node[part] = dict(node[part])
                node = node[part]
            node[leaf] = off
    return m


def is_swin(m) -> bool:
    """The backbone is a Swin Transformer (swin.SwinBackbone), not a ResNet (backbone.Backbone)."""
    return m["backbone"]["name"].startswith("swin")


def backbone_args(m) -> Dict:
    """Arguments of swin.SwinBackbone when is_swin(m), else of backbone.Backbone."""
    bb = m["backbone"]
    if is_swin(m):
        for key in ("dilation", "last_stage"):
            if bb[key] != _FIELDS[f"backbone.{key}"].default:
                raise ValueError(f"model.backbone.{key} is for ResNet backbones, not {bb['name']}")
        return dict(name=bb["name"], frozen_stages=bb["frozen_stages"], num_levels=min(m["num_feature_levels"], 3),
                    drop_path_rate=bb["drop_path_rate"])
    if bb["last_stage"] == 3 and bb["dilation"]:
        raise ValueError("model.backbone.dilation dilates layer4, which model.backbone.last_stage=3 does not build; "
                         "use one of the two")
    return dict(name=bb["name"], frozen_stages=bb["frozen_stages"], dilation=bb["dilation"],
                num_levels=min(m["num_feature_levels"], bb["last_stage"] - 1), norm=bb["norm"],
                last_stage=bb["last_stage"])


def feature_stride(m) -> int:
    """Stride of the backbone's last output level: 16 for a ResNet ending at C4 (last_stage 3) or dilated, else 32."""
    bb = m["backbone"]
    return 16 if not is_swin(m) and (bb["last_stage"] == 3 or bb["dilation"]) else 32


def _plain_transformer_args(m) -> Dict:
    stride, strides = feature_stride(m), m["plain"]["proposal_strides"]
    for s in strides:
        if s <= 0 or 2 ** round(math.log2(s / stride)) * stride != s:
            raise ValueError(f"model.plain.proposal_strides: {s} is not a power-of-two multiple or divisor of the "
                             f"decoder map's stride {stride}")
    if not strides:
        raise ValueError("model.plain.proposal_strides is empty; the proposals need at least one level")
    return dict(d_model=m["hidden_dim"], nhead=m["nheads"], num_decoder_layers=m["dec_layers"],
                dim_feedforward=m["dim_feedforward"], dropout=m["dropout"], mixed_selection=m["mixed_selection"],
                look_forward_twice=m["look_forward_twice"], reparam=m["plain"]["reparam"],
                rpe_hidden_dim=m["plain"]["rpe_hidden_dim"], rpe_type=m["plain"]["rpe_type"], feature_stride=stride,
                proposal_strides=strides)


def transformer_args(m) -> Dict:
    """Arguments of the arch's transformer (deformable_transformer.DeformableTransformer for dac_detr and
    dab_deformable_detr, conditional_transformer.ConditionalTransformer, dab_transformer.DABTransformer,
    plain_transformer.PlainTransformer or sap_transformer.SAPTransformer)."""
    if m["arch"] == "plain_detr":
        return _plain_transformer_args(m)
    if m["arch"] in ("conditional_detr", "dab_detr", "sap_detr"):
        args = dict(d_model=m["hidden_dim"], nhead=m["nheads"], num_encoder_layers=m["enc_layers"],
                    num_decoder_layers=m["dec_layers"], dim_feedforward=m["dim_feedforward"], dropout=m["dropout"],
                    activation=m["activation"])
        if m["arch"] == "sap_detr":
            return dict(args, sdg=m["sap"]["sdg"], conv_init=m["sap"]["conv_init"])
        # conditional_detr codes its reference points with the pixels' temperature; dab_detr's anchor codes
        # have the release's fixed one
        return dict(args, pe_temperature=m["pe_temperature"]) if m["arch"] == "conditional_detr" else args
    return dict(d_model=m["hidden_dim"], nhead=m["nheads"], num_encoder_layers=m["enc_layers"],
                num_decoder_layers=m["dec_layers"], dim_feedforward=m["dim_feedforward"], dropout=m["dropout"],
                num_feature_levels=m["num_feature_levels"], enc_n_points=m["enc_n_points"],
                dec_n_points=m["dec_n_points"], two_stage=m["two_stage"], num_queries=m["num_queries"],
                mixed_selection=m["mixed_selection"], look_forward_twice=m["look_forward_twice"],
                backend=m["deform_attn_backend"], dab=m["arch"] == "dab_deformable_detr")


def dn_args(m):
    """None (denoising off) or the dict the detectors take as `dn` (common.denoising.prepare_dn's options)."""
    dn = m["dn"]
    keys = ("number", "label_noise_ratio", "box_noise_scale", "contrastive", "box_noise_form", "label_flip_prob")
    return {k: dn[k] for k in keys} if dn["enabled"] else None


def detr_args(m) -> Dict:
    """The arch's detector arguments after (backbone, transformer): DACDETR, ConditionalDETR, DABDETR,
    DABDeformableDETR, PlainDETR or SAPDETR."""
    if m["arch"] == "sap_detr":
        if len(m["sap"]["grid"]) != 2 or min(m["sap"]["grid"]) < 1:
            raise ValueError(f"model.sap.grid must be [columns, rows], both >= 1, got {m['sap']['grid']}")
        return dict(num_classes=m["num_classes"], num_queries=m["num_queries"], grid=tuple(m["sap"]["grid"]),
                    pe_temperature=m["pe_temperature"])
    if m["arch"] in ("conditional_detr", "dab_detr"):
        args = dict(num_classes=m["num_classes"], num_queries=m["num_queries"], pe_temperature=m["pe_temperature"])
        return dict(args, dn=dn_args(m)) if m["arch"] == "dab_detr" else args
    if m["arch"] == "dab_deformable_detr":
        return dict(num_classes=m["num_classes"], num_feature_levels=m["num_feature_levels"],
                    num_queries=m["num_queries"], dn=dn_args(m), pe_temperature=m["pe_temperature"])
    if m["arch"] == "plain_detr":
        return dict(num_classes=m["num_classes"], num_queries=m["num_queries"],
                    num_queries_one2many=m["hybrid"]["num_queries"], mixed_selection=m["mixed_selection"],
                    pe_temperature=m["pe_temperature"], pe_normalize=m["plain"]["pe_normalize"])
    return dict(num_classes=m["num_classes"], num_feature_levels=m["num_feature_levels"],
                num_queries=m["num_queries"], two_stage=m["two_stage"], mixed_selection=m["mixed_selection"],
                dn=dn_args(m), dac=m["dac"]["enabled"], pe_temperature=m["pe_temperature"])


def criterion_args(m) -> Dict:
    """SetCriterion's arguments, the numpy matcher and one-to-many assigner included."""
    loss, mc, dac, sap = m["loss"], m["matcher"], m["dac"], m["arch"] == "sap_detr"
    matcher = HungarianMatcher(mc["cost_class"], mc["cost_bbox"], mc["cost_giou"], loss["focal_alpha"],
                               loss["focal_gamma"], cost_inner=m["sap"]["cost_inner"] if sap else 0.0, l1_xyxy=sap)
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
                dac_loss_norm=dac["loss_norm"], dac_assign_boxes=dac["assign_boxes"], **_hybrid_args(m),
                **_sap_loss_args(m))


def _sap_loss_args(m) -> Dict:
    if m["arch"] != "sap_detr":
        return {}
    return dict(sap_terms=True, obj_weight=m["sap"]["obj_weight"], inner_weight=m["sap"]["inner_weight"],
                l1_xyxy=True)


def _hybrid_args(m) -> Dict:
    hybrid = m["hybrid"]
    on = m["arch"] == "plain_detr" and hybrid["num_queries"] > 0
    if on and hybrid["k"] < 1:
        raise ValueError(f"model.hybrid.k must be >= 1 with one-to-many queries (got {hybrid['k']}); set "
                         "model.hybrid.num_queries: 0 to train without them")
    return dict(hybrid_k=hybrid["k"] if on else 0, hybrid_weight=hybrid["weight"])


def postprocess_args(m) -> Dict:
    pp = m["postprocess"]
    return dict(num_select=pp["num_select"], nms_iou=pp["nms_iou"], pre_nms_topk=pp["pre_nms_topk"])
