"""COCO data pipeline: dataset (coco.py), transforms, collate, multi-process loader, builders (numpy/PIL only)."""
