"""An exported model (`jima_jax.export`) loaded from its folder alone: reports for image files.

No prepared dataset, no workdir, no TensorFlow: the model is rebuilt from the folder's
config.json, its parameters read from params.safetensors, and images prepared with PIL + numpy
exactly as the eval pipeline prepares a test study (`jima_jax.data.images`), so the reports equal
those `--mode predict` writes through the dataset for the same images. Every file is checked
against the manifest's sha256 first: a missing or damaged file is an error naming it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Optional, Sequence

import ml_collections
import numpy as np

from jima_jax import export as export_lib

_REEXPORT = ('Copy the whole export folder again, or export the run again '
             '(python -m jima_jax.main --config ... --workdir RUN --mode export --force).')


def _config(saved: dict) -> ml_collections.ConfigDict:
    """The saved config, with the tuples JSON turned into lists made tuples again."""
    from jima_jax.configs import default
    config = ml_collections.ConfigDict(saved)
    reference = default.get_config()
    for node_name, node in reference.items():
        if not isinstance(node, ml_collections.ConfigDict) or node_name not in config:
            continue
        for key, value in node.items():
            if isinstance(value, tuple) and key in config[node_name]:
                config[node_name][key] = tuple(config[node_name][key])
    return config


def verify(folder: pathlib.Path) -> dict:
    """The manifest, after checking every file it lists; raises naming the first bad file."""
    if not folder.is_dir():
        raise FileNotFoundError(f'--model {folder}: no such folder; pass the folder '
                                '`--mode export` wrote (default <workdir>/export).')
    manifest = export_lib.read_manifest(folder)
    if manifest is None:
        raise ValueError(f'{folder / export_lib.MANIFEST}: missing or not a jima_jax export '
                         f'manifest. {_REEXPORT}')
    if manifest.get('version') != export_lib.FORMAT_VERSION:
        raise ValueError(f'{folder / export_lib.MANIFEST}: export format version '
                         f'{manifest.get("version")}, this jima_jax reads version '
                         f'{export_lib.FORMAT_VERSION}. Export the run again with this version.')
    files = manifest.get('files', {})
    for name in export_lib.MODEL_FILES:
        if name not in files:
            raise ValueError(f'{folder / export_lib.MANIFEST}: lists no {name}. {_REEXPORT}')
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f'{path} is missing from the export folder. {_REEXPORT}')
        if export_lib.sha256(path) != info.get('sha256'):
            raise ValueError(f'{path} is damaged: its sha256 differs from the one in '
                             f'{export_lib.MANIFEST}. {_REEXPORT}')
    return manifest


def _load_params(path: pathlib.Path, template_params: dict, template_stats: dict):
    """The pure (params, batch_stats) dicts of the template's structure, from the file."""
    import jax
    from jima_jax import torch_files
    try:
        tensors = torch_files.read_safetensors(path)
    except torch_files.WeightFileError as e:
        raise ValueError(f'{e} {_REEXPORT}') from None
    tree = {'params': template_params, 'batch_stats': template_stats}

    def take(p, want):
        name = export_lib.param_name(p)
        if name not in tensors:
            raise ValueError(f'{path}: has no tensor {name!r}, which the model of config.json '
                             f'needs. {_REEXPORT}')
        got = tensors.pop(name)
        if got.shape != tuple(want.shape) or got.dtype != want.dtype:
            raise ValueError(f'{path}: tensor {name!r} is {got.dtype} {got.shape}; the model of '
                             f'config.json needs {want.dtype} {tuple(want.shape)}. {_REEXPORT}')
        return got

    loaded = jax.tree_util.tree_map_with_path(take, tree)
    if tensors:
        raise ValueError(f'{path}: holds tensors the model of config.json does not have '
                         f'({sorted(tensors)[:3]} ...). {_REEXPORT}')
    return loaded['params'], loaded['batch_stats']


@dataclasses.dataclass
class ExportedModel:
    """A loaded export folder: `generate(studies)` writes reports for image files."""

    folder: pathlib.Path
    config: ml_collections.ConfigDict
    tokenizer: object
    card: dict
    step: int
    _generate: object
    _params: object
    _stats: object

    @classmethod
    def load(cls, folder) -> 'ExportedModel':
        import jax
        from jima_jax import decode
        from jima_jax.model import jima
        from jima_jax.text import tables as tables_lib
        from jima_jax.text.tokenizer import Tokenizer
        from jima_jax.train import step as step_lib
        folder = pathlib.Path(folder)
        manifest = verify(folder)
        try:
            config = _config(json.loads((folder / export_lib.CONFIG).read_text()))
            card = json.loads((folder / export_lib.CARD_JSON).read_text()) if (
                folder / export_lib.CARD_JSON).is_file() else {}
        except ValueError as e:
            raise ValueError(f'{folder}: config.json or card.json is not JSON ({e}). '
                             f'{_REEXPORT}') from None
        tokenizer = Tokenizer.load(folder / export_lib.TOKENIZER)
        tables_lib.FrequencyTables.load(folder / export_lib.TABLES_STEM, tokenizer.fingerprint)
        modeldef, params, stats = step_lib.split_model(
            jima.build(config, tokenizer.vocab_size, abstract=True))
        params, stats = _load_params(folder / export_lib.PARAMS, params, stats)
        generate = jax.jit(decode.make_generate_fn(modeldef, config, tokenizer.vocab_size))
        return cls(folder, config, tokenizer, card, int(manifest.get('step', -1)), generate,
                   jax.device_put(params), jax.device_put(stats))

    def images(self, paths: Sequence[str]) -> np.ndarray:
        """One study's image files -> uint8 [views, size, size], as the eval pipeline sees it."""
        from jima_jax.data import images
        d = self.config.data
        return images.model_input(paths, num_views=int(d.num_views),
                                  stored_size=int(d.image_size),
                                  input_size=int(self.config.input.image_size),
                                  resize=d.get('resize', 'square'))

    def generate(self, studies: Sequence[tuple[str, Sequence[str]]],
                 batch_size: Optional[int] = None) -> dict:
        """Reports for (id, [view paths]) studies: ids, reports, tokens, logprobs, entity_probs
        (the dict `train.validate.generate_split` returns). Batches of input.eval_batch_size,
        the last one padded with its first study, as in evaluation."""
        import jax
        arrays = []
        for sid, paths in studies:
            try:
                arrays.append(self.images(paths))
            except ValueError as e:
                raise ValueError(f'study {sid}: {e}') from e
        b = int(batch_size or self.config.input.eval_batch_size)
        tokens, logprobs, q = [], [], []
        for start in range(0, len(arrays), b):
            chunk = arrays[start:start + b]
            batch = np.stack(chunk + [chunk[0]] * (b - len(chunk)))
            out = jax.device_get(self._generate(self._params, self._stats, batch))
            tokens.append(out['tokens'][:len(chunk)])
            logprobs.append(out['logprobs'][:len(chunk)])
            if 'entity_probs' in out:
                q.append(out['entity_probs'][:len(chunk)])
        tokens = np.concatenate(tokens) if tokens else np.zeros((0, 0), np.int32)
        return {'ids': [str(sid) for sid, _ in studies], 'index': np.arange(len(studies)),
                'reports': [self.tokenizer.decode([int(t) for t in row]) for row in tokens],
                'tokens': tokens,
                'logprobs': np.concatenate(logprobs) if logprobs else np.zeros((0, 0)),
                'entity_probs': np.concatenate(q) if q else None}
