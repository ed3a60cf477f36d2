"""tfds builders of the two phantom datasets, prepared like the real ones.

Both read their studies from `phantom_corpus`, and the prepare stage, the tables and everything
downstream treat them exactly as IU X-ray or MIMIC-CXR.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jima_jax.data import phantom_corpus
from jima_jax.data.builders.base import StudyBuilder
from jima_jax.data.types import RawStudy

_NOTES = {'1.0.0': 'Phantom renderer and report grammar v1 (jima_jax.data.phantom, '
                   'phantom_corpus).',
          '1.1.0': 'Adds truth_labels: the findings each image was drawn from.'}


class _DrawnTruth:
    """Stores each study's drawn findings as `truth_labels` (phantom_corpus puts them in meta)."""

    TRUTH_COLUMNS = phantom_corpus.TRUTH_COLUMNS

    def truth_labels(self, study: RawStudy) -> np.ndarray:
        findings = study.meta.get('findings')
        if findings is None:
            raise ValueError(f"study {study.id}: a phantom source must put its drawn findings in "
                             "RawStudy.meta['findings'] (see phantom_corpus._study).")
        return phantom_corpus.truth_labels(findings)


class Phantom(_DrawnTruth, StudyBuilder):
    """The built-in synthetic corpus (data.phantom.*): sampled findings -> images and reports."""

    name = 'phantom'
    VERSION = tfds.core.Version(phantom_corpus.VERSION)
    RELEASE_NOTES = _NOTES
    DEVICES_ARE_ABNORMAL = True  # a device is a finding of the phantom, as in IU's MeSH labels

    @classmethod
    def read_studies(cls, data_cfg):
        return phantom_corpus.synthetic_studies(data_cfg)


class IuPhantom(_DrawnTruth, StudyBuilder):
    """IU X-ray report text with phantom images of the findings each report states."""

    name = 'iu_phantom'
    VERSION = tfds.core.Version(phantom_corpus.VERSION)
    RELEASE_NOTES = _NOTES
    DEVICES_ARE_ABNORMAL = True

    @classmethod
    def read_studies(cls, data_cfg):
        return phantom_corpus.iu_phantom_studies(data_cfg)
