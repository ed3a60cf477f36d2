"""`StudyBuilder`: one tfds builder for any `RawStudy` source.

What it does, in `_split_generators` (text side, all studies at once) and `_generate_examples`
(one study at a time, images loaded lazily):

1. clean every report (R2Gen convention); an empty report is an error naming the study, or is
   skipped and counted when `data.skip_bad_studies` is on;
2. train the tokenizer on the cleaned TRAINING reports only and save it to `extras_dir`;
3. tokenize (truncate to `data.max_len`), label with the team labeler, extract entity ids, and
   take the normal/abnormal label from the dataset (`data.abnormal_from == 'dataset'` and the
   source has one) or from the labeler;
4. re-encode the views: grayscale, resized to `data.image_size` square (`data.resize`: squashed, or
   the short side scaled and the central square kept), exactly `data.num_views`
   (fewer -> the last is repeated, more -> the first ones kept). A missing/corrupt image is an error
   naming the study and the file, or skipped and counted. Not done in reports-only mode.

Subclassing (one small class per dataset): set `name` (the `data.name` it serves), define
`read_studies(data_cfg)` (its source), and register the class in `builders/__init__.py`; override
`studies(dl_manager)` only to fetch files first (IU X-ray's download). Set `DEVICES_ARE_ABNORMAL`
to choose the labeler fallback convention (see `labeler.is_abnormal`). A source that knows each
study's true findings (the phantoms) sets `TRUTH_COLUMNS` and overrides `truth_labels(study)`;
the rows are stored as the `truth_labels` feature. Subclasses are kept out of the global tfds
registry (no name clashes with tfds' own catalogue) and found with `builder_class(name)` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from jima_jax.data import sources
from jima_jax.data.types import RawStudy, SPLITS
from jima_jax.text import cleaning, entities, labeler
from jima_jax.text.symbols import NUM_OBSERVATIONS, PAD_ID, UNK_ID
from jima_jax.text.tokenizer import Tokenizer
from jima_jax.data.images import (  # noqa: F401  (prepare-time resizing, TF-free)
    RESIZE_MODES, check_resize, fit_views)

TOKENIZER_FILE = 'tokenizer.model'


@dataclasses.dataclass
class Row:
    """One study after the text side, before its images are read."""

    id: str
    report: str
    tokens: np.ndarray  # int32[max_len]
    length: int
    entities: np.ndarray  # int32[max_entities], -1 padded
    abnormal: int
    labels: np.ndarray  # int8[14]
    load_views: Optional[Callable[[], Sequence[np.ndarray]]]
    truth: Optional[np.ndarray] = None  # int8[len(TRUTH_COLUMNS)] when the builder has them


def entity_ids(words: Iterable[str], tokenizer: Tokenizer, max_entities: int) -> np.ndarray:
    """Entity words -> unique vocabulary ids (unigram mode: every piece of the word), -1 padded."""
    ids: dict[int, None] = {}
    for w in words:
        for i in ([tokenizer.token_to_id(w)] if tokenizer.mode == 'word' else tokenizer.encode(w)):
            if i not in (UNK_ID, PAD_ID):
                ids.setdefault(int(i))
    out = np.full(max_entities, -1, np.int32)
    kept = list(ids)[:max_entities]
    out[:len(kept)] = kept
    return out


class StudyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Generic builder over `RawStudy` records (see the module docstring)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'Initial jima_jax prepared format.'}
    DEVICES_ARE_ABNORMAL = True
    TRUTH_COLUMNS: tuple[str, ...] = ()  # names of the `truth_labels` columns; () = none stored

    def __init_subclass__(cls, **kwargs):
        kwargs.setdefault('skip_registration', True)
        super().__init_subclass__(**kwargs)

    def __init__(self, *, data_cfg, data_dir: str, extras_dir: Optional[str] = None, **kwargs):
        self.data_cfg = data_cfg
        self.extras_dir = extras_dir
        self.skipped: dict[str, list[str]] = {'empty_report': [], 'bad_images': []}
        self.tokenizer: Optional[Tokenizer] = None
        super().__init__(data_dir=data_dir, **kwargs)

    # ------------------------------------------------------------------ override points
    @classmethod
    def read_studies(cls, data_cfg) -> Iterable[RawStudy]:
        """The dataset's RawStudy records, read from files already in place."""
        raise NotImplementedError(f'{cls.__name__} defines no read_studies(data_cfg): say where '
                                  'its studies come from (or override studies(dl_manager)).')

    def studies(self, dl_manager: tfds.download.DownloadManager) -> Iterable[RawStudy]:
        """The RawStudy records to prepare (default: `read_studies(data_cfg)`)."""
        del dl_manager
        return self.read_studies(self.data_cfg)

    def truth_labels(self, study: RawStudy) -> Optional[np.ndarray]:
        """The study's true findings as a row over TRUTH_COLUMNS (used only when that is set)."""
        del study
        return None

    # ------------------------------------------------------------------ tfds hooks
    def _info(self) -> tfds.core.DatasetInfo:
        c = self.data_cfg
        features = {
            'id': tfds.features.Text(),
            'report': tfds.features.Text(),
            'tokens': tfds.features.Tensor(shape=(c.max_len,), dtype=np.int32),
            'length': tfds.features.Scalar(dtype=np.int32),
            'entities': tfds.features.Tensor(shape=(c.max_entities,), dtype=np.int32),
            'abnormal': tfds.features.Scalar(dtype=np.int32),
            'labels': tfds.features.Tensor(shape=(NUM_OBSERVATIONS,), dtype=np.int32),
        }
        if self.TRUTH_COLUMNS:
            features['truth_labels'] = tfds.features.Tensor(shape=(len(self.TRUTH_COLUMNS),),
                                                            dtype=np.int32)
        if not c.reports_only:
            features['images'] = tfds.features.Tensor(
                shape=(c.num_views, c.image_size, c.image_size), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features), disable_shuffling=True,
            description=f"jima_jax prepared '{c.name}' (cleaned reports, token ids, labels, "
                        'entities' + ('' if c.reports_only else ', views') + ').')

    def _split_generators(self, dl_manager):
        rows = self._text_rows(list(self.studies(dl_manager)))
        return {split: self._generate_examples(r) for split, r in rows.items() if r}

    def _generate_examples(self, rows: Sequence[Row]) -> Iterator[tuple[str, dict]]:
        c = self.data_cfg
        for index, row in enumerate(rows):  # zero-padded keys keep the source order on disk
            example = dict(id=row.id, report=row.report, tokens=row.tokens, length=row.length,
                           entities=row.entities, abnormal=row.abnormal,
                           labels=row.labels.astype(np.int32))
            if self.TRUTH_COLUMNS:
                example['truth_labels'] = row.truth.astype(np.int32)
            if not c.reports_only:
                try:
                    if row.load_views is None:
                        raise sources.BadStudyError(f'study {row.id}: the source gives no images.')
                    example['images'] = fit_views(row.load_views(), c.num_views, c.image_size,
                                                  c.get('resize', 'square'))
                except (sources.BadStudyError, ValueError) as e:
                    if not getattr(c, 'skip_bad_studies', False):
                        raise sources.BadStudyError(
                            f'{e} Fix or remove the file, or set data.skip_bad_studies=True to '
                            'skip such studies.') from e
                    self.skipped['bad_images'].append(row.id)
                    continue
            yield f'{index:09d}', example

    # ------------------------------------------------------------------ text side
    def _text_rows(self, studies: list[RawStudy]) -> dict[str, list[Row]]:
        c = self.data_cfg
        seen: set[str] = set()
        cleaned: list[tuple[RawStudy, str]] = []
        for s in studies:
            if s.split not in SPLITS:
                raise ValueError(f'study {s.id}: split {s.split!r} is not one of {SPLITS}.')
            if s.id in seen:
                raise ValueError(f'study id {s.id} occurs twice in the source; ids must be unique.')
            seen.add(s.id)
            text = cleaning.clean_report(s.report) if isinstance(s.report, str) else ''
            if not text:
                if not getattr(c, 'skip_bad_studies', False):
                    raise ValueError(f'study {s.id}: empty or unreadable report '
                                     f'({s.report!r:.60}); fix the source or set '
                                     'data.skip_bad_studies=True to skip it.')
                self.skipped['empty_report'].append(s.id)
                continue
            cleaned.append((s, text))
        train = [t for s, t in cleaned if s.split == 'train']
        if not train:
            raise ValueError(f'dataset {c.name}: no training studies with a report; cannot train '
                             'the tokenizer.')
        tok = Tokenizer.train(train, mode=c.tokenizer, min_count=c.min_count,
                              vocab_size=c.vocab_size)
        self.tokenizer = tok
        if self.extras_dir:
            tok.save(f'{self.extras_dir}/{TOKENIZER_FILE}')
        labels = labeler.label_reports(t for _, t in cleaned)
        rows: dict[str, list[Row]] = {split: [] for split in SPLITS}
        for (s, text), lab in zip(cleaned, labels):
            ids = tok.encode(text)[:c.max_len]
            tokens = np.full(c.max_len, PAD_ID, np.int32)
            tokens[:len(ids)] = ids
            words = s.entities if c.entities == 'annotation' else entities.extract_entities(text)
            if words is None:
                raise ValueError(f"study {s.id}: data.entities='annotation' but the source gives "
                                 "no entities.")
            if c.abnormal_from == 'dataset' and s.abnormal is not None:
                abnormal = int(s.abnormal)
            elif c.abnormal_from in ('dataset', 'labeler'):
                abnormal = int(labeler.abnormal_from_labels(lab, devices=self.DEVICES_ARE_ABNORMAL))
            else:
                raise ValueError("data.abnormal_from must be 'dataset' or 'labeler', got "
                                 f"{c.abnormal_from!r}.")
            rows[s.split].append(Row(id=s.id, report=text, tokens=tokens, length=len(ids),
                                     entities=entity_ids(words, tok, c.max_entities),
                                     abnormal=abnormal, labels=lab, load_views=s.load_views,
                                     truth=self.truth_labels(s) if self.TRUTH_COLUMNS else None))
        return rows
