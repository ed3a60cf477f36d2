"""Generate reports for a prepared split and score them with the full evaluation suite.

Used by `--mode eval` (every metric, METEOR included, files under `<workdir>/eval/<split>/`) and
by validation during training when `train.eval_decode` is on (no METEOR: no Java per epoch).
Besides the reference-text metrics: `distinct_reports` for every dataset and, on the phantom
datasets, the phantom-truth scores (`evaluation.phantom_truth`); a final evaluation (`out_dir`)
adds the two trivial baselines (most common training report, the reference itself).
"""

from __future__ import annotations

import json
import pathlib
from typing import Optional

import jax
import numpy as np

from jima_jax import atomic, decode
from jima_jax.data.types import PreparedSplit
from jima_jax.evaluation import imbalance, phantom_truth
from jima_jax.evaluation import report as report_lib, score as score_lib
from jima_jax.train import parallel



def make_generate(s):
    """The jitted generation function of a `loop.Setup`, batch split over the mesh."""
    fn = decode.make_generate_fn(s.modeldef, s.config, s.vocab_size)
    return jax.jit(fn, in_shardings=(s.state_sharding.params, s.state_sharding.batch_stats,
                                     parallel.batch_sharding(s.mesh)))


def generate_split(s, generate_fn, split_name: str, state) -> dict:
    """Predicted reports (text), per-token log-probs and entity probabilities for a split."""
    split = s.dataset.splits[split_name]
    pipe = parallel.host_pipeline(split, s.config.input, s.config.seed)
    sharding = parallel.batch_sharding(s.mesh)
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
    tok = s.dataset.tokenizer
    tokens = np.concatenate(tokens)
    return {'ids': [str(split.ids[i]) for i in index], 'index': index,
            'reports': [tok.decode([int(t) for t in row]) for row in tokens],
            'tokens': tokens, 'logprobs': np.concatenate(logprobs),
            'entity_probs': np.concatenate(q) if q else None}


def score_generated(s, split: PreparedSplit, generated: dict, *,
                    with_meteor: bool) -> tuple[dict, list[str]]:
    """Every metric of the suite; references, labels and normal/abnormal come from the split."""
    index = generated['index']
    ids = generated['ids']
    refs = {i: str(split.reports[k]) for i, k in zip(ids, index)}
    preds = dict(zip(ids, generated['reports']))
    order = np.argsort(np.asarray(ids))  # score_reports aligns label rows with sorted(ids)
    tok, tables = s.dataset.tokenizer, s.dataset.tables
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


def reading_results(s, split: PreparedSplit, generated: dict, *,
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
        out.update(phantom_truth.baselines(refs, s.dataset.splits['train'].reports, truth))
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


def evaluate_split(s, generate_fn, split_name: str, state, *, with_meteor: bool,
                   out_dir: Optional[pathlib.Path] = None) -> dict:
    """Generate + score one split; with `out_dir`, also write predictions, results and plots."""
    split = s.dataset.splits[split_name]
    if len(split) == 0:
        return {}
    generated = generate_split(s, generate_fn, split_name, state)
    results, notes = score_generated(s, split, generated, with_meteor=with_meteor)
    results.update(reading_results(s, split, generated, with_baselines=out_dir is not None))
    if split.truth_labels is not None:
        notes = list(notes) + ['Phantom truth: generated reports read by jima_jax.data.labeler '
                               '(uncertain = found) against the findings each image was drawn '
                               'from.']
    if out_dir is not None and jax.process_index() == 0:
        write_predictions(out_dir / 'predictions.jsonl', split, generated)
        report_lib.write_results(results, out_dir, notes=notes,
                                 dataset_name=report_lib.paper_dataset(s.config.data.name))
    return results
