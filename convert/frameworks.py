"""Converting live models: torch module <-> Paddle layer state dicts through the rule in convert/rules.py."""
from typing import Dict, Set

import numpy as np

from convert.rules import paddle_to_torch, torch_to_paddle


def paddle_linear_weights(layer) -> Set[str]:
    """Names (in layer.state_dict()) of the weights of every paddle.nn.Linear inside `layer`."""
    import paddle

    return {f"{name}.weight" if name else "weight" for name, sub in layer.named_sublayers(include_self=True)
            if isinstance(sub, paddle.nn.Linear)}


def paddle_state_numpy(layer) -> Dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in layer.state_dict().items()}


def torch_state_numpy(module) -> Dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def torch_module_to_paddle(module, layer) -> None:
    """Copies a torch module's weights and buffers into the mirror Paddle layer (strict)."""
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    arrays = torch_to_paddle(torch_state_numpy(module), shapes, paddle_linear_weights(layer))
    _set_paddle_state(layer, arrays)


def paddle_layer_to_torch(layer, module) -> None:
    """Copies a Paddle layer's weights and buffers into the mirror torch module (strict)."""
    import torch

    shapes = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    arrays = paddle_to_torch(paddle_state_numpy(layer), shapes, paddle_linear_weights(layer))
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in arrays.items()}, strict=True)


def _set_paddle_state(layer, arrays: Dict[str, np.ndarray]) -> None:
    state = layer.state_dict()
    for name, value in arrays.items():
        target = state[name]
        target.set_value(np.asarray(value).astype(target.numpy().dtype, copy=False))
