"""tfds builders of the two phantom datasets, prepared like the real ones.

Both read their studies through `sources.get_studies` (-> `phantom_corpus`), so the prepare stage,
the tables and everything downstream treat them exactly as IU X-ray or MIMIC-CXR.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from jima_jax.data import phantom_corpus
from jima_jax.data.builders.base import StudyBuilder

_NOTES = {"1.0.0": "Phantom renderer and report grammar v1 (jima_jax.data.phantom, phantom_corpus)."}


class Phantom(StudyBuilder):
    """The built-in synthetic corpus (data.phantom.*): sampled findings -> images and reports."""

    name = "phantom"
    VERSION = tfds.core.Version(phantom_corpus.VERSION)
    RELEASE_NOTES = _NOTES
    DEVICES_ARE_ABNORMAL = True  # a device is a finding of the phantom, as in IU's MeSH labels


class IuPhantom(StudyBuilder):
    """IU X-ray report text with phantom images of the findings each report states."""

    name = "iu_phantom"
    VERSION = tfds.core.Version(phantom_corpus.VERSION)
    RELEASE_NOTES = _NOTES
    DEVICES_ARE_ABNORMAL = True
