"""Every config key the project understands, with its type, default and meaning.

A config file may only set keys listed here (a typo is an error, not a silently ignored setting). The
`model` section lives in model_schema.py beside this file.
"""
from common.config.fields import Field as F
from common.config.model_schema import MODEL

_TRAIN_SCALES = [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]

SCHEMA = {
    "output_dir": F(str, None, "where logs, checkpoints, eval.json and the resolved config go "
                               "(default: output/<framework>/<config file name>)"),
    "device": F(str, "auto", "cpu, gpu / cuda, or auto (a GPU when the framework sees one)",
                choices=["auto", "cpu", "gpu", "cuda"]),
    "data": {
        "demo_dir": F(str, None, "when set, the demo dataset is generated here on first use"),
        "num_workers": F(int, 2, "data loading worker processes (0: load in the main process)", bounds="[0, inf)"),
        "invalid": F(str, "strict", "bad annotation records and unusable images: strict (stop, naming the record "
                                    "or file) or skip (leave out and count; an image is replaced by the next one)",
                     choices=["strict", "skip"]),
        "size_divisibility": F(int, 0, "pad batches to a multiple of this (0: no rounding)", bounds="[0, inf)"),
        "mean": F(list, [0.485, 0.456, 0.406], "per-channel normalization mean (RGB, 0..1 scale)", items=float),
        "std": F(list, [0.229, 0.224, 0.225], "per-channel normalization std", items=float, bounds="(0, inf)"),
        "train": {
            "img_dir": F(str, None, "COCO training images folder"),
            "ann_file": F(str, None, "COCO training annotation json"),
            "hflip_prob": F(float, 0.5, "probability of a horizontal flip", bounds="[0, 1]"),
            "scales": F(list, _TRAIN_SCALES, "short-side sizes for multi-scale resize", items=int, bounds="[1, inf)"),
            "max_size": F(int, 1333, "cap on the long side after resize", nullable=True, bounds="[1, inf)"),
            "crop_prob": F(float, 0.5, "probability of the resize-crop-resize branch", bounds="[0, 1]"),
            "crop_scales": F(list, [400, 500, 600], "short sides before the random crop", items=int, bounds="[1, inf)"),
            "crop_size": F(list, [384, 600], "min and max side of the random crop", items=int, bounds="[1, inf)"),
        },
        "val": {
            "img_dir": F(str, None, "COCO validation images folder"),
            "ann_file": F(str, None, "COCO validation annotation json"),
            "size": F(int, 800, "short side at evaluation", bounds="[1, inf)"),
            "max_size": F(int, 1333, "cap on the long side at evaluation", nullable=True, bounds="[1, inf)"),
        },
    },
    "train": {
        "epochs": F(int, 12, "training epochs", bounds="[1, inf)"),
        "batch_size": F(int, 2, "images per batch per process", bounds="[1, inf)"),
        "lr": F(float, 2e-4, "AdamW learning rate", bounds="[0, inf)"),
        "lr_backbone": F(float, 2e-5, "learning rate of the backbone (0 freezes it)", bounds="[0, inf)"),
        "lr_linear_proj_mult": F(float, 0.1, "lr multiplier of sampling offsets and reference points",
                                 bounds="[0, inf)"),
        "weight_decay": F(float, 1e-4, "AdamW weight decay", bounds="[0, inf)"),
        "clip_max_norm": F(float, 0.1, "gradient clipping max norm (0: off)", bounds="[0, inf)"),
        "lr_drop": F(list, [11], "epochs at which the lr is multiplied by lr_gamma", items=int, bounds="[0, inf)"),
        "lr_gamma": F(float, 0.1, "lr step factor", bounds="(0, inf)"),
        "seed": F(int, 42, "random seed (model init, data order, augmentation, denoising noise)"),
        "max_iters": F(int, 0, "stop after this many iterations in total (0: no limit)", bounds="[0, inf)"),
        "amp": F(bool, False, "mixed precision (GPU only)"),
        "log_interval": F(int, 20, "iterations between log lines", bounds="[1, inf)"),
        "eval_interval": F(int, 1, "epochs between evaluations (0: only at the end)", bounds="[0, inf)"),
        "checkpoint_interval": F(int, 1, "epochs between checkpoints", bounds="[1, inf)"),
        "max_nonfinite_in_a_row": F(int, 20, "stop (saving the last good state) after this many consecutive "
                                            "steps with a non-finite loss, each skipped (0: never stop)",
                                    bounds="[0, inf)"),
    },
    "eval": {
        "batch_size": F(int, 2, "images per batch at evaluation", bounds="[1, inf)"),
        "max_images": F(int, 0, "evaluate on at most this many images (0: all)", bounds="[0, inf)"),
        "max_dets": F(list, [1, 10, 100], "COCO maxDets (dense scenes need more than 100)", items=int,
                      bounds="[1, inf)"),
        "backend": F(str, "faster", "faster (faster-coco-eval) or pycocotools",
                     choices=["faster", "pycocotools"]),
        "per_class": F(bool, False, "also print per-class AP"),
    },
    "model": MODEL,
}
