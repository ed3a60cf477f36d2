"""The prepare stage: raw dataset -> prepared directory -> `PreparedDataset` in host memory.

Layout of one prepared dataset (built in a temporary sibling directory and renamed into place, so
a half-written one is never seen; the manifest is what marks it complete):

  <data_dir>/<name>/<fingerprint>/
    prepared.json        manifest: config keys, counts, skipped studies, hashes, summary
    tokenizer.model      sentencepiece model trained on the training reports
    tables.json/.npz     frequency tables of the training split (see tables.py)
    tfds/<name>/1.0.0/   the tfds dataset (tfds data_dir; nothing goes to ~/tensorflow_datasets)

`<fingerprint>` hashes the data-config keys that change the result, so two configs share a
prepared dataset exactly when they would produce the same one. data_dir = data.data_dir, else
$JIMA_DATA_DIR, else ~/.cache/jima_jax. Raw files are not hashed: pass force=True (CLI --force)
after changing them.

CLI: python -m jima_jax.data.prepare --config configs/default.py --config.data.name=iu_xray \
       --config.data.reports_only=True [--download] [--force]
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
from typing import Any

import numpy as np

from jima_jax.data import builders, tables as tables_lib
from jima_jax.data.builders.base import TOKENIZER_FILE, check_resize
from jima_jax.data.tokenizer import Tokenizer
from jima_jax.data.types import (NUM_OBSERVATIONS, SPLITS, PreparedDataset, PreparedSplit)

PREPARE_VERSION = 1  # bump when the prepared format or the text processing changes
MANIFEST = "prepared.json"
TABLES_STEM = "tables"
_KEYS = ("name", "source_dir", "manual_dir", "reports_only", "tokenizer", "min_count", "vocab_size",
         "max_len", "max_entities", "entities", "abnormal_from")
_IMAGE_KEYS = ("num_views", "image_size")
_READ_BATCH = 256

log = logging.getLogger(__name__)


def data_root(data_cfg) -> pathlib.Path:
    root = data_cfg.data_dir or os.environ.get("JIMA_DATA_DIR") or "~/.cache/jima_jax"
    return pathlib.Path(root).expanduser()


def _fingerprint_inputs(data_cfg) -> dict[str, Any]:
    keys = _KEYS + (() if data_cfg.reports_only else _IMAGE_KEYS)
    out = {k: data_cfg[k] for k in keys}
    out["skip_bad_studies"] = bool(getattr(data_cfg, "skip_bad_studies", False))
    resize = check_resize(data_cfg.get("resize", "square"))
    if resize != "square" and not data_cfg.reports_only:  # square: fingerprints as before
        out["resize"] = resize
    if data_cfg.name in ("phantom", "iu_phantom"):
        from jima_jax.data import phantom_corpus  # the phantom format has its own version
        out["phantom"] = data_cfg.phantom.to_dict()
        out["phantom_version"] = phantom_corpus.VERSION
    out["prepare_version"] = PREPARE_VERSION
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
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_visible_devices([], "TPU")
        tf.config.threading.set_inter_op_parallelism_threads(2)
        tf.config.threading.set_intra_op_parallelism_threads(2)
    except (RuntimeError, ValueError):
        pass  # TF already initialised by the caller; its settings stand


def _builder(data_cfg, path: pathlib.Path, builder_cls=None, **kwargs):
    cls = builder_cls or builders.builder_class(data_cfg.name)
    return cls(data_cfg=data_cfg, data_dir=str(path / "tfds"), **kwargs)


def prepare_dataset(data_cfg, *, download: bool = False, force: bool = False,
                    builder_cls=None) -> pathlib.Path:
    """Builds the prepared directory for `data_cfg` unless it exists; returns its path.

    download=True lets a builder fetch public archives (IU X-ray: OpenI); never used by tests.
    builder_cls overrides `builders.builder_class(data_cfg.name)` (custom sources, tests).
    """
    import tensorflow_datasets as tfds

    final = prepared_dir(data_cfg)
    if (final / MANIFEST).is_file() and not force:
        return final
    _keep_tf_on_host()
    tfds.disable_progress_bar()
    staging = final.parent / f".tmp-{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        builder = _builder(data_cfg, staging, builder_cls, extras_dir=str(staging))
        builder.allow_download = download
        builder.download_and_prepare(
            download_dir=str(data_root(data_cfg) / "downloads"),
            download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir or None))
        tokenizer = Tokenizer.load(staging / TOKENIZER_FILE)
        train = _read_split(builder, "train", data_cfg)
        tables = tables_lib.compute_tables(train, tokenizer.vocab_size, tokenizer.fingerprint)
        tables.save(staging / TABLES_STEM)
        manifest = dict(
            name=data_cfg.name, fingerprint=final.name, config=_fingerprint_inputs(data_cfg),
            splits={s: int(builder.info.splits[s].num_examples) if s in builder.info.splits else 0
                    for s in SPLITS},
            skipped=builder.skipped, tokenizer_fingerprint=tokenizer.fingerprint,
            vocab_size=tokenizer.vocab_size, tables_hash=tables.content_hash, summary=tables.summary())
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
    log.info("prepared %s at %s%s\n%s", data_cfg.name, final,
             f" (skipped {skipped})" if skipped else "", tables.summary())
    return final


def _empty_split(data_cfg, truth_columns: int = 0) -> PreparedSplit:
    c = data_cfg
    return PreparedSplit(
        ids=np.zeros(0, str), reports=np.zeros(0, str),
        images=None if c.reports_only else np.zeros((0, c.num_views, c.image_size, c.image_size), np.uint8),
        tokens=np.zeros((0, c.max_len), np.int32), lengths=np.zeros(0, np.int32),
        entities=np.zeros((0, c.max_entities), np.int32), abnormal=np.zeros(0, np.int8),
        labels=np.zeros((0, NUM_OBSERVATIONS), np.int8),
        truth_labels=np.zeros((0, truth_columns), np.int8) if truth_columns else None)


def _read_split(builder, split: str, data_cfg) -> PreparedSplit:
    """One tfds split -> PreparedSplit (batched reads into preallocated arrays)."""
    import tensorflow_datasets as tfds

    truth = builder.info.features["truth_labels"].shape[0] if (
        "truth_labels" in builder.info.features) else 0
    if split not in builder.info.splits:
        return _empty_split(data_cfg, truth)
    n = int(builder.info.splits[split].num_examples)
    out = _empty_split(data_cfg, truth)
    arrays = {k: np.zeros((n,) + v.shape[1:], v.dtype) for k, v in vars(out).items()
              if isinstance(v, np.ndarray) and k not in ("ids", "reports")}
    ids, reports = [], []
    ds = builder.as_dataset(split=split, batch_size=_READ_BATCH, shuffle_files=False)
    pos = 0
    for batch in tfds.as_numpy(ds):
        m = len(batch["id"])
        sl = slice(pos, pos + m)
        ids += [b.decode() for b in batch["id"]]
        reports += [b.decode() for b in batch["report"]]
        arrays["tokens"][sl] = batch["tokens"]
        arrays["lengths"][sl] = batch["length"]
        arrays["entities"][sl] = batch["entities"]
        arrays["abnormal"][sl] = batch["abnormal"]
        arrays["labels"][sl] = batch["labels"]
        if "truth_labels" in arrays:
            arrays["truth_labels"][sl] = batch["truth_labels"]
        if "images" in arrays:
            arrays["images"][sl] = batch["images"]
        pos += m
    if pos != n:
        raise ValueError(f"{builder.data_dir}: split {split} holds {pos} examples, info says {n}. "
                         "Delete the prepared directory and prepare again.")
    return PreparedSplit(ids=np.asarray(ids, str), reports=np.asarray(reports, str),
                         images=arrays.get("images"), **{k: v for k, v in arrays.items() if k != "images"})


def load_prepared(data_cfg, *, builder_cls=None) -> PreparedDataset:
    """Prepares `data_cfg` if needed, then reads every split into host memory."""
    path = prepare_dataset(data_cfg, builder_cls=builder_cls)
    _keep_tf_on_host()
    tokenizer = Tokenizer.load(path / TOKENIZER_FILE)
    tables = tables_lib.FrequencyTables.load(path / TABLES_STEM, tokenizer.fingerprint)
    builder = _builder(data_cfg, path, builder_cls)
    splits = {s: _read_split(builder, s, data_cfg) for s in SPLITS}
    return PreparedDataset(name=data_cfg.name, splits=splits, tokenizer=tokenizer, tables=tables)


def main(argv) -> None:
    del argv
    from absl import flags

    cfg = flags.FLAGS.config
    path = prepare_dataset(cfg.data, download=flags.FLAGS.download, force=flags.FLAGS.force)
    manifest = json.loads((path / MANIFEST).read_text())
    skipped = {k: len(v) for k, v in manifest["skipped"].items()}
    print(f"{path}\nsplits {manifest['splits']}, skipped {skipped}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "config file (see configs/default.py)")
    flags.DEFINE_bool("download", False, "allow fetching public archives (IU X-ray OpenI)")
    flags.DEFINE_bool("force", False, "rebuild even if the prepared directory exists")
    flags.mark_flags_as_required(["config"])
    logging.basicConfig(level=logging.INFO)
    app.run(main)
