"""PyTorch model tree: DAC-DETR and its relatives (models/), training and evaluation on top of common/."""
