"""`python -m jima_jax.accelerator gpu|tpu|cpu`: exit 0 only when JAX computes on that platform.

The launch scripts run it on every node / worker before they prepare data or train. Without it a
venv holding the CPU-only jax (what plain `make install` gives) on a GPU node makes JAX fall back
to the CPU after one warning, and the job trains there, a hundred times slower, until its time
limit. A mismatch exits with status 3 and one paragraph naming the expected platform and the fix.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Optional, Sequence

PLATFORMS = ('gpu', 'tpu', 'cpu')
MISMATCH = 3
# The installs that give each platform (Makefile targets; setup.cfg extras cuda12 / tpu).
INSTALL = {'gpu': "`make install-cuda` (pip install -c requirements/py<XY>-cpu.txt -e '.[cuda12]')",
           'tpu': "`make install-tpu` (pip install -c requirements/py<XY>-cpu.txt -e '.[tpu]')",
           'cpu': '`make install`'}
_PLUGINS = {'gpu': ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm7_plugin'),
            'tpu': ('libtpu',)}


class AcceleratorError(RuntimeError):
    """JAX does not compute on the platform a launch script was written for."""


def _installed(platform: str) -> list[str]:
    return [m for m in _PLUGINS.get(platform, ()) if importlib.util.find_spec(m)]


def check(expected: str) -> str:
    """A one-line description of JAX's devices when they are `expected`, else AcceleratorError."""
    if expected not in PLATFORMS:
        raise ValueError(f'expected platform {expected!r}: use one of {PLATFORMS}.')
    # Only a look at the devices: do not take 75% of every GPU's memory for it.
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
    import jax
    try:
        backend = jax.default_backend()
    except Exception as e:  # noqa: BLE001 - e.g. JAX_PLATFORMS=cuda without a CUDA plugin
        backend = None
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
    else:
        why = None
    if backend == expected:
        devices = jax.local_devices()
        return (f'JAX computes on {backend}: {len(devices)} local device(s), '
                f'{devices[0].device_kind} (jax {jax.__version__}, {sys.executable}).')
    found = f'jax.default_backend() is {backend!r}' if backend else f'JAX failed to start: {why}'
    if expected == 'cpu':
        hint = 'Set JAX_PLATFORMS=cpu, or install the CPU-only jax with `make install`.'
    elif os.environ.get('JAX_PLATFORMS', '').strip() and backend == 'cpu':
        hint = (f"JAX_PLATFORMS={os.environ['JAX_PLATFORMS']!r} keeps JAX off the {expected}; "
                'unset it.')
    elif _installed(expected):
        hint = (f'{", ".join(_installed(expected))} is installed, but JAX found no {expected} '
                'here: check that the job was given one (SLURM --gpus-per-node, '
                'CUDA_VISIBLE_DEVICES, nvidia-smi; a TPU VM, not a CPU VM) and that its driver '
                'matches.')
    else:
        hint = (f'{sys.executable} has no JAX {expected} plugin (the CPU-only jax of `make '
                f'install`). Install it into that venv with {INSTALL[expected]}.')
    raise AcceleratorError(f'expected JAX to compute on {expected}, but {found} '
                           f'(jax {jax.__version__}). {hint}')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0] not in PLATFORMS:
        print(f'usage: python -m jima_jax.accelerator {{{",".join(PLATFORMS)}}}', file=sys.stderr)
        return 2
    try:
        print(check(args[0]), flush=True)
    except AcceleratorError as e:
        print(f'error: {e}', file=sys.stderr, flush=True)
        return MISMATCH
    return 0


if __name__ == '__main__':
    sys.exit(main())
