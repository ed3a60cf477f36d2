"""The dataset registry: every accepted `data.name` and the tfds builder that prepares it.

This table is the one place a dataset is named. Its builder class says where the studies come
from (`StudyBuilder.read_studies`) and how they are labelled; `prepare` builds it and
`get_studies` reads its sources directly. A new dataset is one `StudyBuilder` subclass and one
line here. Builder modules are imported on first use (they load tensorflow_datasets).
"""

from __future__ import annotations

import importlib
from typing import Iterable

from jima_jax.data.types import RawStudy

# data.name -> "module:class" of its StudyBuilder subclass.
DATASETS = {
    'phantom': 'jima_jax.data.builders.phantom:Phantom',
    'iu_phantom': 'jima_jax.data.builders.phantom:IuPhantom',
    'iu_xray': 'jima_jax.data.builders.iu_xray:IuXray',
    'mimic_cxr': 'jima_jax.data.builders.mimic_cxr:MimicCxr',
}
NAMES = tuple(DATASETS)
# The datasets whose images the phantom renderer draws (docs/phantom.md): their prepared data
# depend on data.phantom.*, and their training studies can be drawn again (phantom_renders).
DRAWN = ('phantom', 'iu_phantom')


def builder_class(name: str):
    """The StudyBuilder subclass serving `data.name == name`."""
    if name not in DATASETS:
        raise ValueError(f'No builder for data.name={name!r}; expected one of {list(NAMES)} '
                         '(registered in jima_jax/data/builders/__init__.py).')
    module, cls = DATASETS[name].split(':')
    found = getattr(importlib.import_module(module), cls)
    if found.name != name:
        raise ValueError(f'{module}.{cls}.name is {found.name!r}, but jima_jax/data/builders/'
                         f'__init__.py registers it as {name!r}; make the two agree.')
    return found


def get_studies(data_cfg) -> Iterable[RawStudy]:
    """RawStudy records of the dataset named `data_cfg.name`, from files already in place."""
    return builder_class(data_cfg.name).read_studies(data_cfg)
