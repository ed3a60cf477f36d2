"""Process-wide settings for a JAX that computes on the CPU: XLA:CPU's op order (`XLA_FLAGS`)
and glibc's allocator. Both must be applied before JAX starts, and neither touches a GPU/TPU
run; `main` calls `configure_cpu_host` right after parsing the config."""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import importlib.util
import logging
import mmap
import os
import pathlib
import re
import sys

log = logging.getLogger(__name__)

CPU_SCHEDULERS = ('memory', 'concurrency')
_SCHEDULER_FLAG = '--xla_cpu_enable_concurrency_optimized_scheduler'
# Installed, any of these gives JAX a GPU/TPU backend by default.
_ACCELERATOR_MODULES = ('jax_plugins', 'jax_cuda12_plugin', 'jax_cuda13_plugin',
                        'jax_rocm60_plugin', 'jax_rocm7_plugin', 'libtpu')
_NATIVE_LIBRARY = re.compile(r'\.(so(\.[0-9.]+)?|dylib|pyd)$')  # libfoo.so, libfoo.so.1, ...


def jax_runs_on_cpu() -> bool:
    """Whether JAX will compute on the CPU: `JAX_PLATFORMS` names only `cpu`, or, unset, no
    GPU/TPU plugin is installed (JAX would pick that plugin's backend by default)."""
    platforms = [p.strip().lower() for p in os.environ.get('JAX_PLATFORMS', '').split(',')
                 if p.strip()]
    if platforms:
        return all(p == 'cpu' for p in platforms)
    if any(importlib.util.find_spec(m) for m in _ACCELERATOR_MODULES):
        return False
    return not importlib.metadata.entry_points(group='jax_plugins')


@functools.lru_cache(maxsize=None)
def xla_knows_flag(flag: str) -> bool:
    """Whether the installed jaxlib's XLA was built with `flag` (e.g. '--xla_cpu_...').

    XLA aborts the whole process when `XLA_FLAGS` holds a flag it does not know, and no Python
    API lists the known ones. Each flag's name is a NUL-terminated string literal in jaxlib's
    native libraries, so we look for it there (memory-mapped; the largest library first).
    """
    spec = importlib.util.find_spec('jaxlib')
    roots = list(spec.submodule_search_locations or []) if spec else []
    libs = [f for root in roots for f in pathlib.Path(root).rglob('*')
            if _NATIVE_LIBRARY.search(f.name) and f.is_file()]
    needle = flag.split('=')[0].lstrip('-').encode() + b'\0'
    for lib in sorted(libs, key=lambda f: f.stat().st_size, reverse=True):
        with open(lib, 'rb') as f:
            if os.fstat(f.fileno()).st_size == 0:
                continue
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
    return False


def use_cpu_scheduler(pcfg) -> bool:
    """Chooses XLA:CPU's op order for this process through `XLA_FLAGS`.

    'memory' keeps the fewest buffers alive instead of XLA:CPU's default concurrency-optimised
    order: at the IU X-ray paper shape that cut the train step's temporaries from 4.3 to 3.4 GB
    (peak host memory 6.7 -> 5.7 GB) at the same speed. XLA reads the flag once, when JAX starts
    its CPU backend, so this must run before the first computation (`main` calls it right after
    parsing the config); a per-compilation option does not reach this flag. A value the user
    already put in XLA_FLAGS wins. The flag is added only when JAX will run on the CPU and the
    installed jaxlib knows it (XLA aborts on an unknown flag, on every backend). Returns whether
    it was added.
    """
    choice = pcfg.get('cpu_scheduler', 'memory')
    if choice not in CPU_SCHEDULERS:
        raise ValueError(f'parallel.cpu_scheduler={choice!r}: expected one of {CPU_SCHEDULERS}.')
    flags = os.environ.get('XLA_FLAGS', '')
    if choice != 'memory' or _SCHEDULER_FLAG in flags or not jax_runs_on_cpu():
        return False
    if not xla_knows_flag(_SCHEDULER_FLAG):
        log.warning('parallel.cpu_scheduler=memory: this jaxlib does not know %s, so XLA:CPU '
                    'keeps its default op order (more memory, same numbers).', _SCHEDULER_FLAG)
        return False
    os.environ['XLA_FLAGS'] = f'{flags} {_SCHEDULER_FLAG}=false'.strip()
    return True


CPU_MALLOC = ('reuse', 'system')
# glibc <malloc.h> mallopt parameters.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def glibc_mallopt():
    """glibc's `mallopt` on Linux, else None (macOS, musl, ...)."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        return ctypes.CDLL('libc.so.6').mallopt
    except (OSError, AttributeError):
        return None


def use_cpu_malloc(pcfg) -> bool:
    """Lets XLA:CPU reuse its freed buffers instead of getting fresh pages every step.

    XLA:CPU allocates one block for all of a program's temporaries on every execution (3.6 GB for
    ResNet-101 forward + backward on 32 images) and frees it afterwards. glibc serves such sizes
    with mmap and returns them with munmap, so every step page-faulted and zero-filled gigabytes
    again: ~1.2 million page faults and 2.5 s of kernel time per ResNet-101 forward + backward
    on a 2-core CPU. 'reuse' tells glibc (mallopt) to keep one heap, never mmap and never trim
    it, so the block is reused as it is: faults drop to ~0 and that forward + backward from 13.3
    to 11.2 s (paper-shape train step: 17.4 -> 15.7 s). The price: the process keeps its peak
    memory until it exits, and fragmentation can raise that peak (ResNet-18 step: 3.7 against
    2.4 GB; the paper step: 5.3 against 5.6 GB). Like `use_cpu_scheduler` this must run before
    JAX starts (its worker threads pick their heap on their first allocation). Only on Linux with
    glibc, and only when JAX will run on the CPU (a host feeding a GPU/TPU keeps its allocator).
    Returns whether it was applied.
    """
    choice = pcfg.get('cpu_malloc', 'reuse')
    if choice not in CPU_MALLOC:
        raise ValueError(f'parallel.cpu_malloc={choice!r}: expected one of {CPU_MALLOC}.')
    mallopt = glibc_mallopt()
    if choice != 'reuse' or mallopt is None or not jax_runs_on_cpu():
        return False
    # A trim threshold of -1 is SIZE_MAX for glibc: freed memory is never given back.
    return all(mallopt(param, value) == 1 for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))


def configure_cpu_host(pcfg) -> None:
    """Process-wide CPU settings from `parallel` (op order, allocator): call before JAX starts.
    Both act only when JAX will run on the CPU; a GPU/TPU run keeps XLA's and glibc's defaults."""
    use_cpu_scheduler(pcfg)
    use_cpu_malloc(pcfg)
