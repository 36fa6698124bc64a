"""Small helpers shared by the model files: inverse sigmoid, numpy targets -> tensors, seeded numpy RNG."""
import numpy as np
import torch

from common.data.targets import numpy_targets


def inverse_sigmoid(x, eps=1e-5):
    """logit(x) with x clamped to [eps, 1 - eps] so saturated boxes stay finite. x [...] -> [...]."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def _to_numpy(x):
    """A tensor (any device) or array-like -> numpy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x


def targets_to_numpy(targets):
    """Target dicts holding numpy arrays or tensors -> B dicts {"labels" int64 [n], "boxes" float32 [n, 4]}
    as numpy (what the matchers and the denoising queries read); see common.data.targets."""
    return numpy_targets(targets, _to_numpy)


def targets_to_tensors(targets, device):
    """The loader's targets (numpy, or tensors) -> B dicts {"labels" int64 [n], "boxes" float32 [n, 4]} of tensors
    on `device` (boxes cxcywh normalized; other keys are dropped)."""
    return [{k: torch.from_numpy(v).to(device) for k, v in t.items()} for t in targets_to_numpy(targets)]


def numpy_rng():
    """A numpy Generator seeded from torch's global RNG, so torch.manual_seed also fixes numpy-side noise."""
    return np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,)).item()))
