"""More drawings of each training study of a phantom corpus, so training sees new images.

A prepared phantom split holds one image per study. With a small corpus (IU-phantom: 2,069
training reports) a model can key a report on the picture itself, the way it would memorise a
fixed set, instead of reading the findings drawn in it. The renderer can draw the same findings
again for another patient (position, size, exposure, vessel tree, noise, and the fine placement
of each finding), so `data.phantom.train_renders = K` draws K images per training study and
epoch e shows drawing e mod K: no image is seen twice within K epochs, and every drawing shows
exactly the findings the report states (drawing 0 is the prepared image).

The K - 1 extra drawings are rendered at the first training run and cached beside the prepared
dataset (`renders-train-<K>.npy`, written to a temporary file and renamed), so later runs and
every process of a job load them. Validation, test and difficulty scoring keep drawing 0.
"""

from __future__ import annotations

import logging
import pathlib
import time
from typing import Optional

import numpy as np

from jima_jax import atomic
from jima_jax.data import builders, phantom, phantom_corpus
from jima_jax.data.images import fit_views
from jima_jax.data.types import PreparedSplit

KEY = 'data.phantom.train_renders'

log = logging.getLogger(__name__)


def num_renders(data_cfg) -> int:
    """`data.phantom.train_renders` (1 when a config predates the key), validated."""
    phantom_cfg = data_cfg.get('phantom', None)
    value = phantom_cfg.get('train_renders', 1) if phantom_cfg is not None else 1
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f'{KEY}={value!r}: expected an integer >= 1 (1 = the prepared image '
                         'only; K > 1 draws K images of each training study, a new one each '
                         'epoch).')
    value = int(value)
    if value > 1 and data_cfg.name not in builders.DRAWN:
        raise ValueError(f'{KEY}={value} needs a phantom corpus (data.name in {builders.DRAWN}); '
                         f'data.name={data_cfg.name!r} has one fixed image per study. '
                         f'Set {KEY}=1.')
    if value > 1 and data_cfg.get('image_store', 'memory') != 'memory':
        raise ValueError(f"{KEY}={value} keeps the drawings in host memory; it cannot be combined "
                         f"with data.image_store={data_cfg.image_store!r}. Set "
                         "data.image_store='memory' or "
                         f'{KEY}=1.')
    return value


def cache_path(prepared: pathlib.Path, renders: int) -> pathlib.Path:
    return pathlib.Path(prepared) / f'renders-train-{renders}.npy'


def _draw_extra(data_cfg, split: PreparedSplit, renders: int) -> np.ndarray:
    """uint8 [renders - 1, N, V, S, S]: drawings 1..renders-1 of every study of `split`."""
    found = {}
    for study in builders.get_studies(data_cfg):  # the phantom sources draw nothing until asked
        if study.split == 'train':
            found[study.id] = study.meta['findings']
    missing = [sid for sid in split.ids if sid not in found]
    if missing:
        raise ValueError(f'{len(missing)} training studies of the prepared {data_cfg.name} '
                         f'dataset (first: {missing[0]}) are not in its source any more; prepare '
                         'it again (python -m jima_jax.data.prepare ... --force).')
    n, views, size = len(split), int(data_cfg.num_views), int(data_cfg.image_size)
    out = np.empty((renders - 1, n, views, size, size), np.uint8)
    base_seed = int(data_cfg.phantom.seed)
    t0 = time.perf_counter()
    for i, sid in enumerate(split.ids):
        findings = found[str(sid)]
        for k in range(1, renders):
            seed = phantom_corpus.study_seed(base_seed, f'{sid}#render{k}')
            patient = phantom.Patient.from_seed(seed)  # a new patient, the same findings
            drawn = phantom.render_study(phantom.Findings(findings.items, patient), seed=seed,
                                         size=size, views=views)
            out[k - 1, i] = fit_views(list(drawn), views, size)
        if (i + 1) % 500 == 0 or i + 1 == n:
            print(f'{KEY}: drew {i + 1}/{n} studies x {renders - 1} '
                  f'({time.perf_counter() - t0:.0f} s)', flush=True)
    return out


def train_images(data_cfg, split: PreparedSplit,
                 prepared: Optional[pathlib.Path] = None) -> Optional[np.ndarray]:
    """uint8 [K, N, V, S, S], drawing k of study i at [k, i] (drawing 0 = `split.images`), or
    None when `data.phantom.train_renders` is 1. Extra drawings come from the cache beside the
    prepared dataset (`prepared`: its directory; default `prepare.prepared_dir(data_cfg)`)."""
    renders = num_renders(data_cfg)
    if renders == 1:
        return None
    if not isinstance(split.images, np.ndarray):
        raise ValueError(f'{KEY}={renders} needs the training images in memory.')
    if prepared is None:
        from jima_jax.data import prepare
        prepared = prepare.prepared_dir(data_cfg)
    path = cache_path(prepared, renders)
    shape = (renders - 1,) + split.images.shape
    extra = None
    if path.is_file():
        try:
            extra = np.load(path, mmap_mode='r')
        except ValueError:
            extra = None
        if extra is not None and (extra.shape != shape or extra.dtype != np.uint8):
            log.warning('%s holds %s %s, expected %s uint8; drawing again', path, extra.dtype,
                        extra.shape, shape)
            extra = None
    if extra is None:
        print(f'{KEY}={renders}: drawing {renders - 1} more images of each of {len(split)} '
              f'training studies, cached in {path}', flush=True)
        extra = _draw_extra(data_cfg, split, renders)

        def write(tmp):
            with open(tmp, 'wb') as f:
                np.save(f, extra)
        atomic.write_with(path, write)
    out = np.empty((renders,) + split.images.shape, np.uint8)
    out[0] = split.images
    out[1:] = extra
    return out
