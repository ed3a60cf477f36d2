"""This process's input pipelines: the bridge between the JAX process layout and tf.data."""

from __future__ import annotations

import jax

from jima_jax.data import pipeline as pipeline_lib


def host_pipeline(split, icfg, seed: int) -> pipeline_lib.SplitPipeline:
    """The input pipeline of `split` for this process: its slice of every global batch (what
    `put_batch` expects), all of it in a one-process run."""
    return pipeline_lib.SplitPipeline(split, icfg, seed=seed, process_index=jax.process_index(),
                                      process_count=jax.process_count())
