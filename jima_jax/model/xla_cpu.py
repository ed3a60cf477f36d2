"""Backbone kernels that work around XLA:CPU (`model.kernels='xla_cpu'`, the default on CPU).

Each one computes what its portable counterpart in `layers` computes (to float32 rounding order)
but steers XLA:CPU away from a slow choice it makes on the portable form. GPU/TPU compilers make
no such choice, so they build with `model.kernels='portable'` (what 'auto' picks there); the
choice is made once, at construction (jima_jax/kernel_choice.py), never in traced code.

  `pointwise_conv`     1x1 convolutions as 2-D matmuls with written-out gradients;
  `patch_matmul_conv`  convolutions with tiny output maps as one patch matmul;
  `materialize`        block outputs kept as buffers rather than recomputed by later fusions.

Timings are from docs/performance.md (2-core AMD EPYC host, jax 0.10.2, 2026-11-29).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jima_jax.model import layers


@jax.custom_vjp
def pointwise_conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """A 1x1 convolution (kernel [C, O]) as one 2-D matmul [N*H*W, C] @ [C, O].

    The gradients are written out as 2-D matmuls too: left to autodiff, XLA:CPU fuses the
    transpose the filter gradient needs into the BatchNorm backward that produces `g`, and that
    fused, strided write was 3 s of a 20 s ResNet-101 backward on a 2-core CPU (now ~16 s; the
    paper-shape train step went from 26.6 to 21 s with this change).
    """
    return (x.reshape(-1, kernel.shape[0]) @ kernel).reshape(x.shape[:-1] + kernel.shape[1:])


def _pointwise_fwd(x, kernel):
    return pointwise_conv(x, kernel), (x, kernel)


def _pointwise_bwd(residuals, g):
    x, kernel = residuals
    cin, cout = kernel.shape
    g2 = g.reshape(-1, cout)
    dx = (g2 @ kernel.T).reshape(x.shape)
    return dx, x.reshape(-1, cin).T @ g2


pointwise_conv.defvjp(_pointwise_fwd, _pointwise_bwd)

# Output maps of at most this many positions go through `patch_matmul_conv`.
TINY_OUTPUT = 4


def patch_matmul_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """A convolution as one matmul over its image patches [N, H', W', cin*kh*kw] @ [.., cout].

    XLA:CPU's convolution is ~25x slower than a matmul when the output map is 2x2 (a 3x3 kernel
    over a 2x2 input: ResNet stage 4 at 64 px); `conv2d` sends maps of <= TINY_OUTPUT positions
    here. Its gradients are autodiff's (a patch matmul's transposes).
    """
    kh, kw, cin, cout = kernel.shape
    patches = lax.conv_general_dilated_patches(
        x, (kh, kw), (stride, stride), ((pad, pad), (pad, pad)),
        dimension_numbers=layers.DIMENSION_NUMBERS)  # [..., cin * kh * kw], channel-major
    return jnp.einsum('nhwk,ko->nhwo', patches,
                      kernel.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout))


def conv2d(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """`layers.conv2d` (torchvision padding, NHWC/HWIO) with the XLA:CPU kernels above: 1x1 ->
    `pointwise_conv`, output maps of <= TINY_OUTPUT positions -> `patch_matmul_conv`, the rest
    XLA's convolution."""
    kh, kw, _, _ = kernel.shape
    if kh == 1 and kw == 1:
        if stride > 1:
            x = x[:, ::stride, ::stride, :]
        return pointwise_conv(x, kernel[0, 0])
    pad = kh // 2
    out_hw = [(n + 2 * pad - k) // stride + 1 for n, k in zip(x.shape[1:3], (kh, kw))]
    if out_hw[0] * out_hw[1] <= TINY_OUTPUT:
        return patch_matmul_conv(x, kernel, stride, pad)
    return layers.lax_conv(x, kernel, stride, pad)


class Conv2d(layers.Conv2d):
    """`layers.Conv2d` running `conv2d` above; the same parameters."""

    conv = staticmethod(conv2d)


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
    """
    return lax.cond(x.reshape(-1)[0] >= 0, lambda v: v, lambda v: v + 0.0, x)
