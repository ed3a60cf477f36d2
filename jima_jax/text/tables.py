"""Frequency tables from the TRAINING split: the numbers behind both imbalances (spec section 2, 4).

Token counts give the frequent/infrequent buckets and the per-token loss weights; label counts give
the normal/abnormal prevalence and per-example weights; entity counts give the BCE positive weights
of Task 1. Everything is computed once at prepare time and stored as one versioned file pair
(`<stem>.json` + `<stem>.npz`) that carries a content hash and the fingerprint of the tokenizer the
ids belong to, so a table can never be silently used with another vocabulary.

Ranking convention: PAD and BOS are never targets, so they are outside the ranked vocabulary
(`frequent_mask` False, `frequency_groups` -1); every other id (EOS and UNK included) is ranked by
training count, ties broken by the smaller id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import pathlib
from typing import Protocol, Sequence

import numpy as np

from jima_jax import atomic
from jima_jax.text.symbols import (BOS_ID, EOS_ID, LABEL_BLANK, LABEL_NEGATIVE, LABEL_POSITIVE,
                                   LABEL_UNCERTAIN, NUM_OBSERVATIONS, OBSERVATIONS, PAD_ID)

TABLES_VERSION = 1
# Column order of `label_counts`.
LABEL_VALUES = (LABEL_POSITIVE, LABEL_NEGATIVE, LABEL_UNCERTAIN, LABEL_BLANK)
_REBUILD = ('Rebuild the prepared dataset: delete its directory and re-run '
            '`python -m jima_jax.main --mode prepare --config ...`.')


def _normalise_to_token_mean(weights: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Scales weights so the mean over all training token occurrences is 1."""
    total = counts.sum()
    if total == 0:
        raise ValueError('Frequency tables hold no training tokens; cannot normalise token '
                         'weights.')
    return weights / (np.dot(counts, weights) / total)


@dataclasses.dataclass(frozen=True)
class FrequencyTables:
    vocab_size: int
    tokenizer_fingerprint: str
    num_examples: int
    abnormal_count: int
    token_counts: np.ndarray  # int64[V]: occurrences among training targets (EOS once per report)
    entity_counts: np.ndarray  # int64[V]: training studies whose entity set holds the id
    label_counts: np.ndarray  # int64[14, 4]: studies per observation and LABEL_VALUES column

    def __post_init__(self):
        for name in ('token_counts', 'entity_counts'):
            if getattr(self, name).shape != (self.vocab_size,):
                raise ValueError(f'FrequencyTables.{name} has shape {getattr(self, name).shape}, '
                                 f'expected ({self.vocab_size},).')
        if self.label_counts.shape != (NUM_OBSERVATIONS, len(LABEL_VALUES)):
            raise ValueError(f'FrequencyTables.label_counts has shape {self.label_counts.shape}.')

    # ------------------------------------------------------------------ derived views
    @property
    def content_hash(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps([TABLES_VERSION, self.vocab_size, self.tokenizer_fingerprint,
                             self.num_examples, self.abnormal_count]).encode())
        for a in (self.token_counts, self.entity_counts, self.label_counts):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
        return h.hexdigest()

    def label_count(self, observation: str, value: int) -> int:
        """Training studies with `value` (a LABEL_*) for `observation`."""
        return int(self.label_counts[OBSERVATIONS.index(observation), LABEL_VALUES.index(value)])

    def ranking(self) -> np.ndarray:
        """Ranked ids, most frequent first (PAD and BOS excluded, ties by smaller id)."""
        ids = np.array([i for i in range(self.vocab_size) if i not in (PAD_ID, BOS_ID)], np.int64)
        return ids[np.lexsort((ids, -self.token_counts[ids]))]

    def frequent_mask(self, fraction: float) -> np.ndarray:
        """bool[V]: the top round(fraction * ranked vocabulary size) ids by training count."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f'frequent_mask fraction must be in (0, 1], got {fraction}.')
        ranked = self.ranking()
        mask = np.zeros(self.vocab_size, bool)
        mask[ranked[:int(round(fraction * len(ranked)))]] = True
        return mask

    def frequency_groups(self, n: int = 5) -> np.ndarray:
        """int[V]: n near-equal groups of the ranked vocabulary, 0 = most frequent; PAD/BOS -1."""
        groups = np.full(self.vocab_size, -1, np.int64)
        for g, ids in enumerate(np.array_split(self.ranking(), n)):
            groups[ids] = g
        return groups

    # ------------------------------------------------------------------ loss weights
    def token_loss_weights(self, scheme: str = 'none', alpha: float = 0.5,
                           beta: float = 0.999) -> np.ndarray:
        """float32[V] weights for L2, mean 1 over training token occurrences; unseen ids get
        the max.

        inverse_power: count^-alpha. effective_number: (1 - beta) / (1 - beta^count).
        """
        if scheme == 'none':
            return np.ones(self.vocab_size, np.float32)
        counts = self.token_counts.astype(np.float64)
        seen = counts > 0
        if not seen.any():
            raise ValueError('No training tokens counted; cannot build token weights.')
        w = np.zeros(self.vocab_size)
        if scheme == 'inverse_power':
            w[seen] = counts[seen] ** -alpha
        elif scheme == 'effective_number':
            if not 0.0 <= beta < 1.0:
                raise ValueError('effective_number needs 0 <= beta < 1 (config loss.token_beta), '
                                 f'got {beta}.')
            w[seen] = (1.0 - beta) / (1.0 - beta ** counts[seen])
        else:
            raise ValueError(f'Unknown token weighting {scheme!r}; use none | inverse_power | '
                             'effective_number (config loss.token_weighting).')
        w = _normalise_to_token_mean(w, counts)
        w[~seen] = w[seen].max()
        return w.astype(np.float32)

    def example_loss_weight(self, abnormal: np.ndarray, scheme: str = 'none',
                            strength: float = 1.0) -> np.ndarray:
        """float32[N] per-example weights; inverse_prevalence: (1 / share of the class)^strength,
        scaled so the training-set mean is 1. A class absent from training gets weight 1 before
        scaling."""
        abnormal = np.asarray(abnormal).astype(bool)
        if scheme == 'none':
            return np.ones(abnormal.shape, np.float32)
        if scheme != 'inverse_prevalence':
            raise ValueError(f'Unknown example weighting {scheme!r}; use none | inverse_prevalence '
                             '(config loss.example_weighting).')
        if self.num_examples == 0:
            raise ValueError('Frequency tables hold no training examples.')
        p_abn = self.abnormal_count / self.num_examples
        shares = np.array([1.0 - p_abn, p_abn])
        w = np.ones(2)
        present = shares > 0
        w[present] = shares[present] ** -strength
        w = w / np.dot(shares, w)
        return w[abnormal.astype(np.int64)].astype(np.float32)

    def entity_pos_weights(self, scheme: str = 'none', max_weight: float = 50.0) -> np.ndarray:
        """float32[V] BCE positive weights: negatives / positives per id, capped at max_weight
        (ids never an entity get max_weight)."""
        if scheme == 'none':
            return np.ones(self.vocab_size, np.float32)
        if scheme != 'inverse_frequency':
            raise ValueError(f'Unknown entity weighting {scheme!r}; use none | inverse_frequency '
                             '(config loss.entity_pos_weighting).')
        pos = self.entity_counts.astype(np.float64)
        neg = self.num_examples - pos
        w = np.full(self.vocab_size, float(max_weight))
        np.divide(neg, pos, out=w, where=pos > 0)
        return np.minimum(w, max_weight).astype(np.float32)

    # ------------------------------------------------------------------ report
    def summary(self) -> str:
        """Human-readable digest printed after prepare."""
        total = int(self.token_counts.sum())
        top8 = self.frequent_mask(1 / 8)
        share = self.token_counts[top8].sum() / max(total, 1)
        normal = 1.0 - self.abnormal_count / max(self.num_examples, 1)
        positives = {o: self.label_count(o, LABEL_POSITIVE) for o in OBSERVATIONS[1:]}
        rare = sorted(positives.items(), key=lambda kv: (kv[1], kv[0]))[:4]
        entity_ids = int((self.entity_counts > 0).sum())
        lines = [
            f'training studies        {self.num_examples}',
            f'vocabulary size         {self.vocab_size} '
            f'(tokenizer {self.tokenizer_fingerprint[:12]})',
            f'training tokens         {total} (EOS counted once per report)',
            f'top 1/8 of vocabulary   {int(top8.sum())} ids cover {share:.1%} of token occurrences',
            f'normal share            {normal:.1%} '
            f'({self.num_examples - self.abnormal_count} normal / '
            f'{self.abnormal_count} abnormal)',
            f'entity vocabulary       {entity_ids} ids, '
            f'{self.entity_counts.sum() / max(self.num_examples, 1):.1f} entities per study',
            'rarest observations     ' + ', '.join(f'{o} {n}' for o, n in rare),
        ]
        return '\n'.join(lines)

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> None:
        """Writes `<path>.npz` then `<path>.json` (the JSON names the npz and its hash)."""
        stem = pathlib.Path(path).with_suffix('')
        stem.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, token_counts=self.token_counts, entity_counts=self.entity_counts,
                 label_counts=self.label_counts)
        atomic.write_bytes(stem.with_suffix('.npz'), buf.getvalue())
        meta = dict(version=TABLES_VERSION, vocab_size=self.vocab_size,
                    tokenizer_fingerprint=self.tokenizer_fingerprint,
                    num_examples=self.num_examples, abnormal_count=self.abnormal_count,
                    label_values=list(LABEL_VALUES), observations=list(OBSERVATIONS),
                    arrays=stem.with_suffix('.npz').name, content_hash=self.content_hash)
        atomic.write_bytes(stem.with_suffix('.json'), json.dumps(meta, indent=1).encode())

    @classmethod
    def load(cls, path: str | os.PathLike,
             tokenizer_fingerprint: str | None = None) -> "FrequencyTables":
        """Reads a saved pair; checks version, content hash and (if given) the tokenizer
        fingerprint."""
        stem = pathlib.Path(path).with_suffix('')
        meta_path = stem.with_suffix('.json')
        if not meta_path.is_file():
            raise FileNotFoundError(f'Frequency tables {meta_path} not found. {_REBUILD}')
        meta = json.loads(meta_path.read_text())
        if meta.get('version') != TABLES_VERSION:
            raise ValueError(f"{meta_path}: tables version {meta.get('version')} != "
                             f'{TABLES_VERSION}. {_REBUILD}')
        with np.load(stem.parent / meta['arrays']) as arrays:
            tables = cls(vocab_size=int(meta['vocab_size']),
                         tokenizer_fingerprint=str(meta['tokenizer_fingerprint']),
                         num_examples=int(meta['num_examples']),
                         abnormal_count=int(meta['abnormal_count']),
                         token_counts=arrays['token_counts'].astype(np.int64),
                         entity_counts=arrays['entity_counts'].astype(np.int64),
                         label_counts=arrays['label_counts'].astype(np.int64))
        if tables.content_hash != meta['content_hash']:
            raise ValueError(f'{meta_path}: content hash mismatch (the .npz was changed or is '
                             f'corrupt). {_REBUILD}')
        if (tokenizer_fingerprint is not None
                and tokenizer_fingerprint != tables.tokenizer_fingerprint):
            raise ValueError(f'{meta_path}: built for tokenizer '
                             f'{tables.tokenizer_fingerprint[:12]}, but the tokenizer in use is '
                             f'{tokenizer_fingerprint[:12]}. {_REBUILD}')
        return tables


class CountedSplit(Protocol):
    """What the counts read of a split (`jima_jax.data.types.PreparedSplit` has it all), so the
    text package does not depend on the data records."""
    ids: Sequence
    tokens: np.ndarray
    lengths: np.ndarray
    entities: np.ndarray
    labels: np.ndarray
    abnormal: np.ndarray

    def __len__(self) -> int: ...


def compute_tables(split: CountedSplit, vocab_size: int,
                   tokenizer_fingerprint: str) -> FrequencyTables:
    """Counts over a (training) split: targets = tokens[:length] + one EOS per report."""
    n = len(split)
    token_counts = np.zeros(vocab_size, np.int64)
    entity_counts = np.zeros(vocab_size, np.int64)
    for i in range(n):
        ids = split.tokens[i, :int(split.lengths[i])]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f'Study {split.ids[i]}: token id outside [0, {vocab_size}).')
        token_counts += np.bincount(ids, minlength=vocab_size)
        ents = np.unique(split.entities[i][split.entities[i] >= 0])
        entity_counts[ents] += 1
    token_counts[EOS_ID] += n
    label_counts = np.stack([(split.labels == v).sum(axis=0) for v in LABEL_VALUES], axis=1)
    return FrequencyTables(vocab_size=int(vocab_size), tokenizer_fingerprint=tokenizer_fingerprint,
                           num_examples=n,
                           abnormal_count=int(np.asarray(split.abnormal).astype(bool).sum()),
                           token_counts=token_counts, entity_counts=entity_counts,
                           label_counts=label_counts.astype(np.int64))
