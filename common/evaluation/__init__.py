"""COCO bbox evaluation (coco_eval.py) and the results json the model trees write (results.py)."""
from .coco_eval import BACKENDS, evaluate_coco, format_per_class, format_table
from .results import save_results, to_coco_results

__all__ = ["BACKENDS", "evaluate_coco", "format_per_class", "format_table", "save_results", "to_coco_results"]
