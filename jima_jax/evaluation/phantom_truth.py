"""Phantom-truth evaluation: generated reports against the findings each image was DRAWN from.

Why: BLEU and CE compare a report with the reference TEXT, so a model that writes the corpus's most
typical report scores well without looking at the radiograph. On the phantom corpora the truth is
known exactly (`PreparedSplit.truth_labels`), so here we ask whether the report says what the image
shows. Definitions (docs/evaluation.md, "Phantom truth"):

- A report is READ by the package labeler (`jima_jax.text.labeler`). A finding is FOUND when the
  labeler marks it positive or uncertain (a hedged mention counts as found, as the iu_phantom
  source draws an uncertain mention as a mild finding). The three non-CheXpert findings are the
  labeler's "Other finding" mentions (not negated) that `phantom_corpus.EXTRA_PATTERNS` name, the
  rule the iu_phantom source uses to draw them.
- FINDINGS: the 16 drawable findings (`TRUTH_COLUMNS` without "No Finding"). Per finding f:
  TP/FP/FN over studies, P = TP/(TP+FP), R = TP/(TP+FN), F1 = 2TP/(2TP+FP+FN), 0 when 0/0.
- Macro P/R/F1: plain mean over the findings with at least one positive in the drawn truth of the
  scored studies (`evaluated_findings`; others have no recall). Micro: counts pooled over all 16
  findings, so claiming a finding that no study shows still costs precision.
- abnormal_recall: among studies whose drawn findings are not empty, the share whose report the
  labeler reads as abnormal, i.e. it finds at least one of the 16 findings or any other abnormal
  finding of its lexicon (= `labeler.is_abnormal(devices=True)`, except that an empty report is
  normal). normal_recall: among studies drawn with no finding, the share read as normal.
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import numpy as np

from jima_jax.data import phantom_corpus
from jima_jax.text import labeler, symbols

PREFIX = 'phantom_truth'
FINDINGS = phantom_corpus.TRUTH_COLUMNS[1:]  # every column but "No Finding"
_LABEL_INDEX = {name: symbols.OBSERVATIONS.index(name) for name in FINDINGS
                if name in symbols.OBSERVATIONS}


def finding_key(name: str) -> str:
    """Results-key form of a finding name: 'Pleural Effusion' -> 'pleural_effusion'."""
    return name.lower().replace(' ', '_')


def read_report(text: str) -> tuple[np.ndarray, bool]:
    """(bool[16] found per FINDINGS entry, read as abnormal) for one report."""
    mentions = labeler.find_mentions(text)
    labels = labeler.aggregate(mentions)
    found = np.zeros(len(FINDINGS), bool)
    other = False
    for i, name in enumerate(FINDINGS):
        if name in _LABEL_INDEX:
            found[i] = labels[_LABEL_INDEX[name]] in (symbols.LABEL_POSITIVE,
                                                      symbols.LABEL_UNCERTAIN)
    for m in mentions:
        if m.observation == labeler.OTHER_FINDING and m.label != symbols.LABEL_NEGATIVE:
            other = True
            for name, pattern in phantom_corpus.EXTRA_PATTERNS.items():
                found[FINDINGS.index(name)] |= bool(pattern.search(m.text))
    return found, bool(found.any() or other)


def read_reports(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """bool[N, 16] found and bool[N] abnormal (each distinct text read once)."""
    cache = {t: read_report(t) for t in dict.fromkeys(texts)}
    if not texts:
        return np.zeros((0, len(FINDINGS)), bool), np.zeros(0, bool)
    return (np.stack([cache[t][0] for t in texts]),
            np.asarray([cache[t][1] for t in texts], bool))


def _truth(truth_labels: np.ndarray) -> np.ndarray:
    truth_labels = np.asarray(truth_labels)
    if truth_labels.ndim != 2 or truth_labels.shape[1] != len(phantom_corpus.TRUTH_COLUMNS):
        raise ValueError(f'truth_labels must be [N, {len(phantom_corpus.TRUTH_COLUMNS)}] '
                         f'(phantom_corpus.TRUTH_COLUMNS), got shape {truth_labels.shape}.')
    return truth_labels[:, 1:] == symbols.LABEL_POSITIVE


drawn_findings = _truth  # bool [N, 16]: each FINDINGS entry drawn in the study


def evaluated_findings(truth_labels: np.ndarray) -> tuple[str, ...]:
    """The findings that enter the macro average: at least one positive in the drawn truth."""
    present = _truth(truth_labels).any(axis=0)
    return tuple(name for name, p in zip(FINDINGS, present) if p)


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def scores(truth_labels: np.ndarray, reports: Sequence[str], *, prefix: str = PREFIX,
           per_finding: bool = True) -> dict[str, Optional[float]]:
    """Phantom-truth P/R/F1 (macro, micro, per finding) and abnormal/normal recall of `reports`
    (row i is study i of `truth_labels`). Undefined averages (no positive finding, no abnormal or
    no normal study) are None."""
    truth = _truth(truth_labels)
    if len(reports) != truth.shape[0]:
        raise ValueError(f'{len(reports)} reports for {truth.shape[0]} rows of truth_labels.')
    found, read_abnormal = read_reports(list(reports))
    tp = (truth & found).sum(0)
    fp = (~truth & found).sum(0)
    fn = (truth & ~found).sum(0)
    support = truth.sum(0)
    out: dict[str, Optional[float]] = {}
    prf = []
    for i, name in enumerate(FINDINGS):
        if not support[i]:
            continue
        p, r = _ratio(tp[i], tp[i] + fp[i]), _ratio(tp[i], tp[i] + fn[i])
        f1 = _ratio(2 * tp[i], 2 * tp[i] + fp[i] + fn[i])
        prf.append((p, r, f1))
        if per_finding:
            key = f'{prefix}/{finding_key(name)}'
            out.update({f'{key}/precision': p, f'{key}/recall': r, f'{key}/f1': f1,
                        f'{key}/support': int(support[i])})
    macro = np.mean(prf, axis=0) if prf else [None] * 3
    for stat, value in zip(('precision', 'recall', 'f1'), macro):
        out[f'{prefix}/macro_{stat}'] = None if value is None else float(value)
    tps, fps, fns = int(tp.sum()), int(fp.sum()), int(fn.sum())
    out[f'{prefix}/micro_precision'] = _ratio(tps, tps + fps)
    out[f'{prefix}/micro_recall'] = _ratio(tps, tps + fns)
    out[f'{prefix}/micro_f1'] = _ratio(2 * tps, 2 * tps + fps + fns)
    abnormal = truth.any(axis=1)
    out[f'{prefix}/abnormal_recall'] = (float(read_abnormal[abnormal].mean())
                                        if abnormal.any() else None)
    out[f'{prefix}/normal_recall'] = (float((~read_abnormal[~abnormal]).mean())
                                      if (~abnormal).any() else None)
    return out


def distinct_reports(reports: Sequence[str]) -> int:
    """How many different reports (whitespace-normalised text) a system wrote."""
    return len({' '.join(r.split()) for r in reports})


def most_common_report(train_reports: Sequence[str]) -> str:
    """The most frequent training report (ties: the one that occurs first in the split)."""
    if not len(train_reports):
        raise ValueError('most_common_report needs at least one training report.')
    counts = collections.Counter(str(r) for r in train_reports)
    best = max(counts.values())
    return next(str(r) for r in train_reports if counts[str(r)] == best)


BASELINES = ('baseline_most_common', 'baseline_reference')


def baselines(references: Sequence[str], train_reports: Sequence[str],
              truth_labels: Optional[np.ndarray] = None) -> dict[str, Optional[float]]:
    """Floor and ceiling: every study given the most common training report, and every study
    given its own reference report. `distinct_reports/<baseline>` always; with `truth_labels`
    also `phantom_truth/<baseline>/{macro_f1, micro_f1, abnormal_recall, normal_recall}`."""
    systems = {'baseline_reference': [str(r) for r in references]}
    if len(train_reports):
        systems['baseline_most_common'] = [most_common_report(train_reports)] * len(references)
    out: dict[str, Optional[float]] = {}
    for name in BASELINES:
        if name not in systems:
            continue
        out[f'distinct_reports/{name}'] = distinct_reports(systems[name])
        if truth_labels is not None:
            got = scores(truth_labels, systems[name], prefix=f'{PREFIX}/{name}',
                         per_finding=False)
            out.update({k: v for k, v in got.items() if k.rsplit('/', 1)[1] in (
                'macro_f1', 'micro_f1', 'abnormal_recall', 'normal_recall')})
    return out
