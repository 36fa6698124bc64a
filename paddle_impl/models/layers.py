"""Paddle layers that behave like their torch twins where Paddle's own differ (docs/paddle_vs_torch.md).

The model files use these instead of the paddle.nn originals; parameter names and layouts are paddle.nn's, so the
conversion rule (convert/rules.py) is unaffected.

- Linear: torch's default init; oneDNN's GEMM on CPU (Paddle 3.2's uses one core, ~2x slower than torch's on two),
  elsewhere in training a bias gradient as a matrix product (Paddle's broadcast-add backward is slow on CPU).
- embedding: torch's default init N(0, 1).
- BatchNorm2D: torch's running-variance rule (unbiased batch variance).
- Conv2D: oneDNN on CPU, as torch (Paddle 3.2's dynamic graph convolves on CPU with im2col + GEMM, ~2x slower).
- GroupNorm: a correct weight gradient (Paddle 3.2's CPU kernel returns 0 for a weight that is 0), and ~8x faster.

Conv2D, Linear and GroupNorm use the custom C++ ops of ops/paddle_cpu_layers.py on CPU tensors in dynamic mode; on
GPU, for static graphs / export, and when the ops cannot be built (one warning) they use Paddle's own kernels.
"""
import math

import paddle
import paddle.nn.functional as F
from paddle import nn

from ops import paddle_cpu_layers


def _use_cpu_op(x, dtypes):
    """True when x (and so the layer) can go through ops/paddle_cpu_layers.py: dynamic mode, CPU, one of dtypes."""
    return (paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype in dtypes
            and paddle_cpu_layers.available())


class _LinearFunction(paddle.autograd.PyLayer):
    """x @ w + b whose bias gradient is a matrix product with a row of ones. Paddle 3.2's CPU backward of a
    broadcast add reduces [N, out] -> [out] about 20x slower than torch (7 ms vs 0.3 ms at N = 2058, out = 512),
    which made the bias the larger half of a Linear's training cost."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.needs = (not x.stop_gradient, not weight.stop_gradient)
        return paddle.matmul(x, weight) + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensor()
        grad_2d = grad.reshape([-1, grad.shape[-1]])
        grad_x = paddle.matmul(grad, weight, transpose_y=True) if ctx.needs[0] else None
        grad_w = paddle.matmul(x.reshape([-1, x.shape[-1]]), grad_2d, transpose_x=True) if ctx.needs[1] else None
        grad_b = paddle.matmul(paddle.ones([1, grad_2d.shape[0]], grad.dtype), grad_2d).reshape([-1])
        return grad_x, grad_w, grad_b


class Linear(nn.Linear):
    """paddle.nn.Linear (weight [in, out]) with torch.nn.Linear's default init, weight and bias
    U(-1/sqrt(in), 1/sqrt(in)). x [..., in] -> [..., out].

    float32 CPU tensors in dynamic mode with outputs of at least OP_MIN_OUTPUT elements go through oneDNN
    (ops/paddle_cpu_layers.py); otherwise, in training with a trainable bias, the gradient goes through
    _LinearFunction."""

    # Below this the custom op's fixed cost (~0.2 ms forward + backward) outweighs its faster products: measured
    # on 2 cores, op vs Paddle, [2200, 128] -> 6 0.90 vs 0.72 ms, [480, 128] -> 128 0.73 vs 0.72 ms,
    # [240, 128] -> 512 1.08 vs 1.50 ms.
    OP_MIN_OUTPUT = 1 << 16

    def __init__(self, in_features, out_features):
        bound = 1.0 / math.sqrt(in_features)
        init = nn.initializer.Uniform(-bound, bound)
        super().__init__(in_features, out_features, weight_attr=paddle.ParamAttr(initializer=init),
                         bias_attr=paddle.ParamAttr(initializer=init))

    def forward(self, x):
        if (self.weight.dtype == x.dtype and math.prod(x.shape[:-1]) * self.weight.shape[1] >= self.OP_MIN_OUTPUT
                and _use_cpu_op(x, (paddle.float32,))):
            return paddle_cpu_layers.linear(x, self.weight, self.bias)
        if self.training and not self.bias.stop_gradient and paddle.in_dynamic_mode():
            return _LinearFunction.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def embedding(num, dim):
    """paddle.nn.Embedding with torch's default init, N(0, 1) (Paddle's default is Xavier)."""
    return nn.Embedding(num, dim, weight_attr=paddle.ParamAttr(initializer=nn.initializer.Normal(0.0, 1.0)))


class PReLU(nn.Layer):
    """torch.nn.PReLU(): x [...] -> max(0, x) + weight * min(0, x) with one learned slope, parameter `weight` [1]
    initialized to 0.25 (paddle.nn.PReLU names it `_weight`, which would break the conversion rule)."""

    def __init__(self, init=0.25):
        super().__init__()
        self.weight = self.create_parameter([1], default_initializer=nn.initializer.Constant(init))

    def forward(self, x):
        return F.prelu(x, self.weight)


class BatchNorm2D(nn.BatchNorm2D):
    """paddle.nn.BatchNorm2D that tracks statistics as torch.nn.BatchNorm2d does. x [B, C, H, W] -> same.

    Paddle's kernel folds the *biased* batch variance into `_variance`; torch folds the unbiased one
    (n / (n - 1) larger, n = B * H * W), which is what "bn" checkpoints and parity with torch_impl assume.
    Training mode therefore lets the fused kernel normalize (its output and gradients already equal torch's) and
    updates the running statistics here. momentum 0.9 (Paddle's convention) is torch's momentum 0.1.
    """

    def __init__(self, num_features, momentum=0.9, epsilon=1e-5):
        super().__init__(num_features, momentum=momentum, epsilon=epsilon)

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        n = x.shape[0] * x.shape[2] * x.shape[3]
        if n < 2:
            raise ValueError(f"BatchNorm2D: expected more than 1 value per channel when training, got input "
                             f"shape {x.shape}")
        # With momentum 0 the kernel writes the plain batch statistics into these scratch tensors.
        batch_mean, batch_var = paddle.zeros_like(self._mean), paddle.zeros_like(self._variance)
        y = F.batch_norm(x, batch_mean, batch_var, self.weight, self.bias, training=True, momentum=0.0,
                         epsilon=self._epsilon, data_format=self._data_format)
        with paddle.no_grad():
            m = self._momentum
            paddle.assign(m * self._mean + (1 - m) * batch_mean, output=self._mean)
            paddle.assign(m * self._variance + (1 - m) * (n / (n - 1)) * batch_var, output=self._variance)
        return y


class Conv2D(nn.Conv2D):
    """paddle.nn.Conv2D (same arguments, weight [out, in, kh, kw], bias [out]) that convolves with oneDNN on CPU.
    x [B, in, H, W] -> [B, out, H', W'].

    The op covers float32, NCHW, groups 1, zero padding (any stride, padding, dilation); other configurations,
    GPU tensors and static graphs take paddle.nn.Conv2D's path.
    """

    def forward(self, x):
        if (self._groups == 1 and self._padding_mode == "zeros" and self._data_format == "NCHW"
                and self._padding_algorithm == "EXPLICIT" and self.weight.dtype == x.dtype
                and _use_cpu_op(x, (paddle.float32,))):
            return paddle_cpu_layers.conv2d(x, self.weight, self.bias, self._stride, self._updated_padding,
                                            self._dilation)
        return super().forward(x)


class GroupNorm(nn.GroupNorm):
    """paddle.nn.GroupNorm (weight, bias [C]) with a correct weight gradient. x [B, C, H, W] -> same.

    Paddle 3.2's CPU group_norm backward derives the weight gradient from its output and the weight, and returns 0
    when the weight is 0, the value the "gn" backbone gives the last norm of every residual branch: those branches
    would never train. On CPU the op of ops/paddle_cpu_layers.py computes all gradients from the normalized input.
    Elsewhere (GPU, static graphs) Paddle's kernel normalizes with a unit scale (its input gradient is right) and
    the affine part is ordinary autograd.
    """

    def __init__(self, num_groups, num_channels, epsilon=1e-5):
        super().__init__(num_groups, num_channels, epsilon=epsilon)

    def forward(self, x):
        if self.weight.dtype == x.dtype and _use_cpu_op(x, (paddle.float32, paddle.float64)):
            return paddle_cpu_layers.group_norm(x, self._num_groups, self.weight, self.bias, self._epsilon)
        c = x.shape[1]
        y = F.group_norm(x, self._num_groups, self._epsilon, paddle.ones([c], x.dtype), paddle.zeros([c], x.dtype))
        return y * self.weight.reshape([1, -1, 1, 1]) + self.bias.reshape([1, -1, 1, 1])
