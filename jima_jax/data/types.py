"""The records that flow between the data stages: raw studies in, prepared arrays out.

Every dataset source (IU X-ray, MIMIC-CXR, the phantom corpora) yields `RawStudy` records; the
prepare stage turns them into a `PreparedDataset` (one `PreparedSplit` of host arrays per split,
plus the tokenizer and the frequency tables). The input pipeline and everything on the JAX side see
only `PreparedSplit`, so nothing downstream knows which source a study came from.

This module never imports JAX (house rule for `jima_jax.data`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence

import numpy as np

SPLITS = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class RawStudy:
    """One study as a source yields it, before cleaning, tokenization and labelling."""

    id: str
    split: str  # one of SPLITS
    report: str  # the raw findings text
    # Returns the views as grayscale uint8 HxW arrays (any size); None in reports-only mode.
    load_views: Optional[Callable[[], Sequence[np.ndarray]]] = None
    # Dataset-given normal(0)/abnormal(1) label (IU X-ray: MeSH "normal"); None -> derived from
    # the labeler's "No Finding".
    abnormal: Optional[int] = None
    # Precomputed entity words (the authors' release `tokens` field); None -> own lexicon.
    entities: Optional[tuple[str, ...]] = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class PreparedSplit:
    """One split held in host memory, in the form the input pipeline consumes (the images
    too, unless data.image_store='disk': then `images` is a `image_store.DiskImages`, an
    array-like that reads the rows asked for from disk).

    Arrays are indexed by example position `i` in [0, N); `ids[i]` is the study id. Curriculum
    state and data positions refer to these positions.
    """

    ids: np.ndarray  # [N] str
    reports: np.ndarray  # [N] object (Python str), cleaned reference text
    images: Optional[Any]  # [N, V, H, W] uint8 np.ndarray or DiskImages; None in reports-only mode
    tokens: np.ndarray  # [N, max_len] int32 report ids without bos/eos, PAD_ID padded, truncated
    lengths: np.ndarray  # [N] int32 number of report ids before padding (<= max_len)
    entities: np.ndarray  # [N, E] int32 vocabulary ids of the report's entity tokens, -1 padded
    abnormal: np.ndarray  # [N] int8: 1 abnormal, 0 normal
    labels: np.ndarray  # [N, NUM_OBSERVATIONS] int8 with the LABEL_* values (text.symbols)
    # Phantom datasets only: [N, 17] int8 1/0, the findings each image was DRAWN from (columns
    # `phantom_corpus.TRUTH_COLUMNS`: the 14 observations, then the 3 extra IU findings), the exact
    # truth that `labels` (read from the reference text) only approximates. None elsewhere.
    truth_labels: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __post_init__(self):
        n = len(self.ids)
        for name in ('reports', 'tokens', 'lengths', 'entities', 'abnormal', 'labels'):
            got = getattr(self, name).shape[0]
            if got != n:
                raise ValueError(f'PreparedSplit.{name} has {got} rows but ids has {n}.')
        for name in ('images', 'truth_labels'):
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f'PreparedSplit.{name} has {value.shape[0]} rows but ids has {n}.')

    def subset(self, index: np.ndarray) -> "PreparedSplit":
        """Rows `index` as a new split (used for eval subsets and tests); disk images stay on
        disk (`DiskImages.subset`)."""
        def rows(value):
            if value is None:
                return None
            if not isinstance(value, np.ndarray) and hasattr(value, 'subset'):
                return value.subset(index)
            return value[index]
        return PreparedSplit(**{f.name: rows(getattr(self, f.name))
                                for f in dataclasses.fields(self)})


@dataclasses.dataclass
class PreparedDataset:
    """All splits of one prepared dataset plus what was learned from its training split."""

    name: str
    splits: dict[str, PreparedSplit]
    tokenizer: Any  # jima_jax.text.tokenizer.Tokenizer
    tables: Any  # jima_jax.text.tables.FrequencyTables

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)
