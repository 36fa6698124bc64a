"""Small numpy helpers of the loss code shared by both trees: ranks within groups, de-duplication."""
import numpy as np


def rank_in_groups(groups, scores):
    """Rank of each score within its group, best (largest) first, ties by position.
    groups int [P], scores float [P] -> int64 [P]."""
    if len(groups) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-scores, groups))  # by group, then score descending; lexsort is stable
    sorted_groups = groups[order]
    first = np.r_[0, np.flatnonzero(sorted_groups[1:] != sorted_groups[:-1]) + 1]
    starts = np.repeat(first, np.diff(np.r_[first, len(order)]))
    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order)) - starts
    return ranks


def keep_best_duplicates(keys, scores):
    """Index of the best-scoring row of each distinct key. keys int [P, K], scores [P] -> int64 [U]."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort((-scores,) + tuple(keys[:, i] for i in range(keys.shape[1] - 1, -1, -1)))
    sorted_keys = keys[order]
    first = np.r_[True, (sorted_keys[1:] != sorted_keys[:-1]).any(1)]
    return order[first]
