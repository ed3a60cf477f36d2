"""This process's input pipelines: the bridge between the JAX process layout and tf.data."""

from __future__ import annotations

import jax

from jima_jax.data import phantom_renders, pipeline as pipeline_lib


def host_pipeline(split, icfg, seed: int, train_images=None) -> pipeline_lib.SplitPipeline:
    """The input pipeline of `split` for this process: its slice of every global batch (what
    `put_batch` expects), all of it in a one-process run."""
    return pipeline_lib.SplitPipeline(split, icfg, seed=seed, process_index=jax.process_index(),
                                      process_count=jax.process_count(),
                                      train_images=train_images)


def training_pipeline(config, split, icfg=None) -> pipeline_lib.SplitPipeline:
    """`host_pipeline` of the training split, with a new drawing of each phantom study every
    epoch when `data.phantom.train_renders` > 1 (`phantom_renders`)."""
    return host_pipeline(split, config.input if icfg is None else icfg, config.seed,
                         phantom_renders.train_images(config.data, split))
