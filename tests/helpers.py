"""Small builders shared by the training tests."""

import json
import os
import subprocess
import sys

import numpy as np

from tests.conftest import REPO


def random_batch(rng: np.random.Generator, *, batch: int, views: int, image: int, vocab: int,
                 max_len: int, entities: int = 8) -> dict:
    """A pipeline-shaped batch with smooth random images and well-formed token rows."""
    yy, xx = np.mgrid[0:image, 0:image] / image
    a = rng.normal(size=(batch, views, 5, 1, 1))
    images = 128 + 40 * np.sin(3 * xx * a[:, :, 0] + a[:, :, 1]) + 40 * np.cos(
        3 * yy * a[:, :, 2] + a[:, :, 3]) + 20 * a[:, :, 4] * xx * yy
    tokens = np.zeros((batch, max_len + 2), np.int32)
    for b in range(batch):
        n = int(rng.integers(3, max_len + 1))
        tokens[b, 0] = 1
        tokens[b, 1:n + 1] = rng.integers(4, vocab, n)
        tokens[b, n + 1] = 2
    return dict(images=np.clip(images, 0, 255).astype(np.uint8), tokens=tokens,
                entities=rng.integers(-1, vocab, (batch, entities)).astype(np.int32),
                abnormal=rng.integers(0, 2, batch).astype(np.int32),
                mask=np.ones(batch, np.float32), index=np.arange(batch, dtype=np.int32))


def run_python(code: str, *, devices: int = 1, timeout: int = 600, env: dict | None = None):
    """Runs `code` in a fresh interpreter with `devices` simulated CPU devices; returns the JSON
    object printed on its last stdout line."""
    full_env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
                    PYTHONPATH=str(REPO), **(env or {}))
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=timeout, cwd=str(REPO), env=full_env)
    if proc.returncode:
        raise AssertionError(f'subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])
