"""collate, DataLoader (order, per-sample rngs, sharding, resuming, workers) and the builders."""
import contextlib
import json
import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
from PIL import Image

from common.data.build import build_dataset, build_loader
from common.data.collate import collate
from common.data.loader import DataLoader


@contextlib.contextmanager
def deadline(seconds):
    """Fail instead of hanging forever."""
    def on_alarm(signum, frame):
        raise TimeoutError(f"no result within {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class Draws:
    """load(i, rng) -> (image float32 [3, 2 + i % 3, 4 + i % 2] of rng draws, {"index": i}); can fail,
    kill its process or be slow at chosen indices. Records the indices it loads (in-process only)."""

    def __init__(self, n, fail_at=None, crash_at=None, slow_at=None):
        self.n, self.fail_at, self.crash_at, self.slow_at, self.calls = n, fail_at, crash_at, slow_at, []

    def __len__(self):
        return self.n

    def load(self, index, rng):
        self.calls.append(index)
        if index == self.fail_at:
            raise ValueError(f"sample {index} is broken: /data/img_{index}.png")
        if index == self.crash_at:
            os._exit(3)
        if index == self.slow_at:
            time.sleep(0.5)
        return rng.random((3, 2 + index % 3, 4 + index % 2), dtype=np.float32), {"index": index}


def flat_indices(loader):
    return [t["index"] for batch in loader for t in batch["targets"]]


def test_collate_pads_bottom_right_and_masks_padding():
    a = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    b = -np.ones((3, 6, 3), dtype=np.float32)
    batch = collate([(a, {"k": 1}), (b, {"k": 2})])
    assert batch["images"].shape == (2, 3, 6, 5) and batch["images"].dtype == np.float32
    np.testing.assert_array_equal(batch["images"][0, :, :4, :5], a)
    np.testing.assert_array_equal(batch["images"][1, :, :6, :3], b)
    assert batch["images"][0, :, 4:].sum() == 0 and batch["images"][1, :, :, 3:].sum() == 0
    expected = np.ones((2, 6, 5), dtype=bool)
    expected[0, :4, :5] = False
    expected[1, :6, :3] = False
    np.testing.assert_array_equal(batch["masks"], expected)
    assert [t["k"] for t in batch["targets"]] == [1, 2]
    padded = collate([(a, {}), (b, {})], size_divisibility=4)
    assert padded["images"].shape == (2, 3, 8, 8) and padded["masks"].shape == (2, 8, 8)
    assert padded["masks"][0].sum() == 64 - 20 and padded["masks"][1].sum() == 64 - 18
    with pytest.raises(TypeError, match="Normalize"):
        collate([(Image.new("RGB", (4, 4)), {})])


def test_order_and_per_sample_rngs():
    loader = DataLoader(Draws(11), batch_size=4, seed=3)
    loader.set_epoch(2)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    order = np.random.default_rng([3, 2]).permutation(11)
    assert flat_indices(batches) == order.tolist()
    for batch in batches:
        for k, target in enumerate(batch["targets"]):
            i = target["index"]
            expected = np.random.default_rng([3, 2, i]).random((3, 2 + i % 3, 4 + i % 2), dtype=np.float32)
            np.testing.assert_array_equal(batch["images"][k, :, :2 + i % 3, :4 + i % 2], expected)
    assert flat_indices(DataLoader(Draws(5), batch_size=2, shuffle=False)) == [0, 1, 2, 3, 4]


def test_workers_yield_batches_in_order():
    # batch 0 finishes last, so it arrives after later batches and must be held back
    loader = DataLoader(Draws(8, slow_at=0), batch_size=1, shuffle=False, num_workers=2)
    with deadline(60):
        assert flat_indices(loader) == list(range(8))


def test_start_batch_skips_batches_without_loading_them():
    dataset = Draws(10)
    loader = DataLoader(dataset, batch_size=3, seed=1)
    loader.set_epoch(4)
    full = flat_indices(loader)
    dataset.calls.clear()
    loader.set_epoch(4, start_batch=2)
    rest = list(loader)
    assert len(rest) == 2 and len(loader) == 4
    assert flat_indices(rest) == full[6:] and dataset.calls == full[6:]


@pytest.mark.parametrize("n,world_size,batch_size,drop_last", [(10, 3, 2, False), (10, 3, 3, True),
                                                                (7, 4, 1, False), (2, 3, 1, False)])
def test_distributed_shards_cover_every_index(n, world_size, batch_size, drop_last):
    per_rank = -(-n // world_size)
    shards = []
    for rank in range(world_size):
        loader = DataLoader(Draws(n), batch_size, seed=5, drop_last=drop_last, rank=rank, world_size=world_size)
        loader.set_epoch(1)
        batches = list(loader)
        assert len(batches) == len(loader)
        assert len(loader) == (per_rank // batch_size if drop_last else -(-per_rank // batch_size))
        shards.append(loader.indices().tolist())
        assert flat_indices(batches) == shards[-1][:len(batches) * batch_size]
    order = np.random.default_rng([5, 1]).permutation(n)
    padded = np.resize(order, per_rank * world_size)  # padding repeats the start of the permutation
    assert [padded[rank::world_size].tolist() for rank in range(world_size)] == shards
    assert sorted(sum(shards, [])) == sorted(order.tolist() + padded[n:].tolist())
    assert set(sum(shards, [])) == set(range(n))


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def data_cfg(tmp_path, num_workers, n_images=7):
    """A small COCO dataset with coloured rectangles on disk and the `data` config section for it."""
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir(exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, n_images + 1):
        width, height = int(rng.integers(60, 120)), int(rng.integers(60, 120))
        pixels = np.zeros((height, width, 3), dtype=np.uint8)
        for k, color in enumerate(COLORS):
            x, y = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
            pixels[y:y + 15, x:x + 18] = color
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": k + 1,
                                "bbox": [x, y, 18, 15], "area": 270, "iscrowd": 0})
        Image.fromarray(pixels).save(tmp_path / "img" / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": width, "height": height})
    categories = [{"id": k + 1, "name": f"c{k}"} for k in range(len(COLORS))]
    (tmp_path / "ann.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                   "categories": categories}))
    split = {"img_dir": str(tmp_path / "img"), "ann_file": str(tmp_path / "ann.json")}
    return {"num_workers": num_workers, "invalid": "strict", "size_divisibility": 8,
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
            "train": dict(split, hflip_prob=0.5, scales=[48, 64, 80], max_size=128, crop_prob=0.5,
                          crop_scales=[60, 70], crop_size=[40, 60]),
            "val": dict(split, size=64, max_size=128)}


def epoch_batches(cfg, epoch, seed=0):
    dataset = build_dataset(cfg, "train", train=True)
    loader = build_loader(cfg, dataset, batch_size=2, train=True, seed=seed)
    loader.set_epoch(epoch)
    with deadline(120):
        return list(loader)


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["images"], y["images"])
        np.testing.assert_array_equal(x["masks"], y["masks"])
        for tx, ty in zip(x["targets"], y["targets"], strict=True):
            assert tx.keys() == ty.keys()
            for key in tx:
                np.testing.assert_array_equal(tx[key], ty[key])


def test_batches_identical_for_any_num_workers_and_across_runs(tmp_path):
    in_process = epoch_batches(data_cfg(tmp_path, 0), epoch=0)
    assert len(in_process) == 3  # 7 images, batch 2, drop_last for training
    assert all(b["images"].shape[2] % 8 == 0 and b["images"].shape[3] % 8 == 0 for b in in_process)
    assert_same_batches(in_process, epoch_batches(data_cfg(tmp_path, 2), epoch=0))
    assert_same_batches(in_process, epoch_batches(data_cfg(tmp_path, 2), epoch=0))
    other_epoch = epoch_batches(data_cfg(tmp_path, 2), epoch=1)
    assert [t["image_id"] for b in other_epoch for t in b["targets"]] != \
           [t["image_id"] for b in in_process for t in b["targets"]]
    assert_same_batches(other_epoch, epoch_batches(data_cfg(tmp_path, 0), epoch=1))
    assert not multiprocessing.active_children()


def test_build_loader_settings(tmp_path):
    cfg = data_cfg(tmp_path, 0)
    val = build_dataset(cfg, "val", train=False)
    loader = build_loader(cfg, val, batch_size=3, train=False, seed=0, rank=1, world_size=2)
    assert not loader.shuffle and not loader.drop_last and loader.size_divisibility == 8
    assert loader.indices().tolist() == [1, 3, 5, 0]  # no shuffle; 7 padded to 8 with index 0
    batch = next(iter(loader))
    assert min(batch["targets"][0]["size"]) == 64 and len(loader) == 2
    train = build_loader(cfg, val, batch_size=3, train=True, seed=0)
    assert train.shuffle and train.drop_last and train.num_workers == 0
    with pytest.raises(ValueError, match="split"):
        build_dataset(cfg, "test", train=False)
    del cfg["invalid"]
    with pytest.raises(KeyError, match=r"data\.invalid"):
        build_dataset(cfg, "val", train=False)


def test_worker_error_propagates_with_its_message(tmp_path):
    cfg = data_cfg(tmp_path, 2)
    (tmp_path / "img" / "4.png").unlink()
    dataset = build_dataset(cfg, "val", train=False)
    loader = build_loader(cfg, dataset, batch_size=1, train=False, seed=0)
    with deadline(60), pytest.raises(FileNotFoundError, match=r"image file not found: .*img/4\.png"):
        list(loader)
    assert not multiprocessing.active_children()
    loader = DataLoader(Draws(9, fail_at=6), batch_size=2, num_workers=2)
    with deadline(60), pytest.raises(ValueError, match=r"sample 6 is broken: /data/img_6\.png") as error:
        list(loader)
    cause = str(error.value.__cause__)
    assert cause.startswith("raised in a data loader worker") and "in load" in cause  # the worker's traceback
    assert not multiprocessing.active_children()


def test_dead_worker_raises_instead_of_hanging():
    loader = DataLoader(Draws(6, crash_at=3), batch_size=1, shuffle=False, num_workers=2)
    with deadline(60), pytest.raises(RuntimeError, match="exited unexpectedly with code 3"):
        list(loader)
    assert not multiprocessing.active_children()


def test_stopping_early_stops_the_workers():
    loader = DataLoader(Draws(40), batch_size=2, num_workers=2)
    with deadline(60):
        for number, batch in enumerate(loader):
            if number == 1:
                break
        assert not multiprocessing.active_children()
        iterator = iter(loader)
        next(iterator)
        iterator.close()
        assert not multiprocessing.active_children()
        # kept alive by a lingering reference (as a progress bar may do): close(), or the next pass, stops it
        held = iter(loader)
        next(held)
        assert len(multiprocessing.active_children()) == 2
        loader.close()
        assert not multiprocessing.active_children()
        held = iter(loader)
        next(held)
        assert len(multiprocessing.active_children()) == 2
        assert len(list(loader)) == len(loader) and not multiprocessing.active_children()
        with pytest.raises(StopIteration):
            next(held)


def test_workers_stop_even_if_the_trainer_handles_sigterm():
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # e.g. a "checkpoint and go on" hook
    try:
        loader = DataLoader(Draws(40, slow_at=5), batch_size=1, shuffle=False, num_workers=2)
        with deadline(60):
            for number, _ in enumerate(loader):
                if number == 3:  # a worker is now inside the slow sample 5
                    workers = multiprocessing.active_children()
                    break
        assert len(workers) == 2 and not multiprocessing.active_children()
        # stopped by SIGTERM (the handler was reset in the worker), not by the SIGKILL that follows a 5 s wait
        assert sorted(w.exitcode for w in workers) == [-signal.SIGTERM] * 2
    finally:
        signal.signal(signal.SIGTERM, previous)
