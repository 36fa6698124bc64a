"""Dataset and loader construction from the config's `data` section (a plain dict)."""
from .coco import CocoDetection
from .loader import DataLoader
from .subset import Subset
from .transforms import build_transforms, config_value

SPLITS = ("train", "val")


def build_dataset(data_cfg, split, train):
    """CocoDetection of data_cfg[split] (img_dir, ann_file) with that split's transforms;
    train=True selects training augmentation and drops crowd boxes."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    section = config_value(data_cfg, split, "data")
    return CocoDetection(config_value(section, "img_dir", f"data.{split}"),
                         config_value(section, "ann_file", f"data.{split}"),
                         transforms=build_transforms(data_cfg, split, train), train=train,
                         invalid=config_value(data_cfg, "invalid", "data"))


def build_loader(data_cfg, dataset, batch_size, train, seed, rank=0, world_size=1):
    """DataLoader over `dataset`; shuffling and dropping the last partial batch only when training."""
    return DataLoader(dataset, batch_size, shuffle=train, seed=seed,
                      num_workers=config_value(data_cfg, "num_workers", "data"), drop_last=train,
                      rank=rank, world_size=world_size,
                      size_divisibility=config_value(data_cfg, "size_divisibility", "data"))


def build_train_loader(cfg, rank=0, world_size=1):
    """(dataset, loader) of the training split, from the whole resolved config."""
    dataset = build_dataset(cfg.data, "train", train=True)
    return dataset, build_loader(cfg.data, dataset, cfg.train.batch_size, train=True, seed=cfg.train.seed,
                                 rank=rank, world_size=world_size)


def build_val_loader(cfg, rank=0, world_size=1):
    """(dataset, loader) of the validation split, cut to `eval.max_images`, from the whole resolved config."""
    dataset = Subset(build_dataset(cfg.data, "val", train=False), cfg.eval.max_images)
    return dataset, build_loader(cfg.data, dataset, cfg.eval.batch_size, train=False, seed=cfg.train.seed,
                                 rank=rank, world_size=world_size)
