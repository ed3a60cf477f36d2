"""`--mode export`: a trained run as one self-contained folder that predicts on its own.

A workdir cannot be handed to a colleague or a hospital: its checkpoints need the training code's
state layout, and the tokenizer and tables live with the prepared dataset. The export folder holds
everything `jima_jax.exported` needs to write reports for new images, and nothing else:

  <export>/
    manifest.json       format, version, and the sha256 of every other file (checked on load)
    params.safetensors  parameters and BatchNorm statistics, flat names 'params/visual/conv1/kernel'
                        and 'batch_stats/...' (readable by any safetensors reader)
    config.json         the run's resolved config (model.pretrained cleared: the weights are here)
    tokenizer.model     the sentencepiece vocabulary the model writes with
    tables.json/.npz    the training split's frequency tables (token, entity, label counts)
    card.json           training data, checkpoint, test metrics, labeler version, date
    MODEL_CARD.md       the same for people

The folder is built in a temporary sibling and renamed into place, so it is whole or absent. An
existing export of the same model is left alone; a different one is replaced only with
`force=True` (CLI --force); a folder that is not an export is never replaced.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import uuid
from typing import Optional

import numpy as np

from jima_jax import atomic, torch_files

FORMAT = 'jima_jax-export'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
PARAMS = 'params.safetensors'
CONFIG = 'config.json'
TOKENIZER = 'tokenizer.model'
TABLES_STEM = 'tables'
CARD_JSON = 'card.json'
CARD_MD = 'MODEL_CARD.md'
# Files predict needs (the cards are for people).
MODEL_FILES = (PARAMS, CONFIG, TOKENIZER, f'{TABLES_STEM}.json', f'{TABLES_STEM}.npz')
# Test metrics the card quotes from <workdir>/eval/test/results.json: (key, label).
CARD_METRICS = (
    ('BLEU_4', 'BLEU-4'),
    ('ce/micro_u0/f1', 'CE F1 (micro, uncertain = negative)'),
    ('ce/macro_u0/f1', 'CE F1 (macro, uncertain = negative)'),
    ('test/image_reliance/report', 'image reliance, report loss (nats/token)'),
    ('test/image_reliance/entity', 'image reliance, entity loss'),
    ('distinct_reports', 'distinct reports written for the test studies'),
    ('phantom_truth/macro_f1', 'phantom-truth F1 (macro)'),
    ('phantom_truth/micro_f1', 'phantom-truth F1 (micro)'),
    ('phantom_truth/baseline_most_common/macro_f1',
     'phantom-truth F1 (macro) of the most common training report, for comparison'),
)


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def labeler_version() -> str:
    """The report labeler's identity: a hash of its source and lexicon, since CE scores (and the
    card's metrics) change with either."""
    from jima_jax.text import labeler, lexicon
    h = hashlib.sha256()
    for module in (labeler, lexicon):
        h.update(pathlib.Path(module.__file__).read_bytes())
    return f'jima_jax.text.labeler sha256:{h.hexdigest()[:16]}'


def package_version() -> str:
    try:
        from importlib import metadata
        return metadata.version('jima_jax')
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return 'source'


def param_name(path) -> str:
    """'params/visual/conv1/kernel' for a pytree path of dict keys."""
    return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def flat_tensors(params: dict, batch_stats: dict) -> dict[str, np.ndarray]:
    import jax
    leaves = jax.tree_util.tree_flatten_with_path({'params': params,
                                                   'batch_stats': batch_stats})[0]
    return {param_name(path): np.asarray(jax.device_get(x)) for path, x in leaves}


def export_config(config) -> dict:
    """The config as it is stored: model.pretrained cleared (a path on the training machine; the
    weights it started from are part of the exported parameters)."""
    out = json.loads(config.to_json_best_effort())
    out['model']['pretrained'] = ''
    return out


def _restore(config, workdir: pathlib.Path, which: str, vocab_size: int):
    """(params, batch_stats, step, label) of the checkpoint eval would use (`which`: auto, best,
    latest or a step), restored onto one device, without the dataset."""
    import jax
    import ml_collections
    from jima_jax.model import jima
    from jima_jax.runtime import parallel
    from jima_jax.train import checkpoint, step as step_lib
    chosen = checkpoint.checkpoint_step(workdir, config.train, which)
    _, params, stats = step_lib.split_model(jima.build(config, vocab_size, abstract=True))
    host_state = jax.eval_shape(lambda p, s: step_lib.init_train_state(config, p, s),
                                params, stats)  # shapes only: nothing is initialised
    one = ml_collections.ConfigDict(config.parallel.to_dict())
    one.data, one.fsdp, one.shard_params = 1, 1, False
    mesh = parallel.make_mesh(one, devices=jax.devices()[:1])
    shardings = parallel.state_shardings(mesh, host_state, one)
    ck = checkpoint.Checkpointer(checkpoint.checkpoint_dir(workdir, config.train), config.train)
    try:
        restored = ck.restore(checkpoint.abstract_like(host_state, shardings), chosen)
    finally:
        ck.close()
    if restored is None:
        raise FileNotFoundError(f'{workdir}: no checkpoint to export; train first.')
    state, _ = restored
    return (state.params, state.batch_stats, int(jax.device_get(state.step)),
            checkpoint.checkpoint_label(which, chosen))


def _test_metrics(workdir: pathlib.Path, step: int) -> Optional[dict]:
    path = workdir / 'eval' / 'test' / 'results.json'
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except ValueError:
        return None
    metrics = {key: results[key] for key, _ in CARD_METRICS
               if isinstance(results.get(key), (int, float))}
    scored = results.get('step')
    return {'source': str(path), 'step': scored, 'same_checkpoint': scored == step,
            'metrics': metrics}


def make_card(config, *, step: int, chosen, workdir: pathlib.Path, prepared: dict,
              vocab_size: int) -> dict:
    from jima_jax.model import jima
    d = config.data
    return {
        'model': 'JIMA (Joint Imbalance Adaptation) radiology report generator, jima_jax',
        'jima_jax_version': package_version(),
        'exported': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'checkpoint': {'step': step, 'chosen': chosen, 'workdir': str(workdir)},
        'training_data': {'name': d.name, 'prepared': prepared.get('fingerprint'),
                          'studies': prepared.get('splits', {}),
                          'skipped': {k: len(v) for k, v in prepared.get('skipped', {}).items()}},
        'input': {'views': int(d.num_views), 'prepared_size': int(d.image_size),
                  'resize': d.get('resize', 'square'), 'model_size': int(config.input.image_size)},
        'vocabulary': {'tokenizer': d.tokenizer, 'size': vocab_size, 'max_len': int(d.max_len)},
        'architecture': {'backbone': config.model.backbone, 'width': int(config.model.width),
                         'encoder_layers': int(config.model.num_encoder_layers),
                         'decoder_layers': int(config.model.num_decoder_layers),
                         'entity_fusion': bool(config.model.entity_fusion),
                         'fusion': jima.fusion(config.model)},
        'decode': config.decode.to_dict(),
        'labeler': labeler_version(),
        'test': _test_metrics(workdir, step),
    }


def card_markdown(card: dict) -> str:
    data, test = card['training_data'], card['test']
    views = card['input']['views']
    studies = ', '.join(f'{k} {v}' for k, v in data['studies'].items())
    lines = [
        f'# Model card: {card["model"]}', '',
        f'Exported {card["exported"]} by jima_jax {card["jima_jax_version"]}, from checkpoint step '
        f'{card["checkpoint"]["step"]} ({card["checkpoint"]["chosen"]}) of '
        f'`{card["checkpoint"]["workdir"]}`.', '',
        '**Research code, not a medical device.** Generated reports are not a diagnosis.', '',
        '## Use', '',
        '```',
        f'python -m jima_jax.predict --model <this folder> --images '
        f'{"frontal.png,lateral.png" if views > 1 else "frontal.png"} [--output reports.jsonl]',
        '```', '',
        f'Input: {views} view(s) per study, any PNG/JPEG (converted to grayscale, resized to '
        f'{card["input"]["prepared_size"]} px ({card["input"]["resize"]}), then '
        f'{card["input"]["model_size"]} px).'
        + (' A study with one file repeats it as the second view.' if views > 1 else ''), '',
        '## Training data', '',
        f'Dataset `{data["name"]}` (prepared {data["prepared"]}): {studies} studies.'
        + (" Phantom data: synthetic images drawn from the reports' findings; a model trained on "
           'them does not read real radiographs.' if 'phantom' in data['name'] else ''), '',
        '## Test metrics', '']
    if not test or not test['metrics']:
        lines.append('None recorded: run `--mode eval` on the workdir, then export again with '
                     '--force.')
    else:
        labels = dict(CARD_METRICS)
        lines += ['| metric | value |', '|---|---|']
        lines += [f'| {labels[k]} | {v if k == "distinct_reports" else f"{v:.4f}"} |'
                  for k, v in test['metrics'].items()]
        lines.append('')
        lines.append(f'From `{test["source"]}`' + (
            '.' if test['same_checkpoint'] else
            f', scored at step {test["step"]}: NOT the exported step; re-run --mode eval.'))
        lines.append('Image reliance is how much the loss grows when each study gets another '
                     "study's images (0: the model ignores its images).")
    arch = card['architecture']
    lines += ['', '## Model', '',
              f'{arch["backbone"]}, Transformer width {arch["width"]} '
              f'({arch["encoder_layers"]} + {arch["decoder_layers"]} layers), entity fusion '
              f'{_fusion_words(arch)}; vocabulary '
              f'{card["vocabulary"]["size"]} ({card["vocabulary"]["tokenizer"]}); decoding '
              f'beam {card["decode"]["beam_size"]}, at most {card["decode"]["max_len"]} tokens.',
              f'Labeler (CE metrics): {card["labeler"]}.', '']
    return '\n'.join(lines)


def _fusion_words(arch: dict) -> str:
    if not arch['entity_fusion']:
        return 'off (R2Gen baseline)'
    kind = arch.get('fusion', 'cross')  # cards written before model.fusion existed
    return 'on (' + ("the paper's cross-concatenation product" if kind == 'cross'
                     else 'patches and q concatenated') + ')'


def prediction_keys(saved: dict) -> dict:
    """The config keys that change what the exported model writes for an image: the model, the
    decoding, and the data/input keys that fix its structure (jima_jax.run_config). Paths and
    training schedules are left out, so exporting a run again with another --config file that
    trains the same model is recognised as the same export."""
    from jima_jax import run_config
    flat = run_config.flat(saved)
    return {k: v for k, v in sorted(flat.items())
            if k.startswith(('model.', 'decode.')) or run_config.governed(k)
            or k == 'input.eval_batch_size'}


def _manifest(folder: pathlib.Path, step: int, config_json: dict) -> dict:
    files = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST)
    info = {name: {'sha256': sha256(folder / name), 'bytes': (folder / name).stat().st_size}
            for name in files}
    identity = hashlib.sha256(json.dumps(
        [[info[n]['sha256'] for n in MODEL_FILES if n != CONFIG],
         prediction_keys(config_json)], sort_keys=True, default=str).encode()).hexdigest()
    return {'format': FORMAT, 'version': FORMAT_VERSION, 'step': step, 'model_sha256': identity,
            'files': info}


def read_manifest(folder: pathlib.Path) -> Optional[dict]:
    """The manifest of an export folder, or None when `folder` is not one."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get('format') == FORMAT else None


def _same_model(a: dict, b: dict) -> bool:
    """Same weights, vocabulary, tables and prediction keys (the cards and dates may differ)."""
    return a.get('model_sha256') == b.get('model_sha256')


def _write(folder: pathlib.Path, config, workdir: pathlib.Path, which: str) -> dict:
    """Writes every file of the export into `folder`; returns its manifest."""
    from jima_jax.data import prepare
    from jima_jax.text import tables as tables_lib
    from jima_jax.text.tokenizer import Tokenizer
    prepared_dir = prepare.prepared_dir(config.data)
    if not (prepared_dir / prepare.MANIFEST).is_file():
        raise FileNotFoundError(
            f'{prepared_dir}: the prepared dataset this run trained on is missing; export reads '
            'its tokenizer and tables. Point JIMA_DATA_DIR (or data.data_dir) where it was '
            'prepared, or prepare it again with --mode prepare and the same config.')
    tokenizer = Tokenizer.load(prepared_dir / 'tokenizer.model')
    tables = tables_lib.FrequencyTables.load(prepared_dir / prepare.TABLES_STEM,
                                             tokenizer.fingerprint)
    params, stats, step, chosen = _restore(config, workdir, which, tokenizer.vocab_size)
    torch_files.write_safetensors(folder / PARAMS, flat_tensors(params, stats),
                                  metadata={'format': FORMAT, 'step': str(step)})
    config_json = export_config(config)
    atomic.write_text(folder / CONFIG, json.dumps(config_json, indent=1) + '\n')
    tokenizer.save(folder / TOKENIZER)
    tables.save(folder / TABLES_STEM)
    prepared = json.loads((prepared_dir / prepare.MANIFEST).read_text())
    card = make_card(config, step=step, chosen=chosen, workdir=workdir, prepared=prepared,
                     vocab_size=tokenizer.vocab_size)
    atomic.write_text(folder / CARD_JSON, json.dumps(card, indent=1) + '\n')
    atomic.write_text(folder / CARD_MD, card_markdown(card))
    manifest = _manifest(folder, step, config_json)
    atomic.write_text(folder / MANIFEST, json.dumps(manifest, indent=1) + '\n')
    return manifest


def export(config, workdir, export_dir: Optional[str] = None, *, which: str = 'auto',
           force: bool = False) -> tuple[pathlib.Path, str]:
    """Writes the export folder of `workdir` (default <workdir>/export); returns (its path, what
    happened: 'written', 'replaced' or 'unchanged')."""
    workdir = pathlib.Path(workdir)
    final = pathlib.Path(export_dir) if export_dir else workdir / 'export'
    existing = None
    if final.exists():
        existing = read_manifest(final)
        if existing is None and (not final.is_dir() or any(final.iterdir())):
            raise FileExistsError(f'{final} exists and is not a jima_jax export; choose another '
                                  '--export_dir (an existing folder is never overwritten).')
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f'.tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    staging.mkdir()
    try:
        manifest = _write(staging, config, workdir, which)
        if existing is not None and not force and _same_model(existing, manifest):
            return final, 'unchanged'
        if existing is not None and not force:
            raise FileExistsError(
                f'{final} holds another export (of step {existing.get("step")}), and this one '
                f'(step {manifest["step"]}) differs in its weights, decoding, structure or '
                'vocabulary. Pass --force to replace it, or choose another --export_dir.')
        old = None
        if final.exists():
            old = final.parent / f'.old-{final.name}-{uuid.uuid4().hex[:8]}'
            os.rename(final, old)
        os.rename(staging, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return final, 'replaced' if existing is not None else 'written'
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
