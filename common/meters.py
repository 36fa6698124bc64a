"""Running averages of training numbers (plain floats), for log lines and metrics.jsonl."""
import re
from collections import defaultdict, deque
from typing import Dict, List


class Meters:
    """Keeps, per name, a window of recent values and the running mean since the last `reset()`."""

    def __init__(self, window: int = 20):
        self.window = window
        self.recent = defaultdict(lambda: deque(maxlen=self.window))
        self.total: Dict[str, float] = defaultdict(float)
        self.count: Dict[str, int] = defaultdict(int)

    def update(self, **values: float) -> None:
        for k, v in values.items():
            v = float(v)
            self.recent[k].append(v)
            self.total[k] += v
            self.count[k] += 1

    def smoothed(self) -> Dict[str, float]:
        """Mean over the recent window of every name."""
        return {k: sum(q) / len(q) for k, q in self.recent.items() if q}

    def averages(self) -> Dict[str, float]:
        """Mean since the last reset of every name."""
        return {k: self.total[k] / self.count[k] for k in self.total if self.count[k]}

    def reset(self) -> None:
        self.total.clear()
        self.count.clear()

    def format(self, keys=None) -> str:
        s = self.smoothed()
        keys = keys if keys is not None else sorted(s)
        return "  ".join(f"{k} {s[k]:.4f}" for k in keys if k in s)


def log_keys(values: Dict[str, float]) -> List[str]:
    """The total and the last-layer terms (`loss_ce`, `loss_bbox_dn`...) of a loss dict; the per-layer terms
    (`loss_ce_0`...) are left to metrics.jsonl."""
    return ["loss"] + sorted(k for k in values if k != "loss" and not re.search(r"_\d+$", k))
