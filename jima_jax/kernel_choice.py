"""`model.kernels`: which backbone kernels a model is built with, decided once at construction.

  'portable'  plain lax convolutions and einsums (jima_jax/model/layers.py), for any backend;
  'xla_cpu'   the XLA:CPU workarounds of jima_jax/model/xla_cpu.py (1x1 convolutions as 2-D
              matmuls with written-out gradients, a patch matmul for tiny output maps, block
              outputs kept by a conditional);
  'auto'      'xla_cpu' when JAX computes on the CPU, else 'portable' (the default).

'auto' is resolved here, when the backbone is constructed, so the traced model code never asks
which backend it runs on; the choice is a static attribute of the modules it builds. The values
compute the same function: they differ only in float32 rounding order.
"""

from __future__ import annotations

import warnings

CHOICES = ('auto', 'portable', 'xla_cpu')
# `model.conv_impl`, the key model.kernels replaced, as configs saved before it (a run's or an
# export's config.json) still carry it. It chose only the filter gradient of the k > 1
# convolutions; the forward pass was the same for every value.
_OLD_CONV_IMPL = ('auto', 'xla', 'im2col')


def configured(mcfg) -> str:
    """`mcfg.kernels` (`mcfg` = config.model), checked; 'auto' for configs saved before the key.

    A saved config with the old `model.conv_impl` still loads: 'auto' and 'xla' built exactly the
    model 'auto' builds now; 'im2col' (removed) built the same forward pass with another filter
    gradient, so it loads with a warning.
    """
    if 'conv_impl' in mcfg:
        old = mcfg.conv_impl
        if old not in _OLD_CONV_IMPL:
            raise ValueError(
                f'model.conv_impl={old!r}: this key was replaced by model.kernels (one of '
                f'{", ".join(map(repr, CHOICES))}); delete model.conv_impl from the config.')
        if old == 'im2col':
            warnings.warn("model.conv_impl='im2col' (a config from before model.kernels): the "
                          'im2col filter gradient was removed (slower at every ResNet-101 shape '
                          'measured); building the model with model.kernels, whose forward pass '
                          'is the same. Delete model.conv_impl from the config.', stacklevel=2)
    return check(mcfg.get('kernels', 'auto'))


def check(kernels) -> str:
    if kernels not in CHOICES:
        raise ValueError(f'model.kernels={kernels!r}: expected one of '
                         f'{", ".join(map(repr, CHOICES))}.')
    return kernels


def resolve(kernels: str) -> str:
    """'portable' or 'xla_cpu' for a `model.kernels` value: 'auto' asks JAX's default backend."""
    if check(kernels) != 'auto':
        return kernels
    import jax
    return 'xla_cpu' if jax.default_backend() == 'cpu' else 'portable'
