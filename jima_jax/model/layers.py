"""Convolution and BatchNorm layers with torchvision's numerics, in NHWC.

Written here rather than taken from `nnx.Conv`/`nnx.BatchNorm` because the backbone must (a) pad
exactly like torchvision (symmetric `k // 2`, which XLA's 'SAME' does not do for stride 2), so that
imported ImageNet weights give the same features, (b) keep running statistics the PyTorch way
(momentum 0.1, unbiased variance in the running estimate), and (c) offer an im2col filter gradient,
which is much faster than XLA:CPU's native one on some jaxlib builds.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _xla_conv(x, kernel, stride: int, pad: int):
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=_DIMENSION_NUMBERS)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _im2col_grad_conv(x, kernel, stride: int, pad: int):
    return _xla_conv(x, kernel, stride, pad)


def _im2col_fwd(x, kernel, stride, pad):
    return _xla_conv(x, kernel, stride, pad), (x, kernel)


def _im2col_bwd(stride, pad, residuals, g):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    _, vjp_x = jax.vjp(lambda x_: _xla_conv(x_, kernel, stride, pad), x)
    (dx,) = vjp_x(g)
    # Filter gradient as one matmul over image patches: [N*H'*W', cin*kh*kw]^T @ [N*H'*W', cout].
    patches = lax.conv_general_dilated_patches(
        x, (kh, kw), (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=_DIMENSION_NUMBERS)
    dk = jnp.einsum('nhwk,nhwo->ko', patches, g, preferred_element_type=jnp.float32)
    dk = dk.reshape(cin, kh, kw, cout).transpose(1, 2, 0, 3).astype(kernel.dtype)
    return dx, dk


_im2col_grad_conv.defvjp(_im2col_fwd, _im2col_bwd)


# XLA:CPU's convolution is ~25x slower than a matmul when the output map is 2x2 (a 3x3 kernel
# over a 2x2 input, ResNet stage 4 at 64 px): such maps use the patch matmul instead.
_TINY_OUTPUT = 4


def _patch_matmul_conv(x, kernel, stride: int, pad: int):
    kh, kw, cin, cout = kernel.shape
    patches = lax.conv_general_dilated_patches(
        x, (kh, kw), (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=_DIMENSION_NUMBERS)  # [..., cin * kh * kw], channel-major
    return jnp.einsum('nhwk,ko->nhwo', patches,
                      kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout))


def _einsum_pointwise_conv(x, kernel):
    return jnp.einsum('nhwc,co->nhwo', x, kernel)


@jax.custom_vjp
def _pointwise_conv(x, kernel):
    """A 1x1 convolution as one 2-D matmul [N*H*W, C] @ [C, O].

    The gradients are written out as 2-D matmuls too: left to autodiff, XLA:CPU fuses the
    transpose the filter gradient needs into the BatchNorm backward that produces `g`, and that
    fused, strided write was 3 s of a 20 s ResNet-101 backward on a 2-core CPU (now ~16 s).
    """
    return (x.reshape(-1, kernel.shape[0]) @ kernel).reshape(x.shape[:-1] + kernel.shape[1:])


def _pointwise_fwd(x, kernel):
    return _pointwise_conv(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
    x, kernel = residuals
    cin, cout = kernel.shape
    g2 = g.reshape(-1, cout)
    dx = (g2 @ kernel.T).reshape(x.shape)
    return dx, x.reshape(-1, cin).T @ g2


_pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int, impl: str) -> jax.Array:
    """NHWC convolution with torchvision padding (k // 2 on every side).

    `impl`: 'xla' (XLA's own gradients) or 'im2col' (filter gradient as a patch matmul). 1x1
    convolutions are always plain matmuls, whose gradients are matmuls too.
    """
    kh, kw, cin, cout = kernel.shape
    if kh == 1 and kw == 1:
        if stride > 1:
            x = x[:, ::stride, ::stride, :]
        if jax.default_backend() == 'cpu':  # the fix is for XLA:CPU's fusion; GPU/TPU as is
            return _pointwise_conv(x, kernel[0, 0])
        return _einsum_pointwise_conv(x, kernel[0, 0])
    pad = kh // 2
    out_hw = [(n + 2 * pad - k) // stride + 1 for n, k in zip(x.shape[1:3], (kh, kw))]
    if out_hw[0] * out_hw[1] <= _TINY_OUTPUT:
        return _patch_matmul_conv(x, kernel, stride, pad)
    if impl == 'im2col':
        return _im2col_grad_conv(x, kernel, stride, kh // 2)
    if impl == 'xla':
        return _xla_conv(x, kernel, stride, kh // 2)
    raise ValueError(f"model.conv_impl={impl!r}: expected 'xla', 'im2col' or 'auto'.")


def resolve_conv_impl(impl: str) -> str:
    """'auto' picks XLA's native gradients: on the jaxlib builds measured (0.10, 0.12) they beat
    im2col on this CPU; the im2col path stays for builds where XLA:CPU filter gradients are slow."""
    if impl == 'auto':
        return 'xla'
    return impl


class Conv2d(nnx.Module):
    """Bias-free convolution; kernel stored HWIO (torchvision's OIHW is transposed on import)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, *,
                 impl: str = 'xla', dtype=jnp.float32, rngs: nnx.Rngs):
        # torchvision initialises ResNet convolutions with kaiming_normal_(mode='fan_out').
        std = (2.0 / (out_ch * kernel_size * kernel_size)) ** 0.5
        self.kernel = nnx.Param(
            std * jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_ch, out_ch)))
        self.stride = stride
        self.impl = impl
        self.dtype = dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x.astype(self.dtype), self.kernel[...].astype(self.dtype), self.stride,
                      self.impl)


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


def materialize(x: jax.Array) -> jax.Array:
    """Returns `x` unchanged, as a buffer XLA:CPU reads instead of recomputing.

    A ResNet stage is a chain of `relu(bn(conv(y)) + x)`. XLA:CPU fuses that cheap elementwise
    chain into every consumer rather than reading the stored block output, so the fusion after
    block k of a stage recomputed blocks 1..k from their convolution outputs (and the backward
    did the same for the ReLU masks): with ResNet-101's 23-block stage 3 that quadratic
    re-reading took the paper-shape step from 17.4 to 19.5 s on a 2-core CPU. An optimisation
    barrier does not stop it (XLA:CPU lowers barriers to scheduling edges before fusing); a
    conditional does, because fusion never crosses one. Both branches return `x`, whatever the
    predicate (`+ 0.0` only turns a -0.0 into +0.0), and the cotangent takes the same path back.
    GPU/TPU compilers are left to fuse as they see fit.
    """
    if jax.default_backend() != 'cpu':
        return x
    return lax.cond(x.reshape(-1)[0] >= 0, lambda v: v, lambda v: v + 0.0, x)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torchvision's stem pooling: 3x3, stride 2, padding 1 (padded with -inf)."""
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                             ((0, 0), (1, 1), (1, 1), (0, 0)))
