r"""Scores any system's reports with the whole suite: NLG, clinical efficacy, imbalance breakdowns.

  python -m jima_jax.evaluation.score --references refs.jsonl --predictions preds.jsonl \
      [--tables TABLES] [--labels REF_LABELS.csv PRED_LABELS.csv] [--dataset iu_xray] [--out DIR]

Each JSONL line is an object with `id` and `report` (cleaned text; `--clean` applies the package's
R2Gen cleaning first). Reference rows may add `abnormal` (0/1) and both files `entities` (a list)
for the label-imbalance split and Task 1 entity scores. Prints the Markdown table; with --out also
writes results.json, results.md and the plots there.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import sys
from typing import Any, Optional, Sequence

import numpy as np

from jima_jax.evaluation import clinical, imbalance, nlg, phantom_truth, report
from jima_jax.text import symbols


class InputError(ValueError):
    """Bad user input: printed as one line and exit status 2."""


def read_jsonl(path: str | pathlib.Path) -> dict[str, dict[str, Any]]:
    """JSONL rows keyed by their string `id`; errors name the file and line."""
    path = pathlib.Path(path)
    try:
        lines = path.read_text(encoding='utf-8').splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f'cannot read {path}: {e}') from e
    rows: dict[str, dict[str, Any]] = {}
    first_line: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f'{path}:{number}'
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f'{where}: not valid JSON ({e.msg} at column {e.colno}).') from e
        if not isinstance(row, dict):
            raise InputError(f'{where}: expected a JSON object with `id` and `report`.')
        if not isinstance(row.get('id'), (str, int)) or isinstance(row.get('id'), bool):
            raise InputError(f'{where}: missing or non-string `id`.')
        if not isinstance(row.get('report'), str):
            raise InputError(f'{where}: missing or non-string `report`.')
        key = str(row['id'])
        if key in rows:
            raise InputError(f'{where}: duplicate id {key!r} (first on line {first_line[key]}).')
        if 'abnormal' in row and row['abnormal'] not in (0, 1):
            raise InputError(f"{where}: `abnormal` must be 0 or 1, got {row['abnormal']!r}.")
        if 'entities' in row and not (isinstance(row['entities'], list)
                                      and all(isinstance(e, str) for e in row['entities'])):
            raise InputError(f'{where}: `entities` must be a list of strings.')
        rows[key] = row
        first_line[key] = number
    if not rows:
        raise InputError(f'{path}: no rows.')
    return rows


def check_ids(refs: dict, preds: dict, ref_path: str, pred_path: str) -> None:
    missing = sorted(set(refs) - set(preds))
    extra = sorted(set(preds) - set(refs))
    if missing or extra:
        raise InputError(
            f'the files must hold the same ids: {len(missing)} id(s) of {ref_path} have no '
            f'prediction (e.g. {missing[:5]}); {len(extra)} id(s) of {pred_path} have no '
            f'reference (e.g. {extra[:5]}).')


def load_token_counts(path: str | pathlib.Path) -> dict[str, int]:
    """Training token counts from a JSON object {token: count} or, for a prepared-data folder,
    its word tokenizer (`tokenizer.model`) and frequency tables (`tables.json`)."""
    path = pathlib.Path(path)
    if path.is_file():
        try:
            counts = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f'--tables {path}: not a readable JSON file ({e}).') from e
        if not (isinstance(counts, dict) and counts and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in counts.values())):
            raise InputError(f'--tables {path}: expected a non-empty JSON object mapping each '
                             'training token to its count (int >= 0).')
        return counts
    if path.is_dir():
        from jima_jax.text.tables import FrequencyTables
        from jima_jax.text.tokenizer import Tokenizer
        tokenizer = Tokenizer.load(path / 'tokenizer.model')
        if tokenizer.mode != 'word':
            raise InputError(f'--tables {path}: a {tokenizer.mode} tokenizer counts subword '
                             'pieces, not words; pass a JSON file of training word counts '
                             'instead.')
        tables = FrequencyTables.load(path / 'tables.json',
                                      tokenizer_fingerprint=tokenizer.fingerprint)
        return imbalance.counts_from_ids(tables.token_counts, tokenizer.id_to_token)
    raise InputError(f'--tables {path}: no such file or folder.')


def _label_file(path: str, file_order: list[str], ids: Sequence[str]) -> np.ndarray:
    """Labels of `ids`; a file without an `id` column follows its JSONL file's line order."""
    labels = clinical.load_label_file(path, file_order)
    row = {i: k for k, i in enumerate(file_order)}
    return labels[[row[i] for i in ids]]


def _abnormal_flags(refs: dict, ids: Sequence[str], ref_labels: Optional[np.ndarray],
                    notes: list[str]) -> Optional[dict[str, int]]:
    """Normal/abnormal per study: the references' `abnormal` field, else abnormal unless the
    reference labels (given or from the package labeler) say 'No Finding'."""
    have = [i for i in ids if 'abnormal' in refs[i]]
    if have and len(have) != len(ids):
        raise InputError(f'`abnormal` is given for {len(have)} of {len(ids)} references; give it '
                         'for all or none.')
    if have:
        notes.append("Normal/abnormal: the references' `abnormal` field.")
        return {i: int(refs[i]['abnormal']) for i in ids}
    if ref_labels is None:
        try:
            from jima_jax.text.labeler import label_reports
        except ImportError:
            notes.append('Normal/abnormal split skipped: no `abnormal` field, labels or labeler.')
            return None
        ref_labels = label_reports([refs[i]['report'] for i in ids])
    notes.append("Normal/abnormal: abnormal unless the reference's 'No Finding' label is positive.")
    no_finding = ref_labels[:, symbols.OBSERVATIONS.index('No Finding')]
    return {i: int(v != symbols.LABEL_POSITIVE) for i, v in zip(ids, no_finding)}


def score_reports(refs: dict[str, str], preds: dict[str, str], *,
                  abnormal: Optional[dict[str, int]] = None,
                  ref_labels: Optional[np.ndarray] = None,
                  pred_labels: Optional[np.ndarray] = None,
                  token_counts: Optional[dict[str, int]] = None,
                  ref_entities: Optional[dict] = None, pred_entities: Optional[dict] = None,
                  with_meteor: bool = True, with_ce: bool = True,
                  notes: Optional[list[str]] = None
                  ) -> tuple[dict[str, Optional[float]], list[str]]:
    """The whole suite on id-aligned reports; shared by this CLI and the package's eval mode.

    Label arrays follow `sorted(refs)`. Missing pieces are derived the documented way: labels from
    the package labeler, normal/abnormal from the reference labels' "No Finding", token buckets from
    the references' own word counts. Returns the flat results and notes on where each part came
    from.
    """
    ids = sorted(refs)
    notes = [f'Studies: {len(ids)}.'] if notes is None else notes
    results: dict[str, Optional[float]] = {
        'count/studies': len(ids),
        'distinct_reports': phantom_truth.distinct_reports([preds[i] for i in ids])}
    if with_ce and (ref_labels is None or pred_labels is None):
        try:
            from jima_jax.text.labeler import label_reports
        except ImportError as e:
            notes.append(f'CE skipped: the package labeler is unavailable ({e}).')
        else:
            if ref_labels is None:
                ref_labels = label_reports([refs[i] for i in ids])
            if pred_labels is None:
                pred_labels = label_reports([preds[i] for i in ids])
            notes.append('CE: generated reports labelled by jima_jax.text.labeler.')
    if with_ce and ref_labels is not None and pred_labels is not None:
        results.update(clinical.ce_metrics(ref_labels, pred_labels))

    if abnormal is None:
        abnormal = _abnormal_flags({i: {} for i in ids}, ids, ref_labels, notes)
    else:
        notes.append("Normal/abnormal: the dataset's labels.")
    if abnormal is None:
        results.update(nlg.compute_nlg(refs, preds, with_meteor=with_meteor))
    else:
        results.update(imbalance.subset_nlg(refs, preds, abnormal, with_meteor=with_meteor,
                                            include_overall=True))
    if results.get('METEOR', 0.0) is None:
        reason = nlg.meteor_unavailable_reason() or 'the jar failed (see the log above)'
        notes.append(f'METEOR unavailable: {reason}.')

    if token_counts is None:
        token_counts = imbalance.word_counts(refs.values())
        notes.append("Token buckets: no training counts given, so frequency ranks come from the "
                     f"references' own word counts ({len(token_counts)} words), not the training "
                     "split.")
    results.update(imbalance.token_imbalance(refs, preds, token_counts))
    if ref_entities is not None and pred_entities is not None:
        results.update(imbalance.entity_prf(ref_entities, pred_entities))
    return results, notes


def score(args: argparse.Namespace) -> tuple[dict[str, Optional[float]], list[str]]:
    """The whole suite on the two files; returns the flat results and notes on their sources."""
    refs_rows = read_jsonl(args.references)
    preds_rows = read_jsonl(args.predictions)
    check_ids(refs_rows, preds_rows, args.references, args.predictions)
    ids = sorted(refs_rows)
    if args.clean:
        from jima_jax.text.cleaning import clean_report
        for rows in (refs_rows, preds_rows):
            for row in rows.values():
                row['report'] = clean_report(row['report'])
    refs = {i: refs_rows[i]['report'] for i in ids}
    preds = {i: preds_rows[i]['report'] for i in ids}
    notes = [f'Studies: {len(ids)}.']

    ref_labels = pred_labels = None
    if args.labels:
        ref_labels = _label_file(args.labels[0], list(refs_rows), ids)
        pred_labels = _label_file(args.labels[1], list(preds_rows), ids)
        notes.append(f'CE: labels from {args.labels[0]} and {args.labels[1]}.')
    elif not args.no_ce:
        try:
            from jima_jax.text.labeler import label_reports
        except ImportError:
            pass  # score_reports notes it
        else:
            ref_labels = label_reports([refs[i] for i in ids])
            notes.append('CE: both sides labelled by jima_jax.text.labeler.')
    abnormal = _abnormal_flags(refs_rows, ids, ref_labels, notes)
    counts = None
    if args.tables:
        counts = load_token_counts(args.tables)
        notes.append(f'Token buckets: training counts from {args.tables} ({len(counts)} tokens).')
    entities = all('entities' in refs_rows[i] and 'entities' in preds_rows[i] for i in ids)
    return score_reports(
        refs, preds, abnormal=abnormal, ref_labels=ref_labels, pred_labels=pred_labels,
        token_counts=counts,
        ref_entities={i: refs_rows[i]['entities'] for i in ids} if entities else None,
        pred_entities={i: preds_rows[i]['entities'] for i in ids} if entities else None,
        with_meteor=not args.no_meteor, with_ce=not args.no_ce, notes=notes)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m jima_jax.evaluation.score',
        description='Score generated radiology reports (NLG, clinical efficacy, imbalance).')
    p.add_argument('--references', required=True, help='JSONL with `id` and `report` per line')
    p.add_argument('--predictions', required=True, help='JSONL with `id` and `report` per line')
    p.add_argument('--tables', help="training token counts: JSON {token: count}, or a prepared "
                   "folder with tokenizer.model + tables.json (default: the references' counts)")
    p.add_argument('--labels', nargs=2, metavar=('REF_LABELS', 'PRED_LABELS'),
                   help='precomputed observation labels (CheXpert labeler CSV format) instead of '
                        'the package labeler')
    p.add_argument('--dataset', choices=sorted(report.PAPER),
                   help="show the paper's numbers for this dataset beside ours")
    p.add_argument('--out', help='folder for results.json, results.md and plots')
    p.add_argument('--clean', action='store_true', help='apply the R2Gen report cleaning first')
    p.add_argument('--no-meteor', action='store_true', help='skip METEOR (no Java start-up)')
    p.add_argument('--no-ce', action='store_true', help='skip clinical efficacy')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    try:
        results, notes = score(args)
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    text = report.format_results(results, args.dataset, notes=notes)
    print(text, end='')
    if args.out:
        written = report.write_results(results, args.out, dataset_name=args.dataset, notes=notes)
        print('Wrote ' + ', '.join(str(p) for p in written.values()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
