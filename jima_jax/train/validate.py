"""A split's losses, and reports generated for it and scored with the full evaluation suite.

The losses (teacher forcing, `evaluate_loss`) are what validation logs every evaluation. Reports
are used by `--mode eval` (every metric, METEOR included, files under `<workdir>/eval/<split>/`) and
by validation during training when `train.eval_decode` is on (no METEOR: no Java per epoch).
Besides the reference-text metrics: `distinct_reports` for every dataset and, on the phantom
datasets, the phantom-truth scores (`evaluation.phantom_truth`); a final evaluation (`out_dir`)
adds the two trivial baselines (most common training report, the reference itself).
"""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jima_jax import atomic, decode
from jima_jax.data.types import PreparedSplit
from jima_jax.evaluation import imbalance, phantom_truth, report as report_lib, score as score_lib
from jima_jax.runtime import parallel
from jima_jax.train import inputs, step as step_lib

if TYPE_CHECKING:  # only for annotations: predicting from an export folder imports no TensorFlow
    from jima_jax.train.run_setup import Setup


def make_eval_fn(run: Setup):
    """Jitted (params, stats, batch, tables) -> summed losses, batch split over the mesh."""
    rep, batch = parallel.replicated(run.mesh), parallel.batch_sharding(run.mesh)
    fn = step_lib.build_eval_step(run.modeldef, run.config, run.vocab_size)
    return jax.jit(fn, in_shardings=(run.state_sharding.params, run.state_sharding.batch_stats,
                                     batch, rep), out_shardings=rep)


def evaluate_loss(run: Setup, eval_fn, split_name: str, state=None,
                  shuffle_images: bool = False, tables=None) -> dict[str, float]:
    """Mean entity BCE and report NLL over a whole split (`<split>/loss/...`), weighted as in
    training (`run.loss_tables`) unless `tables` is given.

    `shuffle_images` gives every study the images of its neighbour in the batch (a roll by one):
    the losses a model earns without looking at its own image (`evaluate.image_reliance`).
    """
    state = run.state if state is None else state
    tables = run.loss_tables if tables is None else tables
    split = run.dataset.splits[split_name]
    if len(split) == 0:
        return {}
    pipe = inputs.host_pipeline(split, run.config.input, run.config.seed)
    sharding = parallel.batch_sharding(run.mesh)
    totals = None
    for batch in pipe.eval_batches():
        if shuffle_images:
            batch = dict(batch, images=np.roll(np.asarray(batch['images']), 1, axis=0))
        out = eval_fn(state.params, state.batch_stats, parallel.put_batch(batch, sharding),
                      tables)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    t = jax.device_get(totals)
    return {f'{split_name}/loss/{task}': float(t[f'{task}_sum'] / max(t[f'{task}_count'], 1))
            for task in ('entity', 'report') if f'{task}_sum' in t}  # no entity: R2Gen baseline


def make_generate(run: Setup):
    """The jitted generation function of a run, batch split over the mesh."""
    fn = decode.make_generate_fn(run.modeldef, run.config, run.vocab_size)
    return jax.jit(fn, in_shardings=(run.state_sharding.params, run.state_sharding.batch_stats,
                                     parallel.batch_sharding(run.mesh)))


def generate_split(run: Setup, generate_fn, split: PreparedSplit, state) -> dict:
    """Predicted reports (text), per-token log-probs and entity probabilities for `split` (one
    of the dataset's, or studies read for `--mode predict`)."""
    pipe = inputs.host_pipeline(split, run.config.input, run.config.seed)
    sharding = parallel.batch_sharding(run.mesh)
    tokens, logprobs, q, index = [], [], [], []
    for batch in pipe.eval_batches():
        images = parallel.put_batch({'images': batch['images']}, sharding)['images']
        out = parallel.to_host(generate_fn(state.params, state.batch_stats, images))
        keep = np.asarray(parallel.to_host(batch['mask'])) > 0
        idx = np.asarray(parallel.to_host(batch['index']))
        tokens.append(out['tokens'][keep])
        logprobs.append(out['logprobs'][keep])
        if 'entity_probs' in out:  # not from the R2Gen baseline (no f_E)
            q.append(out['entity_probs'][keep])
        index.append(idx[keep])
    index = np.concatenate(index)
    tok = run.dataset.tokenizer
    tokens = np.concatenate(tokens)
    return {'ids': [str(split.ids[i]) for i in index], 'index': index,
            'reports': [tok.decode([int(t) for t in row]) for row in tokens],
            'tokens': tokens, 'logprobs': np.concatenate(logprobs),
            'entity_probs': np.concatenate(q) if q else None}


def score_generated(run: Setup, split: PreparedSplit, generated: dict, *,
                    with_meteor: bool) -> tuple[dict, list[str]]:
    """Every metric of the suite; references, labels and normal/abnormal come from the split."""
    index = generated['index']
    ids = generated['ids']
    refs = {i: str(split.reports[k]) for i, k in zip(ids, index)}
    preds = dict(zip(ids, generated['reports']))
    order = np.argsort(np.asarray(ids))  # score_reports aligns label rows with sorted(ids)
    tok, tables = run.dataset.tokenizer, run.dataset.tables
    pred_entities = ref_entities = None  # no entity scores for the R2Gen baseline
    if generated['entity_probs'] is not None:
        pred_entities = dict(zip(ids, imbalance.entity_sets_from_scores(
            generated['entity_probs'])))
        ref_entities = dict(zip(ids, imbalance.entity_sets_from_ids(split.entities[index])))
    return score_lib.score_reports(
        refs, preds, abnormal={i: int(split.abnormal[k]) for i, k in zip(ids, index)},
        ref_labels=split.labels[index][order],
        token_counts=imbalance.counts_from_ids(tables.token_counts, tok.id_to_token),
        ref_entities=ref_entities, pred_entities=pred_entities,
        with_meteor=with_meteor)


def reading_results(run: Setup, split: PreparedSplit, generated: dict, *,
                    with_baselines: bool) -> dict:
    """Does the model read its images (`distinct_reports` comes with `score_generated`):
    phantom-truth scores when the split stores the drawn findings (phantom datasets). With
    `with_baselines`, distinct reports and phantom truth of the most common training report and
    of the references, and `phantom_truth/findings` (the macro-averaged finding names, a string:
    not for training logs)."""
    index = generated['index']
    out: dict = {}
    truth = None if split.truth_labels is None else split.truth_labels[index]
    if truth is not None:
        out.update(phantom_truth.scores(truth, generated['reports']))
    if with_baselines:
        refs = [str(split.reports[k]) for k in index]
        out.update(phantom_truth.baselines(refs, run.dataset.splits['train'].reports, truth))
        if truth is not None:
            out['phantom_truth/findings'] = ','.join(
                phantom_truth.finding_key(n) for n in phantom_truth.evaluated_findings(truth))
    return out


def mean_logprob(tokens: np.ndarray, logprobs: np.ndarray) -> float:
    """Mean log-prob over the generated tokens (PAD positions carry 0 and are not counted)."""
    return float(np.sum(logprobs[tokens != 0]) / max(int(np.sum(tokens != 0)), 1))


def write_predictions(path: pathlib.Path, split: PreparedSplit, generated: dict) -> None:
    """predictions.jsonl: id, generated report, reference, mean token log-prob."""
    lines = []
    for i, k, text, tokens, lp in zip(generated['ids'], generated['index'], generated['reports'],
                                      generated['tokens'], generated['logprobs']):
        lines.append(json.dumps({'id': i, 'report': text, 'reference': str(split.reports[k]),
                                 'mean_logprob': mean_logprob(tokens, lp)}))
    atomic.write_text(path, '\n'.join(lines) + '\n')


def evaluate_split(run: Setup, generate_fn, split_name: str, state, *, with_meteor: bool,
                   out_dir: Optional[pathlib.Path] = None) -> dict:
    """Generate + score one split; with `out_dir`, also write predictions, results and plots."""
    split = run.dataset.splits[split_name]
    if len(split) == 0:
        return {}
    generated = generate_split(run, generate_fn, split, state)
    results, notes = score_generated(run, split, generated, with_meteor=with_meteor)
    results.update(reading_results(run, split, generated, with_baselines=out_dir is not None))
    if split.truth_labels is not None:
        notes = list(notes) + ['Phantom truth: generated reports read by jima_jax.text.labeler '
                               '(uncertain = found) against the findings each image was drawn '
                               'from.']
    if out_dir is not None and jax.process_index() == 0:
        write_predictions(out_dir / 'predictions.jsonl', split, generated)
        report_lib.write_results(results, out_dir, notes=notes,
                                 dataset_name=report_lib.paper_dataset(run.config.data.name))
    return results
