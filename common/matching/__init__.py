"""Prediction-to-ground-truth matching: one-to-one (Hungarian) and DAC-DETR one-to-many."""
from .hungarian import HungarianMatcher
from .one_to_many import OneToManyAssigner

__all__ = ["HungarianMatcher", "OneToManyAssigner"]
