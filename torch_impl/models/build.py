"""build_model(cfg) -> (model, criterion, postprocessor) from the config's `model` section.

The four variants are switches of one model (common/config/model_schema.py lists them): deformable_detr is the
release's baseline (two-stage, box refinement, mixed selection, look-forward-twice; no denoising, no C-decoder,
focal loss), dino adds contrastive denoising, dac_cdn the C-decoder, dac_cdn_ice the IoU-aware loss (the release).
`model.arch` picks the detector and its transformer (ARCHS); conditional_detr is Conditional DETR, dab_detr
DAB-DETR, dab_deformable_detr DAB-Deformable-DETR, plain_detr Plain-DETR, sap_detr SAP-DETR. The criterion, matcher,
post-processing and backbones are shared by every arch. The config -> argument mapping is common/model_args.py,
shared with the Paddle tree.
"""
from common import model_args as A

from .backbone import Backbone, load_pretrained
from .conditional_detr import ConditionalDETR
from .conditional_transformer import ConditionalTransformer
from .criterion import SetCriterion
from .dab_deformable_detr import DABDeformableDETR
from .dab_detr import DABDETR
from .dab_transformer import DABTransformer
from .dac_detr import DACDETR
from .deformable_transformer import DeformableTransformer
from .plain_detr import PlainDETR
from .plain_transformer import PlainTransformer
from .postprocess import PostProcess
from .sap_detr import SAPDETR
from .sap_transformer import SAPTransformer
from .swin import SwinBackbone, load_pretrained as load_swin_pretrained
from .utils import targets_to_tensors  # noqa: F401  (re-exported for the engine)

ARCHS = {"dac_detr": (DACDETR, DeformableTransformer), "conditional_detr": (ConditionalDETR, ConditionalTransformer),
         "dab_detr": (DABDETR, DABTransformer),
         "dab_deformable_detr": (DABDeformableDETR, DeformableTransformer),
         "plain_detr": (PlainDETR, PlainTransformer), "sap_detr": (SAPDETR, SAPTransformer)}


def build_model(cfg):
    """cfg: the resolved config (uses cfg["model"], all keys present) -> (detector of model.arch, SetCriterion,
    PostProcess)."""
    m = A.effective(cfg["model"])
    backbone_class, load = (SwinBackbone, load_swin_pretrained) if A.is_swin(m) else (Backbone, load_pretrained)
    backbone = backbone_class(**A.backbone_args(m))
    if m["backbone"]["pretrained"]:
        load(backbone.body, m["backbone"]["pretrained"])
    detector, transformer = ARCHS[m["arch"]]
    model = detector(backbone, transformer(**A.transformer_args(m)), **A.detr_args(m))
    return model, SetCriterion(**A.criterion_args(m)), PostProcess(**A.postprocess_args(m))
