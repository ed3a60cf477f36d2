"""Convolution and BatchNorm layers with torchvision's numerics, in NHWC; portable kernels.

Written here rather than taken from `nnx.Conv`/`nnx.BatchNorm` because the backbone must (a) pad
exactly like torchvision (symmetric `k // 2`, which XLA's 'SAME' does not do for stride 2), so that
imported ImageNet weights give the same features, and (b) keep running statistics the PyTorch way
(momentum 0.1, unbiased variance in the running estimate).

Everything here is plain lax/einsum for any backend (`model.kernels='portable'`); the XLA:CPU
workarounds live in jima_jax/model/xla_cpu.py and are chosen by `model.kernels`, not by a check
of the backend in traced code.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def lax_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """XLA's own convolution, zero padding `pad` on every side."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=DIMENSION_NUMBERS)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """NHWC convolution with torchvision padding (k // 2 on every side).

    A 1x1 convolution is an einsum over the (strided) input; any other, XLA's convolution.
    """
    kh, kw, _, _ = kernel.shape
    if kh == 1 and kw == 1:
        if stride > 1:
            x = x[:, ::stride, ::stride, :]
        return jnp.einsum('nhwc,co->nhwo', x, kernel[0, 0])
    return lax_conv(x, kernel, stride, kh // 2)


def keep(x: jax.Array) -> jax.Array:
    """A block output as it is: the portable counterpart of `xla_cpu.materialize`."""
    return x


class Conv2d(nnx.Module):
    """Bias-free convolution; kernel stored HWIO (torchvision's OIHW is transposed on import).

    `conv` is the convolution it runs: the portable `conv2d` here, XLA:CPU's in
    `xla_cpu.Conv2d`; the two have the same parameters, so either loads the other's weights."""

    conv = staticmethod(conv2d)

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        # torchvision initialises ResNet convolutions with kaiming_normal_(mode='fan_out').
        std = (2.0 / (out_ch * kernel_size * kernel_size)) ** 0.5
        self.kernel = nnx.Param(
            std * jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_ch, out_ch)))
        self.stride = stride
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride)


class BatchNorm(nnx.Module):
    """BatchNorm over (N, H, W) with PyTorch's running-statistics convention.

    `train=True` normalises with the batch statistics and updates the running ones (unless
    `frozen`, then the running statistics are used and kept). `update_stats=False` normalises with
    batch statistics but leaves the running ones untouched (the frozen f_R of the Task-2 update).
    Under `jax.jit` the batch statistics are over the global (sharded) batch, however it is laid
    out over devices.
    """

    def __init__(self, channels: int, *, momentum: float = 0.1, eps: float = 1e-5,
                 frozen: bool = False, zero_init: bool = False):
        self.scale = nnx.Param(jnp.zeros(channels) if zero_init else jnp.ones(channels))
        self.bias = nnx.Param(jnp.zeros(channels))
        self.mean = nnx.BatchStat(jnp.zeros(channels))
        self.var = nnx.BatchStat(jnp.ones(channels))
        self.momentum = momentum
        self.eps = eps
        self.frozen = frozen

    def __call__(self, x: jax.Array, train: bool, update_stats: bool = True) -> jax.Array:
        if train and not self.frozen:
            mean, var, n = self.batch_moments(x.astype(jnp.float32))
            if update_stats:
                m = self.momentum
                self.mean[...] = (1 - m) * self.mean[...] + m * mean
                self.var[...] = (1 - m) * self.var[...] + m * var * (n / jnp.maximum(n - 1, 1))
        else:
            mean, var = self.mean[...], self.var[...]
        inv = lax.rsqrt(var + self.eps) * self.scale[...]
        shift = self.bias[...] - mean * inv
        return (x * inv.astype(x.dtype) + shift.astype(x.dtype))

    def batch_moments(self, xf: jax.Array):
        """(mean, biased variance, element count) per channel over (N, H, W) of this batch.

        The one place a batch statistic is taken, so that a data-parallel variant that sees only
        its shard (benchmarks/pmap_step.py) can average across devices by overriding it."""
        mean = jnp.mean(xf, axis=(0, 1, 2))
        var = jnp.mean(jnp.square(xf - mean), axis=(0, 1, 2))  # two-pass: no cancellation
        return mean, var, xf.shape[0] * xf.shape[1] * xf.shape[2]


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torchvision's stem pooling: 3x3, stride 2, padding 1 (padded with -inf)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))
