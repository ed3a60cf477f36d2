"""Eval and predict rebuild the model a run trained, from the run's own `config.json`.

A trained workdir records its resolved config. Without it, every training override had to be
repeated on the eval/predict command line, or the model was rebuilt with another shape and the
checkpoint failed to restore (or, for data keys, was scored on another dataset). Here the keys
that fix the model's structure and its data are taken from `<workdir>/config.json`; a
command-line override that contradicts the run is refused with an error naming the key.
"""

from __future__ import annotations

import json
import pathlib
from typing import Sequence

import ml_collections

# Keys (dotted prefixes) that define the trained network or the data it was trained on.
STRUCTURE = ('data.', 'model.', 'input.image_size', 'input.mean', 'input.std')
# Within those, keys that may differ between training and evaluation without changing either.
FREE = ('data.source_dir', 'data.manual_dir', 'data.data_dir', 'data.skip_bad_studies',
        'data.image_store', 'data.phantom.train_renders',
        'data.openi_urls.', 'model.pretrained', 'model.kernels', 'model.remat_backbone',
        'model.dtype', 'model.dropout', 'model.fusion_dropout', 'model.entity_dropout')


def _flat(tree: dict, prefix: str = '') -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        else:
            out[f'{prefix}{k}'] = v
    return out


def _governed(key: str) -> bool:
    return key.startswith(STRUCTURE) and not key.startswith(FREE)


# Public names for other modules (jima_jax.export compares exports by these keys).
flat = _flat
governed = _governed


def _same(a, b) -> bool:
    norm = lambda x: list(x) if isinstance(x, (list, tuple)) else x  # JSON has no tuples
    return norm(a) == norm(b)


def overridden_keys(argv: Sequence[str]) -> set[str]:
    """Config keys set with --config.KEY=... (or --config.KEY VALUE) on a command line."""
    keys = set()
    for arg in argv:
        if arg.startswith('--config.'):
            keys.add(arg[len('--config.'):].split('=', 1)[0])
    return keys


def apply_saved(config: ml_collections.ConfigDict, workdir, argv: Sequence[str] = (),
                mode: str = 'eval') -> tuple[ml_collections.ConfigDict, list[str]]:
    """`config` with the run's structure and data keys; (new config, keys taken from the run).

    Returns `config` unchanged when the workdir has no config.json (e.g. a run older than this
    file). Raises ValueError when a command-line override contradicts the run.
    """
    path = pathlib.Path(workdir) / 'config.json'
    if not path.exists():
        return config, []
    try:
        saved = _flat(json.loads(path.read_text()))
    except ValueError as e:
        raise ValueError(f'{path}: unreadable run config ({e}); restore it from the checkpoint '
                         'folder (checkpoints/<step>/config) or delete it to use --config as is.'
                         ) from None
    current = _flat(config.to_dict())
    explicit = overridden_keys(argv)
    conflicts, taken = [], []
    for key, value in current.items():
        if not _governed(key) or key not in saved or _same(saved[key], value):
            continue
        if key in explicit:
            conflicts.append(f'{key}={value!r} (the run was trained with {saved[key]!r})')
        else:
            taken.append(key)
    if conflicts:
        raise ValueError(
            f'--mode {mode} rebuilds the model of {workdir} from its config.json, and these '
            f'overrides contradict it: {"; ".join(conflicts)}. Drop them, or train a new run '
            'with them.')
    if not taken:
        return config, []
    out = ml_collections.ConfigDict(config.to_dict())
    for key in taken:
        node = out
        *parents, last = key.split('.')
        for p in parents:
            node = node[p]
        value = saved[key]
        node[last] = tuple(value) if isinstance(node[last], tuple) else value
    out.lock()
    return out, taken
