"""The first N images of a dataset (for `eval.max_images`), loadable like the dataset itself."""


class Subset:
    """Images `0 .. n-1` of `dataset`; exposes what the loader and the evaluator use."""

    def __init__(self, dataset, n: int):
        self.dataset = dataset
        self.n = len(dataset) if n <= 0 else min(n, len(dataset))
        self.image_ids = dataset.image_ids[: self.n]
        self.category_map = dataset.category_map
        self.coco_gt = dataset.coco_gt
        self.skipped = dataset.skipped

    def __len__(self):
        return self.n

    def load(self, index, rng):
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a subset of {self.n} images")
        return self.dataset.load(index, rng)

    def __getitem__(self, index):
        index = index + self.n if index < 0 else index
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} out of range for a subset of {self.n} images")
        return self.dataset[index]
