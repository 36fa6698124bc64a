"""Small helpers shared by the model files: inverse sigmoid, numpy targets -> tensors, seeded numpy RNG."""
import numpy as np
import paddle

from common.data.targets import numpy_targets


def inverse_sigmoid(x, eps=1e-5):
    """logit(x) with x clamped to [eps, 1 - eps] so saturated boxes stay finite. x [...] -> [...]."""
    x = x.clip(min=0, max=1)
    return paddle.log(x.clip(min=eps) / (1 - x).clip(min=eps))


def _to_numpy(x):
    """A tensor (any device) or array-like -> numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, paddle.Tensor) else x


def targets_to_numpy(targets):
    """Target dicts holding numpy arrays or tensors -> B dicts {"labels" int64 [n], "boxes" float32 [n, 4]}
    as numpy (what the matchers and the denoising queries read); see common.data.targets."""
    return numpy_targets(targets, _to_numpy)


def targets_to_tensors(targets, place=None):
    """The loader's targets (numpy, or tensors) -> B dicts {"labels" int64 [n], "boxes" float32 [n, 4]} of tensors
    on `place` (default: the current device; boxes cxcywh normalized; other keys are dropped)."""
    return [{k: paddle.to_tensor(v, place=place) for k, v in t.items()} for t in targets_to_numpy(targets)]


def numpy_rng():
    """A numpy Generator seeded from Paddle's global RNG, so paddle.seed also fixes numpy-side noise."""
    return np.random.default_rng(paddle.randint(0, 2 ** 31 - 1, [2], dtype="int64").numpy().tolist())
