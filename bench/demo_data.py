"""The data the benchmarks run on: a small demo dataset (common/data/demo.py) written to a folder of their own.

Its images are the demo's (image i of a split draws only from its own seed): the first `num_train` training images
and the first `num_val` validation images of data/demo, so the 200-image default is the demo's validation set.
"""
from common.data.demo import generate


def make(folder, num_train=64, num_val=200):
    """Writes the dataset into `folder`; returns the -o overrides that point a demo config at it."""
    generate(folder, num_train=num_train, num_val=num_val, progress=False)
    return ["data.demo_dir=null", f"data.train.img_dir={folder}/train",
            f"data.train.ann_file={folder}/instances_train.json", f"data.val.img_dir={folder}/val",
            f"data.val.ann_file={folder}/instances_val.json"]
