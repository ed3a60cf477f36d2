"""`--mode predict`: reports for image files (or a prepared split), no references needed.

Studies come from `--images a.png,b.png` (one flag per study, views in order) or an `--image_list`
file: JSON lines `{"id": ..., "images": [...]}`, or plain lines `path[,path...]` (the id is the
first file's name without its suffix). Images go through the same steps as prepared data (any
PNG/JPEG mode -> grayscale, resize to `data.image_size` as `data.resize` says, then the eval-time resize to
`input.image_size`), so a checkpoint sees what it was trained on. Output: one JSON line per study,
`id`, `images`, `report`, `mean_logprob` (and `token_logprobs` on request: one per generated
token, the end-of-report token included).
"""

from __future__ import annotations

import json
import pathlib
from typing import Optional, Sequence

import jax
import numpy as np

from jima_jax import atomic
from jima_jax.data import sources
from jima_jax.data.builders import base
from jima_jax.data.types import NUM_OBSERVATIONS, PreparedSplit
from jima_jax.train import validate

PREDICT_SPLIT = 'predict'


def parse_studies(images: Sequence[str] = (), image_list: Optional[str] = None
                  ) -> list[tuple[str, list[str]]]:
    """(id, [view paths]) per study, from `--images` values and/or an `--image_list` file."""
    studies = [_from_paths(value.split(','), f'--images={value}') for value in images]
    if image_list:
        path = pathlib.Path(image_list)
        if not path.is_file():
            raise ValueError(f'--image_list={image_list}: no such file.')
        base_dir = path.parent
        for n, line in enumerate(path.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            where = f'{image_list}:{n}'
            if line.startswith('{'):
                try:
                    row = json.loads(line)
                    views = [str(base_dir / p.strip()) for p in row['images'] if p.strip()]
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                    raise ValueError(f'{where}: expected {{"id": ..., "images": [paths]}} '
                                     f'({e}).') from e
                sid, views = _from_paths(views, where)
                studies.append((str(row.get('id', sid)), views))
            else:
                parts = [p.strip() for p in line.split(',') if p.strip()]
                studies.append(_from_paths([str(base_dir / p) for p in parts], where))
    if not studies:
        raise ValueError('--mode predict needs --images path[,path] (one per study), '
                         '--image_list FILE, or --split NAME for a prepared split.')
    seen: set[str] = set()
    for sid, _ in studies:
        if sid in seen:
            raise ValueError(f'study id {sid!r} appears twice; give the studies distinct ids '
                             '(JSON lines with an "id" field).')
        seen.add(sid)
    return studies


def _from_paths(paths: Sequence[str], where: str) -> tuple[str, list[str]]:
    paths = [p.strip() for p in paths if p.strip()]
    if not paths:
        raise ValueError(f'{where}: no image paths.')
    return pathlib.Path(paths[0]).stem, paths


def studies_as_split(studies: list[tuple[str, list[str]]], num_views: int, image_size: int,
                     max_len: int, max_entities: int, resize: str = 'square') -> PreparedSplit:
    """A reference-free PreparedSplit (empty reports, no labels) the eval pipeline can read.

    A study with fewer views than `data.num_views` repeats its last view, as at prepare time.
    """
    images = np.empty((len(studies), num_views, image_size, image_size), np.uint8)
    for i, (sid, paths) in enumerate(studies):
        try:
            images[i] = base.fit_views([sources.read_grayscale(p) for p in paths], num_views,
                                       image_size, resize)
        except ValueError as e:
            raise ValueError(f'study {sid}: {e}') from e
    n = len(studies)
    return PreparedSplit(
        ids=np.asarray([sid for sid, _ in studies]), reports=np.asarray([''] * n),
        images=images, tokens=np.zeros((n, max_len), np.int32), lengths=np.zeros(n, np.int32),
        entities=np.full((n, max_entities), -1, np.int32), abnormal=np.zeros(n, np.int8),
        labels=np.zeros((n, NUM_OBSERVATIONS), np.int8))


def write_predictions(path: pathlib.Path, generated: dict, images: dict[str, list[str]],
                      with_token_logprobs: bool) -> pathlib.Path:
    lines = []
    for sid, text, tokens, lp in zip(generated['ids'], generated['reports'], generated['tokens'],
                                     generated['logprobs']):
        row = {'id': sid, 'images': images.get(sid, []), 'report': text,
               'mean_logprob': validate.mean_logprob(tokens, lp)}
        if with_token_logprobs:
            row['token_logprobs'] = [round(float(x), 5) for x in lp[tokens != 0]]
        lines.append(json.dumps(row))
    return atomic.write_text(path, '\n'.join(lines) + '\n')


def predict(config, workdir: str, *, images: Sequence[str] = (), image_list: Optional[str] = None,
            split: Optional[str] = None, which: str = 'auto', output: Optional[str] = None,
            with_token_logprobs: bool = False) -> pathlib.Path:
    """Generates reports with a checkpoint of `workdir`; returns the predictions.jsonl path."""
    from jima_jax.train import loop
    if split and (images or image_list):
        raise ValueError('--mode predict: give either --split or image files, not both.')
    studies = None if split else parse_studies(images, image_list)
    workdir_path = pathlib.Path(workdir)
    step = loop.checkpoint_step(workdir_path, config.train, which)
    s = loop.setup(config, workdir_path, step=step)
    try:
        if split:
            if split not in s.dataset.splits:
                raise ValueError(f'--split={split!r}: the dataset has splits '
                                 f'{sorted(s.dataset.splits)}.')
            name, paths = split, {}
        else:
            s.dataset.splits[PREDICT_SPLIT] = studies_as_split(
                studies, config.data.num_views, int(config.data.image_size),
                int(config.data.max_len), int(config.data.max_entities),
                config.data.get('resize', 'square'))
            name, paths = PREDICT_SPLIT, dict(studies)
        generated = validate.generate_split(s, validate.make_generate(s), name, s.state)
    finally:
        s.checkpointer.close()
    out = pathlib.Path(output) if output else workdir_path / 'predict' / f'{name}.jsonl'
    if jax.process_index() == 0:
        write_predictions(out, generated, paths, with_token_logprobs)
    return out
