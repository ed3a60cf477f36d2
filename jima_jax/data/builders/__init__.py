"""tfds builders of the prepared datasets; `builder_class(name)` finds the one for `data.name`."""

from __future__ import annotations

import importlib

# data.name -> module defining its StudyBuilder subclass.
BUILDER_MODULES = {
    "iu_xray": "jima_jax.data.builders.iu_xray",
    "mimic_cxr": "jima_jax.data.builders.mimic_cxr",
    "phantom": "jima_jax.data.builders.phantom",
    "iu_phantom": "jima_jax.data.builders.phantom",
}


def builder_class(name: str):
    """The StudyBuilder subclass serving `data.name == name`."""
    if name not in BUILDER_MODULES:
        raise ValueError(f"No builder for data.name={name!r}; known: {sorted(BUILDER_MODULES)}.")
    try:
        importlib.import_module(BUILDER_MODULES[name])
    except ModuleNotFoundError as e:
        if e.name != BUILDER_MODULES[name]:
            raise
        raise ValueError(f"No builder for data.name={name!r}: module {BUILDER_MODULES[name]} is missing.") from e
    from jima_jax.data.builders.base import registered_builders
    found = registered_builders().get(name)
    if found is None:
        raise ValueError(f"{BUILDER_MODULES[name]} defines no StudyBuilder with name = {name!r}.")
    return found
