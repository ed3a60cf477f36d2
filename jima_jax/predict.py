"""`--mode predict`: reports for image files (or a prepared split), no references needed.

Studies come from `--images a.png,b.png` (one flag per study, views in order) or an `--image_list`
file: JSON lines `{"id": ..., "images": [...]}`, or plain lines `path[,path...]` (the id is the
first file's name without its suffix). Images go through the same steps as prepared data (any
PNG/JPEG mode -> grayscale, resize to `data.image_size` as `data.resize` says, then the eval-time
resize to `input.image_size`), so a checkpoint sees what it was trained on. Output: one JSON line
per study, `id`, `images`, `report`, `mean_logprob` (and `token_logprobs` on request: one per
generated token, the end-of-report token included).

From an exported model folder (`--mode export`), without the dataset, the workdir or TensorFlow:

  python -m jima_jax.predict --model runs/demo/export --images frontal.png[,lateral.png] \
      [more studies ...] [--image_list studies.jsonl] [--output reports.jsonl] [--token_logprobs]

(one study per --images value, its views joined by commas; the JSON lines go to --output, or to
stdout without it). `python -m jima_jax.main --mode predict --model DIR ...` does the same.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from jima_jax import atomic
from jima_jax.data import sources
from jima_jax.data.types import PreparedSplit
from jima_jax.text.symbols import NUM_OBSERVATIONS
from jima_jax.train import validate

PREDICT_SPLIT = 'predict'  # studies from image files: written to <workdir>/predict/predict.jsonl


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
    from jima_jax.data.builders import base  # imports TensorFlow (the folder path does not)
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


def prediction_lines(generated: dict, images: dict[str, list[str]],
                     with_token_logprobs: bool) -> list[str]:
    """One JSON line per study: id, images, report, mean_logprob (token_logprobs on request)."""
    lines = []
    for sid, text, tokens, lp in zip(generated['ids'], generated['reports'], generated['tokens'],
                                     generated['logprobs']):
        row = {'id': sid, 'images': images.get(sid, []), 'report': text,
               'mean_logprob': validate.mean_logprob(tokens, lp)}
        if with_token_logprobs:
            row['token_logprobs'] = [round(float(x), 5) for x in lp[tokens != 0]]
        lines.append(json.dumps(row))
    return lines


def write_predictions(path: pathlib.Path, generated: dict, images: dict[str, list[str]],
                      with_token_logprobs: bool) -> pathlib.Path:
    lines = prediction_lines(generated, images, with_token_logprobs)
    return atomic.write_text(path, '\n'.join(lines) + '\n')


def predict(config, workdir: str, *, images: Sequence[str] = (), image_list: Optional[str] = None,
            split: Optional[str] = None, which: str = 'auto', output: Optional[str] = None,
            with_token_logprobs: bool = False) -> pathlib.Path:
    """Generates reports with a checkpoint of `workdir`; returns the predictions.jsonl path."""
    from jima_jax.train import checkpoint, run_setup
    if split and (images or image_list):
        raise ValueError('--mode predict: give either --split or image files, not both.')
    studies = None if split else parse_studies(images, image_list)
    workdir_path = pathlib.Path(workdir)
    step = checkpoint.checkpoint_step(workdir_path, config.train, which)
    run = run_setup.setup(config, workdir_path, step=step)
    try:
        if split:
            if split not in run.dataset.splits:
                raise ValueError(f'--split={split!r}: the dataset has splits '
                                 f'{sorted(run.dataset.splits)}.')
            name, paths, source = split, {}, run.dataset.splits[split]
        else:
            source = studies_as_split(
                studies, config.data.num_views, int(config.data.image_size),
                int(config.data.max_len), int(config.data.max_entities),
                config.data.get('resize', 'square'))
            name, paths = PREDICT_SPLIT, dict(studies)
        generated = validate.generate_split(run, validate.make_generate(run), source,
                                            run.state)
    finally:
        run.checkpointer.close()
    out = pathlib.Path(output) if output else workdir_path / 'predict' / f'{name}.jsonl'
    if jax.process_index() == 0:
        write_predictions(out, generated, paths, with_token_logprobs)
    return out


def predict_exported(model_dir: str, *, images: Sequence[str] = (),
                     image_list: Optional[str] = None, output: Optional[str] = None,
                     with_token_logprobs: bool = False) -> Optional[pathlib.Path]:
    """Reports from an export folder alone (no dataset, no workdir); writes `output`, or prints
    the JSON lines to stdout when it is None. Returns the output path (None: stdout)."""
    from jima_jax import exported
    studies = parse_studies(images, image_list)
    model = exported.ExportedModel.load(model_dir)
    generated = model.generate(studies)
    lines = prediction_lines(generated, dict(studies), with_token_logprobs)
    if output is None:
        print('\n'.join(lines), flush=True)
        return None
    return atomic.write_text(output, '\n'.join(lines) + '\n')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`python -m jima_jax.predict --model DIR --images a.png[,b.png] ...`; exit 2 on a user
    error, with one `error: ...` line on stderr."""
    parser = argparse.ArgumentParser(
        prog='python -m jima_jax.predict',
        description='Radiology reports for image files, from a folder written by '
                    'python -m jima_jax.main --mode export.')
    parser.add_argument('--model', required=True, help='the export folder')
    parser.add_argument('--images', nargs='+', action='extend', default=[],
                        metavar='FILE[,FILE]', help='one study per value, its views joined by '
                        'commas (frontal first); a 2-view model repeats a lone view')
    parser.add_argument('--image_list', help='a file of studies: JSON lines {"id": ..., '
                        '"images": [...]} or lines path[,path]')
    parser.add_argument('--output', help='JSON lines file to write (default: stdout)')
    parser.add_argument('--token_logprobs', action='store_true',
                        help='add per-token log-probs to every line')
    parser.add_argument('--verbose', action='store_true', help='tracebacks on errors')
    args = parser.parse_args(argv)
    try:
        out = predict_exported(args.model, images=args.images, image_list=args.image_list,
                               output=args.output, with_token_logprobs=args.token_logprobs)
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as e:
        if args.verbose:
            raise
        print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
        return 2
    if out is not None:
        print(f'written to {out}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
