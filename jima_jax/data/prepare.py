"""The prepare stage: raw dataset -> prepared directory -> `PreparedDataset` in host memory.

Layout of one prepared dataset (built in a temporary sibling directory and renamed into place, so
a half-written one is never seen; the manifest is what marks it complete):

  <data_dir>/<name>/<fingerprint>/
    prepared.json        manifest: config keys, counts, skipped studies, hashes, summary
    tokenizer.model      sentencepiece model trained on the training reports
    tables.json/.npz     frequency tables of the training split (see tables.py)
    tfds/<name>/1.0.0/   the tfds dataset (tfds data_dir; nothing goes to ~/tensorflow_datasets)
    images-<split>.u8    data.image_store='disk' only: the split's images as one raw file,
                         written at the first load (image_store.py), rebuilt when stale

`<fingerprint>` hashes the data-config keys that change the result, so two configs share a
prepared dataset exactly when they would produce the same one. data_dir = data.data_dir, else
$JIMA_DATA_DIR, else ~/.cache/jima_jax. Raw files are not hashed: pass force=True (CLI --force)
after changing them.

CLI: python -m jima_jax.data.prepare --config configs/default.py --config.data.name=iu_xray \
       --config.data.reports_only=True [--download] [--force]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
from typing import Any

import numpy as np

from jima_jax.data import builders, image_store
from jima_jax.data.builders.base import check_resize, TOKENIZER_FILE
from jima_jax.data.types import PreparedDataset, PreparedSplit, SPLITS
from jima_jax.text import tables as tables_lib
from jima_jax.text.symbols import NUM_OBSERVATIONS
from jima_jax.text.tokenizer import Tokenizer

PREPARE_VERSION = 1  # bump when the prepared format or the text processing changes
MANIFEST = 'prepared.json'
TABLES_STEM = 'tables'
_KEYS = ('name', 'source_dir', 'manual_dir', 'reports_only', 'tokenizer', 'min_count', 'vocab_size',
         'max_len', 'max_entities', 'entities', 'abnormal_from')
_IMAGE_KEYS = ('num_views', 'image_size')
_READ_BATCH = 256
_IMAGE_BATCH_BYTES = 8 << 20  # bytes per read when streaming a split's images into its file

log = logging.getLogger(__name__)


def data_root(data_cfg) -> pathlib.Path:
    root = data_cfg.data_dir or os.environ.get('JIMA_DATA_DIR') or '~/.cache/jima_jax'
    return pathlib.Path(root).expanduser()


def _fingerprint_inputs(data_cfg) -> dict[str, Any]:
    keys = _KEYS + (() if data_cfg.reports_only else _IMAGE_KEYS)
    out = {k: data_cfg[k] for k in keys}
    out['skip_bad_studies'] = bool(getattr(data_cfg, 'skip_bad_studies', False))
    resize = check_resize(data_cfg.get('resize', 'square'))
    if resize != 'square' and not data_cfg.reports_only:  # square: fingerprints as before
        out['resize'] = resize
    if data_cfg.name in builders.DRAWN:
        from jima_jax.data import phantom_corpus  # the phantom format has its own version
        # train_renders only adds drawings at training time (phantom_renders), beside this data
        out['phantom'] = {k: v for k, v in data_cfg.phantom.to_dict().items()
                          if k != 'train_renders'}
        out['phantom_version'] = phantom_corpus.VERSION
    out['prepare_version'] = PREPARE_VERSION
    return out


def config_fingerprint(data_cfg) -> str:
    """16 hex digits identifying the prepared result of this data config."""
    blob = json.dumps(_fingerprint_inputs(data_cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepared_dir(data_cfg) -> pathlib.Path:
    return data_root(data_cfg) / data_cfg.name / config_fingerprint(data_cfg)


def _keep_tf_on_host() -> None:
    """Prepare is host work: hide accelerators from TF and keep its thread pools small."""
    import tensorflow as tf
    try:
        tf.config.set_visible_devices([], 'GPU')
        tf.config.set_visible_devices([], 'TPU')
        tf.config.threading.set_inter_op_parallelism_threads(2)
        tf.config.threading.set_intra_op_parallelism_threads(2)
    except (RuntimeError, ValueError):
        pass  # TF already initialised by the caller; its settings stand


def _builder(data_cfg, path: pathlib.Path, builder_cls=None, **kwargs):
    cls = builder_cls or builders.builder_class(data_cfg.name)
    return cls(data_cfg=data_cfg, data_dir=str(path / 'tfds'), **kwargs)


def prepare_dataset(data_cfg, *, download: bool = False, force: bool = False,
                    builder_cls=None) -> pathlib.Path:
    """Builds the prepared directory for `data_cfg` unless it exists; returns its path.

    download=True lets a builder fetch public archives (IU X-ray: OpenI); never used by tests.
    builder_cls overrides `builders.builder_class(data_cfg.name)` (custom sources, tests).
    """
    import tensorflow_datasets as tfds

    image_store_mode(data_cfg)  # a bad value fails before a long prepare, not after it
    final = prepared_dir(data_cfg)
    if (final / MANIFEST).is_file() and not force:
        return final
    _keep_tf_on_host()
    tfds.disable_progress_bar()
    staging = final.parent / f'.tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}'
    staging.mkdir(parents=True)
    try:
        builder = _builder(data_cfg, staging, builder_cls, extras_dir=str(staging))
        builder.allow_download = download
        builder.download_and_prepare(
            download_dir=str(data_root(data_cfg) / 'downloads'),
            download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir or None))
        tokenizer = Tokenizer.load(staging / TOKENIZER_FILE)
        train = _read_split(builder, 'train', data_cfg, images=False)  # tables need no images
        tables = tables_lib.compute_tables(train, tokenizer.vocab_size, tokenizer.fingerprint)
        tables.save(staging / TABLES_STEM)
        manifest = dict(
            name=data_cfg.name, fingerprint=final.name, config=_fingerprint_inputs(data_cfg),
            splits={s: int(builder.info.splits[s].num_examples) if s in builder.info.splits else 0
                    for s in SPLITS},
            skipped=builder.skipped, tokenizer_fingerprint=tokenizer.fingerprint,
            vocab_size=tokenizer.vocab_size, tables_hash=tables.content_hash,
            summary=tables.summary())
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
        if final.exists():
            shutil.rmtree(final)
        try:
            os.rename(staging, final)
        except OSError:
            if not (final / MANIFEST).is_file():  # not a concurrent prepare that won the race
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    skipped = {k: len(v) for k, v in builder.skipped.items() if v}
    log.info('prepared %s at %s%s\n%s', data_cfg.name, final,
             f' (skipped {skipped})' if skipped else '', tables.summary())
    return final


def _empty_split(data_cfg, truth_columns: int = 0) -> PreparedSplit:
    c = data_cfg
    return PreparedSplit(
        ids=np.zeros(0, str), reports=np.zeros(0, str),
        images=(None if c.reports_only
                else np.zeros((0, c.num_views, c.image_size, c.image_size), np.uint8)),
        tokens=np.zeros((0, c.max_len), np.int32), lengths=np.zeros(0, np.int32),
        entities=np.zeros((0, c.max_entities), np.int32), abnormal=np.zeros(0, np.int8),
        labels=np.zeros((0, NUM_OBSERVATIONS), np.int8),
        truth_labels=np.zeros((0, truth_columns), np.int8) if truth_columns else None)


def _one_pass():
    """tfds reading for one pass: no auto-cache (tfds caches a dataset under 250 MiB in memory
    during the first pass, for passes that never come; streaming the images would then hold
    them all)."""
    import tensorflow_datasets as tfds
    return tfds.ReadConfig(try_autocache=False)


def _read_split(builder, split: str, data_cfg, images: bool = True) -> PreparedSplit:
    """One tfds split -> PreparedSplit (batched reads into preallocated arrays). images=False:
    the images are neither decoded nor kept (`images` is None; the disk store adds them)."""
    import tensorflow_datasets as tfds

    truth = builder.info.features['truth_labels'].shape[0] if (
        'truth_labels' in builder.info.features) else 0
    if split not in builder.info.splits:
        out = _empty_split(data_cfg, truth)
        return out if images else dataclasses.replace(out, images=None)
    n = int(builder.info.splits[split].num_examples)
    out = _empty_split(data_cfg, truth)
    arrays = {k: np.zeros((n,) + v.shape[1:], v.dtype) for k, v in vars(out).items()
              if isinstance(v, np.ndarray) and k not in ('ids', 'reports')
              and (images or k != 'images')}
    ids, reports = [], []
    decoders = None if 'images' in arrays or 'images' not in builder.info.features else (
        tfds.decode.PartialDecoding({k: True for k in builder.info.features if k != 'images'}))
    ds = builder.as_dataset(split=split, batch_size=_READ_BATCH, shuffle_files=False,
                            decoders=decoders, read_config=_one_pass())
    pos = 0
    for batch in tfds.as_numpy(ds):
        m = len(batch['id'])
        sl = slice(pos, pos + m)
        ids += [b.decode() for b in batch['id']]
        reports += [b.decode() for b in batch['report']]
        arrays['tokens'][sl] = batch['tokens']
        arrays['lengths'][sl] = batch['length']
        arrays['entities'][sl] = batch['entities']
        arrays['abnormal'][sl] = batch['abnormal']
        arrays['labels'][sl] = batch['labels']
        if 'truth_labels' in arrays:
            arrays['truth_labels'][sl] = batch['truth_labels']
        if 'images' in arrays:
            arrays['images'][sl] = batch['images']
        pos += m
    if pos != n:
        raise ValueError(f'{builder.data_dir}: split {split} holds {pos} examples, info says {n}. '
                         'Delete the prepared directory and prepare again.')
    # Reports as Python strings: a fixed-width numpy str array costs 4 bytes x the longest report
    # for every study (gigabytes per process at MIMIC-CXR scale).
    return PreparedSplit(ids=np.asarray(ids, str), reports=np.asarray(reports, object),
                         images=arrays.get('images'),
                         **{k: v for k, v in arrays.items() if k != 'images'})


def image_store_mode(data_cfg) -> str:
    """`data.image_store` ('memory' when a config predates the key), validated."""
    return image_store.check_mode(data_cfg.get('image_store', 'memory'))


def _split_source(builder, split: str, path: pathlib.Path) -> str:
    """16 hex digits naming the tfds split a store file is streamed from: the prepared
    directory, the split's counts and byte size, and its shard files' names and sizes. Cheap
    (no data read); a re-prepared directory (--force) starts without store files anyway."""
    info = builder.info.splits[split]
    feature = builder.info.features['images']
    paths = getattr(info, 'filepaths', None) or [  # older tfds: names only
        os.path.join(builder.data_dir, name) for name in info.filenames]
    blob = json.dumps(dict(
        prepared=path.name, dataset=builder.info.full_name, split=split,
        examples=int(info.num_examples), bytes=int(info.num_bytes),
        shards=[int(k) for k in info.shard_lengths],
        files=sorted((pathlib.Path(str(p)).name, os.path.getsize(str(p))) for p in paths),
        images=[list(feature.shape), np.dtype(feature.np_dtype).name]), sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _image_batches(builder, split: str, row_bytes: int):
    """The split's images in order, a bounded batch at a time (nothing else decoded)."""
    import tensorflow_datasets as tfds

    rows = max(1, _IMAGE_BATCH_BYTES // max(row_bytes, 1))
    ds = builder.as_dataset(split=split, batch_size=rows, shuffle_files=False,
                            decoders=tfds.decode.PartialDecoding({'images': True}),
                            read_config=_one_pass())
    for batch in tfds.as_numpy(ds):
        yield batch['images']


def _disk_images(builder, split: str, data_cfg, path: pathlib.Path):
    """The split's images as a `DiskImages` over `images-<split>.u8`, streamed from the tfds
    split into that file first when it is missing or stale (an empty split: an empty array)."""
    c = data_cfg
    n = int(builder.info.splits[split].num_examples) if split in builder.info.splits else 0
    shape = (n, c.num_views, c.image_size, c.image_size)
    if n == 0:
        return np.zeros(shape, np.uint8)
    row_bytes = c.num_views * c.image_size * c.image_size
    return image_store.open_or_build(image_store.store_path(path, split), shape,
                                     _split_source(builder, split, path),
                                     lambda: _image_batches(builder, split, row_bytes))


def load_prepared(data_cfg, *, builder_cls=None) -> PreparedDataset:
    """Prepares `data_cfg` if needed, then reads every split into host memory: all of it with
    data.image_store='memory'; with 'disk' all but the images, which stay in one file per split
    (written at the first load; every process of a job can call this at once: the file is built
    once per file system where file locks work, and safely by several processes elsewhere)."""
    mode = image_store_mode(data_cfg)
    path = prepare_dataset(data_cfg, builder_cls=builder_cls)
    _keep_tf_on_host()
    tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    tables = tables_lib.FrequencyTables.load(path / TABLES_STEM, tokenizer.fingerprint)
    builder = _builder(data_cfg, path, builder_cls)
    if mode == 'disk' and not data_cfg.reports_only:
        splits = {s: dataclasses.replace(_read_split(builder, s, data_cfg, images=False),
                                         images=_disk_images(builder, s, data_cfg, path))
                  for s in SPLITS}
    else:
        splits = {s: _read_split(builder, s, data_cfg) for s in SPLITS}
    return PreparedDataset(name=data_cfg.name, splits=splits, tokenizer=tokenizer, tables=tables)


def main(argv) -> None:
    del argv
    from absl import flags

    cfg = flags.FLAGS.config
    path = prepare_dataset(cfg.data, download=flags.FLAGS.download, force=flags.FLAGS.force)
    manifest = json.loads((path / MANIFEST).read_text())
    skipped = {k: len(v) for k, v in manifest['skipped'].items()}
    print(f"{path}\nsplits {manifest['splits']}, skipped {skipped}")


if __name__ == '__main__':
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file('config', None, 'config file (see configs/default.py)')
    flags.DEFINE_bool('download', False, 'allow fetching public archives (IU X-ray OpenI)')
    flags.DEFINE_bool('force', False, 'rebuild even if the prepared directory exists')
    flags.mark_flags_as_required(['config'])
    logging.basicConfig(level=logging.INFO)
    app.run(main)
