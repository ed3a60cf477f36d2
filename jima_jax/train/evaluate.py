"""`--mode eval`: every metric of one split for a checkpoint of a run, written to eval/<split>/.

Apart from training: it restores the checkpoint `--checkpoint` names (`checkpoint.checkpoint_step`)
and scores it with plain (unweighted) losses, image reliance and the generated reports' metrics.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections

from jima_jax.evaluation import report as report_lib
from jima_jax.runtime import parallel
from jima_jax.train import checkpoint, losses, validate
from jima_jax.train.run_setup import Setup, setup


def plain_loss_tables(run: Setup) -> losses.LossTables:
    """All weights 1, placed like `run.loss_tables`: test losses and image reliance are plain
    per-token NLL / BCE whatever the training reweighting, so runs with and without
    `loss.token_weighting` etc. compare on one scale."""
    return jax.device_put(losses.LossTables.uniform(run.vocab_size),
                          parallel.replicated(run.mesh))


def image_reliance(run: Setup, eval_fn, split_name: str, losses_now: dict,
                   tables=None) -> dict[str, float]:
    """How much worse the losses get when each study is given another study's images.

    A model that reads the radiograph loses nats per token when the images are swapped; one that
    has only learnt the corpus's language (a common failure on small data: the same fluent report
    for every study) loses nothing. Reported as `<split>/image_reliance/{report,entity}` =
    shuffled loss - true loss.
    """
    shuffled = validate.evaluate_loss(run, eval_fn, split_name, shuffle_images=True,
                                      tables=tables)
    return {f'{split_name}/image_reliance/{task}':
            shuffled[f'{split_name}/loss/{task}'] - losses_now[f'{split_name}/loss/{task}']
            for task in ('report', 'entity') if f'{split_name}/loss/{task}' in shuffled}


def evaluate(config: ml_collections.ConfigDict, workdir: str, split_name: str = 'test',
             which: str = 'auto') -> dict:
    """Every metric on `split_name` for a checkpoint of `workdir` (`which`: see
    checkpoint.checkpoint_step; results say which one: `checkpoint` 'best' / 'latest' / the step
    asked for, and `step`); writes eval/<split>/."""
    workdir = pathlib.Path(workdir)
    step = checkpoint.checkpoint_step(workdir, config.train, which)
    run = setup(config, workdir, step=step)
    if split_name not in run.dataset.splits or len(run.dataset.splits[split_name]) == 0:
        raise ValueError(f'--split={split_name!r}: the dataset has non-empty splits '
                         f'{[k for k, v in run.dataset.splits.items() if len(v)]}.')
    result = {'checkpoint': checkpoint.checkpoint_label(which, step),
              'step': int(jax.device_get(run.state.step))}
    eval_fn = validate.make_eval_fn(run)
    plain = plain_loss_tables(run)  # unweighted, comparable across loss settings
    result.update(validate.evaluate_loss(run, eval_fn, split_name, tables=plain))
    result.update(image_reliance(run, eval_fn, split_name, result, tables=plain))
    out = run.workdir / 'eval' / split_name
    result.update(validate.evaluate_split(run, validate.make_generate(run), split_name, run.state,
                                          with_meteor=True, out_dir=out))
    run.checkpointer.close()
    if jax.process_index() == 0:  # rewrite with the loss keys included
        report_lib.write_results(result, out,
                                 dataset_name=report_lib.paper_dataset(config.data.name))
    return result
