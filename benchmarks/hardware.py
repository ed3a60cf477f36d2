"""What a benchmark ran on, and model FLOPs utilisation (MFU) from XLA's cost analysis.

MFU = (FLOPs of one step's compiled program on one device, as XLA counts them) / step seconds /
(that device's dense peak). XLA counts the FLOPs of the program it runs (rematerialised work
included), so this is closer to "hardware FLOPs utilisation" for remat runs. Peaks are the vendor
dense numbers per chip: bfloat16 rows use the bf16 peak; float32 rows use the TF32 peak on NVIDIA
GPUs (XLA's default precision for f32 matmuls and convolutions there) and the bf16 peak on TPUs
(default precision: one bf16 pass). `JIMA_PEAK_TFLOPS` sets the peak for a device not listed.
CPUs have no meaningful single peak here: their rows carry achieved FLOP/s, no MFU.
"""

from __future__ import annotations

import datetime
import os
import platform
from typing import Optional

# device_kind substring (lower case) -> (bf16 dense peak, f32 default-precision peak), FLOP/s.
# Order matters: the first matching substring wins.
PEAKS = (
    ('h200', (989e12, 494.5e12)),
    ('h100 pcie', (756e12, 378e12)),
    ('h100', (989e12, 494.5e12)),
    ('a100', (312e12, 156e12)),
    ('l4', (121e12, 60e12)),
    ('tpu v6 lite', (918e12, 918e12)),
    ('tpu v5 lite', (197e12, 197e12)),
    ('tpu v5', (459e12, 459e12)),
    ('tpu v4', (275e12, 275e12)),
)


def peak_flops(device_kind: str, dtype: str) -> Optional[float]:
    """Dense peak FLOP/s of one device for `dtype` compute, or None when unknown (CPUs)."""
    if os.environ.get('JIMA_PEAK_TFLOPS'):
        return float(os.environ['JIMA_PEAK_TFLOPS']) * 1e12
    kind = device_kind.lower()
    for key, (bf16, f32) in PEAKS:
        if key in kind:
            return bf16 if dtype == 'bfloat16' else f32
    return None


def _cost_flops(stage) -> Optional[float]:
    try:
        analysis = stage.cost_analysis()
    except Exception:  # some backends do not implement it; MFU is then left out
        return None
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per program
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get('flops')
    return float(flops) if flops and flops > 0 else None


def program_flops(compiled, lowered=None, devices: int = 1) -> Optional[float]:
    """FLOPs of one call of a program on one device, if XLA reports them.

    The compiled program's count misses work XLA hands to library calls (on NVIDIA GPUs every
    convolution is a cuDNN custom call, so a ResNet step counted ~1% of its FLOPs on an H200,
    2026-12-04); the lowered program, before such rewrites, counts the convolutions but not
    rematerialised work, and covers all `devices`. The larger of the two per-device counts is
    taken."""
    counts = [_cost_flops(compiled)]
    if lowered is not None:
        whole = _cost_flops(lowered)
        counts.append(whole / max(int(devices), 1) if whole else None)
    counts = [c for c in counts if c]
    return max(counts) if counts else None


def utilisation(flops_per_device: Optional[float], seconds: float, device_kind: str,
                dtype: str) -> dict:
    """Achieved TFLOP/s per device and MFU (None where the peak or the FLOPs are unknown)."""
    if not flops_per_device or seconds <= 0:
        return {'tflops_per_sec_per_device': None, 'mfu': None}
    achieved = flops_per_device / seconds
    peak = peak_flops(device_kind, dtype)
    return {'tflops_per_sec_per_device': achieved / 1e12,
            'mfu': achieved / peak if peak else None}


def describe() -> dict:
    """Platform, devices and host of the current process (JAX must be importable)."""
    import jax

    devices = jax.devices()
    return {'platform': devices[0].platform, 'device_kind': devices[0].device_kind,
            'devices': len(devices), 'processes': jax.process_count(),
            'host_cpus': os.cpu_count(), 'machine': platform.machine(),
            'jax_version': jax.__version__, 'python': platform.python_version(),
            'xla_flags': os.environ.get('XLA_FLAGS', ''),
            'load_avg_1m': round(os.getloadavg()[0], 2),
            'date': datetime.date.today().isoformat()}


def machine_tag(hw: dict) -> str:
    """Short file-name tag: 'x86_64-2cpu' on CPUs, e.g. 'nvidia-h200x1' on accelerators."""
    if hw['platform'] == 'cpu':
        return f'{hw["machine"]}-{hw["host_cpus"]}cpu'
    kind = ''.join(c if c.isalnum() else '-' for c in hw['device_kind'].lower()).strip('-')
    while '--' in kind:
        kind = kind.replace('--', '-')
    return f'{kind}x{hw["devices"]}'
