"""tfds builder for MIMIC-CXR (R2Gen-style annotation + MIMIC-CXR-JPG, user-supplied)."""

from __future__ import annotations

from jima_jax.data import sources
from jima_jax.data.builders.base import StudyBuilder


class MimicCxr(StudyBuilder):
    """MIMIC-CXR: normal iff "No Finding" (official CheXpert labels, else our labeler); support
    devices alone do not make a study abnormal (the paper's convention)."""

    name = 'mimic_cxr'
    DEVICES_ARE_ABNORMAL = False

    @classmethod
    def read_studies(cls, data_cfg):
        return sources.mimic_cxr_studies(data_cfg)
