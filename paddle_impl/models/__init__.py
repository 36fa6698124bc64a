"""DAC-DETR family in PaddlePaddle: build_model(cfg) -> (model, criterion, postprocessor); see dac_detr.py for the
model's inputs and output dict, criterion.py for the loss terms."""
from .build import build_model
from .utils import targets_to_tensors

__all__ = ["build_model", "targets_to_tensors"]
