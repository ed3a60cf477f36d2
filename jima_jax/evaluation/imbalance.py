"""Imbalance breakdowns (spec section 7): token-frequency buckets, normal vs abnormal, entities.

Token buckets come from training-split frequency ranks: frequent = the top 1/8 (1/6, 1/4) of the
ranked vocabulary, infrequent = the rest; or five equal-size groups (0 = most frequent). Per
study, bucket tokens of the reference and of the prediction are counted with repetitions; the
matched ones are the reference's bucket tokens that the prediction also holds, each prediction
token matching at most one reference token (clipped counts); the counts are summed over the test
set before dividing (micro average). docs/evaluation.md has the exact rules.
"""

from __future__ import annotations

import fractions
from collections import Counter
from typing import Callable, Hashable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from jima_jax.evaluation import nlg
from jima_jax.text import symbols

SPLITS = ('1/8', '1/6', '1/4')
NUM_GROUPS = 5
FREQUENT, INFREQUENT = 0, 1

TokenCounts = Mapping[str, int]
EntitySets = Union[Mapping[str, Iterable[Hashable]], Sequence[Iterable[Hashable]]]


def split_name(split: str) -> str:
    """'1/8' -> '1_8' (the form used in result keys)."""
    return split.replace('/', '_')


def word_counts(texts: Iterable[str]) -> dict[str, int]:
    """Whitespace-token counts of some reports (e.g. the training split's cleaned reports)."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(text.split())
    return dict(counts)


def counts_from_ids(token_counts: np.ndarray,
                    id_to_token: Callable[[int], str]) -> dict[str, int]:
    """Word counts from a frequency table (`FrequencyTables.token_counts` +
    `Tokenizer.id_to_token`), dropping the reserved pad/bos/eos/unk ids, which never appear in
    report text."""
    counts = np.asarray(token_counts)
    return {id_to_token(i): int(counts[i])
            for i in range(symbols.NUM_SPECIAL_TOKENS, counts.shape[0])}


def rank_tokens(token_counts: TokenCounts) -> list[str]:
    """Tokens by training count, most frequent first; ties broken by the token string."""
    return sorted(token_counts, key=lambda t: (-token_counts[t], t))


def frequent_buckets(token_counts: TokenCounts, fraction: str | float) -> dict[str, int]:
    """Token -> FREQUENT for the top max(1, round(V * fraction)) ranked tokens (the rounding of
    FrequencyTables.frequent_mask), else INFREQUENT."""
    ranked = rank_tokens(token_counts)
    n_frequent = max(1, round(fractions.Fraction(fraction) * len(ranked)))
    return {t: FREQUENT if k < n_frequent else INFREQUENT for k, t in enumerate(ranked)}


def frequency_groups(token_counts: TokenCounts, num_groups: int = NUM_GROUPS) -> dict[str, int]:
    """Token -> group 0..num_groups-1 of near-equal size along the ranking (0 most frequent;
    when V is not divisible the first V % num_groups groups hold one token more)."""
    ranked = rank_tokens(token_counts)
    groups = np.array_split(np.arange(len(ranked)), num_groups)
    return {ranked[k]: g for g, members in enumerate(groups) for k in members}


def token_bucket_prf(references: Mapping[str, str], predictions: Mapping[str, str],
                     bucket_of: Mapping[str, int], num_buckets: int) -> list[dict[str, float]]:
    """Per bucket b: precision, recall, F1 and the raw counts (ref, pred, matched).

    Tokens absent from `bucket_of` (never seen in training) belong to the last bucket, the
    least frequent one. Buckets with no tokens on a side get 0 for the undefined ratio.
    """
    _, refs, preds = nlg.align(references, predictions)
    last = num_buckets - 1
    ref_n = np.zeros(num_buckets, np.int64)
    pred_n = np.zeros(num_buckets, np.int64)
    matched = np.zeros(num_buckets, np.int64)
    for ref, pred in zip(refs, preds):
        ref_c, pred_c = Counter(ref), Counter(pred)
        for token, count in ref_c.items():
            b = bucket_of.get(token, last)
            ref_n[b] += count
            matched[b] += min(count, pred_c.get(token, 0))
        for token, count in pred_c.items():
            pred_n[bucket_of.get(token, last)] += count
    out = []
    for b in range(num_buckets):
        p = matched[b] / pred_n[b] if pred_n[b] else 0.0
        r = matched[b] / ref_n[b] if ref_n[b] else 0.0
        f = 2 * matched[b] / (pred_n[b] + ref_n[b]) if pred_n[b] + ref_n[b] else 0.0
        out.append({'precision': float(p), 'recall': float(r), 'f1': float(f),
                    'ref_tokens': int(ref_n[b]), 'pred_tokens': int(pred_n[b]),
                    'matched': int(matched[b])})
    return out


def token_imbalance(references: Mapping[str, str], predictions: Mapping[str, str],
                    token_counts: TokenCounts) -> dict[str, float]:
    """All token-bucket results with flat keys: `token_{precision,recall,f1}/<1_8|1_6|1_4>/
    {frequent,infrequent}` and `token_{precision,recall,f1}/group<k>` for k = 0..4."""
    if not token_counts:
        raise ValueError("token_counts is empty: pass the training split's token counts.")
    out: dict[str, float] = {}
    for split in SPLITS:
        buckets = token_bucket_prf(references, predictions,
                                   frequent_buckets(token_counts, split), 2)
        for name, stats in zip(('frequent', 'infrequent'), buckets):
            for measure in ('precision', 'recall', 'f1'):
                out[f'token_{measure}/{split_name(split)}/{name}'] = stats[measure]
    groups = token_bucket_prf(references, predictions, frequency_groups(token_counts), NUM_GROUPS)
    for g, stats in enumerate(groups):
        for measure in ('precision', 'recall', 'f1'):
            out[f'token_{measure}/group{g}'] = stats[measure]
    return out


def subset_nlg(references: Mapping[str, str], predictions: Mapping[str, str],
               abnormal: Mapping[str, int], *, with_meteor: bool = True,
               include_overall: bool = False) -> dict[str, Optional[float]]:
    """Every NLG metric on the normal and on the abnormal studies (CIDEr's document frequencies
    from each subset's own references), keys `<metric>/normal|abnormal`, plus `count/<subset>`.

    include_overall adds the unsuffixed whole-set metrics, so that METEOR's Java starts once.
    """
    missing = [i for i in references if i not in abnormal]
    if missing:
        raise ValueError(f'abnormal labels missing for {len(missing)} studies '
                         f'(e.g. {missing[:5]}).')
    subsets = {name: [i for i in references if int(abnormal[i]) == flag]
               for name, flag in (('normal', 0), ('abnormal', 1))}
    groups = {name: ids for name, ids in subsets.items() if ids}
    if include_overall:
        groups[''] = list(references)
    scores = nlg.compute_nlg_groups(references, predictions, groups, with_meteor=with_meteor)
    out: dict[str, Optional[float]] = {f'count/{name}': float(len(ids))
                                       for name, ids in subsets.items()}
    for name, values in scores.items():
        out.update({(f'{k}/{name}' if name else k): v for k, v in values.items()})
    return out


def _as_sets(entities: EntitySets, ids: Optional[Sequence[str]]) -> list[set]:
    if isinstance(entities, Mapping):
        return [set(entities[i]) for i in ids]
    return [set(e) for e in entities]


def entity_prf(ref_entities: EntitySets, pred_entities: EntitySets) -> dict[str, float]:
    """Task 1 entity precision / recall / F1, micro-averaged over studies (set overlap per study,
    counts summed): keys `entity/{precision,recall,f1}`. Inputs are aligned sequences of entity
    collections (tokens or vocabulary ids) or mappings id -> collection with the same ids."""
    ids = None
    if isinstance(ref_entities, Mapping) or isinstance(pred_entities, Mapping):
        if not (isinstance(ref_entities, Mapping) and isinstance(pred_entities, Mapping)):
            raise ValueError('pass both entity inputs as mappings id -> entities, or both as '
                             'sequences.')
        if set(ref_entities) != set(pred_entities):
            raise ValueError('reference and predicted entities must cover the same study ids.')
        ids = sorted(ref_entities)
    refs, preds = _as_sets(ref_entities, ids), _as_sets(pred_entities, ids)
    if len(refs) != len(preds):
        raise ValueError(f'{len(refs)} reference entity sets but {len(preds)} predicted ones.')
    tp = sum(len(r & p) for r, p in zip(refs, preds))
    n_ref, n_pred = sum(map(len, refs)), sum(map(len, preds))
    return {'entity/precision': tp / n_pred if n_pred else 0.0,
            'entity/recall': tp / n_ref if n_ref else 0.0,
            'entity/f1': 2 * tp / (n_ref + n_pred) if n_ref + n_pred else 0.0}


def entity_sets_from_ids(entity_ids: np.ndarray) -> list[frozenset]:
    """Rows of a -1 padded [N, E] id array (PreparedSplit.entities) as sets of ids."""
    return [frozenset(int(v) for v in row if v >= 0) for row in np.asarray(entity_ids)]


def entity_sets_from_scores(scores: np.ndarray, threshold: float = 0.5) -> list[frozenset]:
    """Predicted entity sets from Task 1 probabilities q [N, V]: ids with q >= threshold."""
    return [frozenset(np.flatnonzero(row >= threshold).tolist()) for row in np.asarray(scores)]
