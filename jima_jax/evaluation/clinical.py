"""Clinical efficacy (CE): observation labels of generated vs reference reports.

The field reports CE with different averaging and different treatments of "uncertain", usually
without saying which; here every number carries its variant's name:
`ce/<averaging>_<u0|u1>/<precision|recall|f1>` with averaging micro, macro or example and
uncertain read as negative (u0) or positive (u1). Blank (not mentioned) and negative are negative.
Ill-defined ratios (0/0) count as 0, as scikit-learn's `zero_division=0` does. docs/evaluation.md
gives the formulas.
"""

from __future__ import annotations

import csv
import pathlib
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from jima_jax.text import symbols

AVERAGINGS = ('micro', 'macro', 'example')
UNCERTAIN_AS = {'u0': 0, 'u1': 1}
VARIANTS = tuple(f'{a}_{u}' for a in AVERAGINGS for u in UNCERTAIN_AS)
_VALID = (symbols.LABEL_POSITIVE, symbols.LABEL_NEGATIVE, symbols.LABEL_UNCERTAIN,
          symbols.LABEL_BLANK)


def _check(labels: np.ndarray, name: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] != symbols.NUM_OBSERVATIONS or labels.shape[0] == 0:
        raise ValueError(f'{name} must have shape [N>0, {symbols.NUM_OBSERVATIONS}] '
                         f'(one column per symbols.OBSERVATIONS); got {labels.shape}.')
    bad = np.setdiff1d(np.unique(labels), _VALID)
    if bad.size:
        raise ValueError(f'{name} holds values {bad.tolist()}; expected the LABEL_* values '
                         f'{list(_VALID)} of jima_jax.text.symbols.')
    return labels


def positives(labels: np.ndarray, uncertain_as: int) -> np.ndarray:
    """Binary [N, 14] matrix: positive, plus uncertain when uncertain_as == 1."""
    pos = labels == symbols.LABEL_POSITIVE
    if uncertain_as:
        pos |= labels == symbols.LABEL_UNCERTAIN
    return pos


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def _prf(tp: np.ndarray, n_pred: np.ndarray, n_ref: np.ndarray) -> tuple:
    """Precision, recall and F1 (= 2tp / (n_pred + n_ref)) elementwise, 0 where undefined."""
    return _ratio(tp, n_pred), _ratio(tp, n_ref), _ratio(2 * tp, n_pred + n_ref)


def ce_metrics(ref_labels: np.ndarray, pred_labels: np.ndarray) -> dict[str, float]:
    """Precision / recall / F1 of all six variants; keys `ce/<variant>/<measure>`.

    micro: counts pooled over every (study, observation) cell. macro: per observation over the
    studies, then the plain mean over all 14 observations (F1 = mean of per-observation F1s).
    example: per study over its observations, then the mean over studies.
    """
    ref = _check(ref_labels, 'ref_labels')
    pred = _check(pred_labels, 'pred_labels')
    if ref.shape != pred.shape:
        raise ValueError(f'ref_labels {ref.shape} and pred_labels {pred.shape} differ in shape.')
    out: dict[str, float] = {}
    for u_name, u_value in UNCERTAIN_AS.items():
        y, yhat = positives(ref, u_value), positives(pred, u_value)
        tp = (y & yhat).astype(np.int64)
        for averaging in AVERAGINGS:
            if averaging == 'micro':
                p, r, f = _prf(tp.sum(), yhat.sum(), y.sum())
            else:
                axis = 0 if averaging == 'macro' else 1
                p, r, f = (v.mean() for v in _prf(tp.sum(axis), yhat.sum(axis), y.sum(axis)))
            for measure, value in zip(('precision', 'recall', 'f1'), (p, r, f)):
                out[f'ce/{averaging}_{u_name}/{measure}'] = float(value)
    return out


def label_and_score(references: Mapping[str, str], predictions: Mapping[str, str], *,
                    labeler: Optional[Callable[[Sequence[str]], np.ndarray]] = None
                    ) -> dict[str, float]:
    """Labels both sides with the same labeler (default: the package's rule-based
    `jima_jax.text.labeler.label_reports`) and returns `ce_metrics` over the common ids."""
    if set(references) != set(predictions):
        raise ValueError('references and predictions must cover the same study ids '
                         f'({len(set(references) ^ set(predictions))} id(s) differ).')
    if labeler is None:
        from jima_jax.text.labeler import label_reports as labeler
    ids = sorted(references)
    ref = labeler([references[i] for i in ids])
    pred = labeler([predictions[i] for i in ids])
    return ce_metrics(ref, pred)


def _parse_label(value: str, path: pathlib.Path, line: int, column: str) -> int:
    value = value.strip()
    if value == '':
        return symbols.LABEL_BLANK
    try:
        number = float(value)
    except ValueError:
        number = None
    if number not in (1.0, 0.0, -1.0, -2.0):
        raise ValueError(f'{path}:{line}: column {column!r} holds {value!r}; expected 1, 0, -1, '
                         '-2 or blank (CheXpert labeler output convention).')
    return int(number)


def load_label_file(path: str | pathlib.Path, ids: Sequence[str]) -> np.ndarray:
    """Reads observation labels in the CheXpert labeler's CSV output format for the studies `ids`.

    One column per observation name of symbols.OBSERVATIONS (1 positive, 0 negative, -1 uncertain,
    blank or -2 not mentioned). With an `id` column rows are matched by id; without one (the
    CheXpert labeler's own output) row k belongs to ids[k], so the labeler must have been run on
    the reports in that order.
    """
    path = pathlib.Path(path)
    try:
        with path.open(newline='', encoding='utf-8') as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]  # line_num: a record's last line
    except OSError as e:
        raise ValueError(f'cannot read label file {path}: {e}') from e
    if not rows:
        raise ValueError(f'{path}: no label rows.')
    missing = [o for o in symbols.OBSERVATIONS if o not in rows[0][1]]
    if missing:
        raise ValueError(f'{path}: missing observation column(s) {missing}; the header must name '
                         f'all of {list(symbols.OBSERVATIONS)}.')
    by_id: dict[str, np.ndarray] = {}
    for k, (line, row) in enumerate(rows):
        key = row['id'] if 'id' in row else (ids[k] if k < len(ids) else None)
        if key is None:
            raise ValueError(f'{path}: {len(rows)} rows but only {len(ids)} studies; without an '
                             '`id` column rows must match the reports one to one.')
        if key in by_id:
            raise ValueError(f'{path}:{line}: duplicate id {key!r}.')
        by_id[key] = np.array([_parse_label(row[o] or '', path, line, o)
                               for o in symbols.OBSERVATIONS], np.int8)
    absent = [i for i in ids if i not in by_id]
    if absent or len(by_id) != len(ids):
        raise ValueError(f'{path}: labels for {len(by_id)} studies, expected exactly the '
                         f'{len(ids)} scored ones; {len(absent)} missing (e.g. {absent[:5]}).')
    return np.stack([by_id[i] for i in ids])
