"""Rule-based labeler: report text -> the 14 CheXpert observation labels and normal/abnormal.

Why our own: clinical-efficacy metrics and the normal/abnormal split need labels for generated
reports at evaluation time, offline and fast, without Java/NegBio. The rules, in order:

1. Normalise and split into sentences (list numbering, decimals and "XXXX" redactions handled).
2. Find mentions: direct phrases per observation (`lexicon.OBSERVATION_PHRASES`, minus the
   look-alike exclusions), structure + qualifier pairs for the heart and mediastinum ("heart size
   is normal"), and the non-CheXpert findings that only make a study abnormal ("calcified
   granuloma").
3. Give each mention a status from the triggers in its scope (the sentence, cut at scope breaks such
   as "but"/"with"): a hedge that beats negation ("cannot exclude") -> uncertain; negation before
   ("no", "without", "free of") or after ("... is not seen") -> negative; other hedges before
   ("may represent"), after ("... is suspected") or next to it ("atelectasis or scarring") ->
   uncertain; otherwise positive.
4. Aggregate per observation: positive beats uncertain beats negative; never mentioned -> blank.
   No Finding = positive when nothing but support devices is positive or uncertain (CheXpert's
   rule, which also counts the non-CheXpert findings), blank otherwise.

CLI: python -m jima_jax.text.labeler --input reports.jsonl --output labels.csv
(JSONL rows with "report" and optionally "id"; CSV: id + the 14 observations as 1/0/-1, blank
empty).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import re
import sys
from typing import Iterable, Optional, Sequence

import numpy as np

from jima_jax import atomic
from jima_jax.text import lexicon
from jima_jax.text.symbols import (LABEL_BLANK, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNCERTAIN,
                                   NUM_OBSERVATIONS, OBSERVATIONS)

OTHER_FINDING = 'Other finding'  # pseudo-observation: abnormal but not one of the 14
_NO_FINDING = OBSERVATIONS.index('No Finding')
_SUPPORT_DEVICES = OBSERVATIONS.index('Support Devices')
_POST_WINDOW_WORDS = 10  # how far a structure's qualifier may follow it


def _alternation(phrases: Iterable[str]) -> str:
    return r'\b(?:' + '|'.join(f'(?:{p})' for p in phrases) + r')\b'


def _compile(phrases: Iterable[str]) -> re.Pattern:
    return re.compile(_alternation(phrases))


def _after(phrases: Iterable[str], gap: int) -> re.Pattern:
    """Matches phrases that start within `gap` words of the beginning of a text."""
    return re.compile(r'^\s*(?:\w+\s+){0,%d}?%s' % (gap, _alternation(phrases)))


_PHRASES = {o: _compile(p) for o, p in lexicon.OBSERVATION_PHRASES.items()}
_PHRASES[OTHER_FINDING] = _compile(lexicon.OTHER_FINDING_PHRASES)
_EXCLUSIONS = {o: _compile(p) for o, p in lexicon.OBSERVATION_EXCLUSIONS.items() if p}
_EXCLUSIONS[OTHER_FINDING] = _compile(lexicon.OTHER_FINDING_EXCLUSIONS)
_STRUCTURES = tuple((_compile([p]), abnormal, normal) for p, abnormal, normal in lexicon.STRUCTURES)
_ANY_STRUCTURE = _compile(p for p, _, _ in lexicon.STRUCTURES)
_QUALIFIER = re.compile(r'\b(?:(?P<unc>%s)|(?P<norm>%s)|(?P<abn>%s))\b' % tuple(
    '|'.join(ps) for ps in (lexicon.QUALIFIER_UNCERTAIN, lexicon.QUALIFIER_NORMAL,
                            lexicon.QUALIFIER_ABNORMAL)))
_NEG_PRE = _compile(lexicon.NEGATION_PRE)
_NEG_POST = _after(lexicon.NEGATION_POST, 4)
_UNC_OVER_NEG = _compile(lexicon.UNCERTAIN_OVER_NEGATION)
_UNC_OVER_NEG_POST = _after(lexicon.UNCERTAIN_OVER_NEGATION, 4)
_UNC_PRE = _compile(lexicon.UNCERTAIN_PRE)
_UNC_POST = _after(lexicon.UNCERTAIN_POST, 2)
_UNC_ADJ_POST = _after(lexicon.UNCERTAIN_ADJACENT, 0)
_UNC_ADJ_PRE = re.compile(_alternation(lexicon.UNCERTAIN_ADJACENT) + r'\s+(?:\w+\s+){0,2}$')
_PSEUDO_NEG = _compile(lexicon.PSEUDO_NEGATION)
_BREAKS = _compile(lexicon.SCOPE_BREAKS)

_SENTENCE_END = re.compile(r'(?<!\d)[.;:!?](?!\d)|\.(?=\s)|\n')
_LIST_NUMBER = re.compile(r'(?:^|(?<=\s))\d{1,2}[.)](?=\s|$)')
_SEPARATORS = re.compile(r'[-/]')
_OTHER_CHARS = re.compile(r'[^a-z0-9., ]+')
_COMMA = re.compile(r'\s*,\s*')
_SPACES = re.compile(r'\s+')


@dataclasses.dataclass(frozen=True)
class Mention:
    """One finding mention with its status; `observation` is in OBSERVATIONS or OTHER_FINDING."""

    observation: str
    label: int  # LABEL_POSITIVE | LABEL_NEGATIVE | LABEL_UNCERTAIN
    sentence: str
    start: int
    end: int

    @property
    def text(self) -> str:
        return self.sentence[self.start:self.end]


def split_sentences(text: str) -> list[str]:
    """Report -> normalised sentences: lowercase words, numbers and "," separated by single
    spaces."""
    text = _LIST_NUMBER.sub('.', text.lower())
    out = []
    for sentence in _SENTENCE_END.split(text):
        sentence = _OTHER_CHARS.sub(' ', _SEPARATORS.sub(' ', sentence))
        sentence = _COMMA.sub(' , ', sentence.replace('.', ' '))
        sentence = _SPACES.sub(' ', sentence).strip(' ,')
        if sentence:
            out.append(sentence)
    return out


class _Scope:
    """Trigger positions of one sentence, to answer 'what governs the span [a, b)?'."""

    def __init__(self, sentence: str):
        self.s = sentence
        self.breaks = [(m.start(), m.end()) for m in _BREAKS.finditer(sentence)]
        pseudo = [(m.start(), m.end()) for m in _PSEUDO_NEG.finditer(sentence)]
        self.neg = [(m.start(), m.end()) for m in _NEG_PRE.finditer(sentence)
                    if not any(a <= m.start() < b for a, b in pseudo)]
        self.unc = [(m.start(), m.end()) for m in _UNC_PRE.finditer(sentence)]
        self.unc_over = [(m.start(), m.end()) for m in _UNC_OVER_NEG.finditer(sentence)]

    def bounds(self, a: int, b: int) -> tuple[int, int]:
        """The clause around [a, b): from the last break before it to the next break after it."""
        left = max([e for s, e in self.breaks if e <= a], default=0)
        right = min([s for s, e in self.breaks if s >= b], default=len(self.s))
        return left, right

    def status(self, a: int, b: int, between: tuple[int, int] | None = None) -> int:
        """Label of the mention [a, b); `between` is an extra span whose triggers also count."""
        left, right = self.bounds(a, b)
        post = self.s[b:right]

        def before(spans):
            hit = any(left <= s and e <= a for s, e in spans)
            return hit or (between is not None and any(between[0] <= s and e <= between[1]
                                                       for s, e in spans))

        if before(self.unc_over) or _UNC_OVER_NEG_POST.search(post):
            return LABEL_UNCERTAIN
        if before(self.neg) or _NEG_POST.search(post):
            return LABEL_NEGATIVE
        if (before(self.unc) or _UNC_POST.search(post) or _UNC_ADJ_POST.search(post)
                or _UNC_ADJ_PRE.search(self.s[left:a])):
            return LABEL_UNCERTAIN
        return LABEL_POSITIVE


def _overlaps(a: int, b: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(s < b and a < e for s, e in spans)


def _direct_mentions(sentence: str, scope: _Scope) -> list[Mention]:
    out = []
    for obs, pattern in _PHRASES.items():
        exclusion = _EXCLUSIONS.get(obs)
        excluded = [(m.start(), m.end()) for m in exclusion.finditer(sentence)] if exclusion else []
        for m in pattern.finditer(sentence):
            if not _overlaps(m.start(), m.end(), excluded):
                out.append(Mention(obs, scope.status(m.start(), m.end()), sentence, m.start(),
                                   m.end()))
    return out


def _qualifier_of(sentence: str, scope: _Scope, a: int, b: int) -> Optional[re.Match]:
    """The qualifier governing the structure [a, b): right before it, else the first one after."""
    left, right = scope.bounds(a, b)
    for q in _QUALIFIER.finditer(sentence, left, a):
        if re.fullmatch(r'\s*(?:of\s+)?(?:the\s+)?', sentence[q.end():a]):
            return q
    end = right
    for nxt in _ANY_STRUCTURE.finditer(sentence, b, right):
        if not re.fullmatch(r'\s*(?:,|and|or)?\s*(?:the\s+)?', sentence[b:nxt.start()]):
            end = nxt.start()
            break
    tail = sentence[b:end].split()[:_POST_WINDOW_WORDS]
    return _QUALIFIER.search(sentence, b, b + len(' '.join(tail)) + 1) if tail else None


def _structure_mentions(sentence: str, scope: _Scope) -> list[Mention]:
    out = []
    for pattern, when_abnormal, when_normal in _STRUCTURES:
        for m in pattern.finditer(sentence):
            q = _qualifier_of(sentence, scope, m.start(), m.end())
            if q is None:
                continue
            if q.group('unc'):
                label, observations = LABEL_UNCERTAIN, when_abnormal
            elif q.group('norm'):
                label, observations = LABEL_NEGATIVE, when_normal
            elif q.start() >= m.end():  # "the heart may be enlarged": triggers in between count
                label = scope.status(m.start(), m.end(), between=(m.end(), q.start()))
                observations = when_normal if label == LABEL_NEGATIVE else when_abnormal
            else:
                label = scope.status(q.start(), m.end())
                observations = when_normal if label == LABEL_NEGATIVE else when_abnormal
            start, end = min(m.start(), q.start()), max(m.end(), q.end())
            out += [Mention(obs, label, sentence, start, end) for obs in observations]
    return out


def find_mentions(text: str) -> list[Mention]:
    """Every mention in the report, in sentence order (for debugging and the tests)."""
    out = []
    for sentence in split_sentences(text):
        scope = _Scope(sentence)
        out += _direct_mentions(sentence, scope) + _structure_mentions(sentence, scope)
    return out


def aggregate(mentions: Sequence[Mention]) -> np.ndarray:
    """Mentions -> int8[14]: positive > uncertain > negative > blank; then No Finding."""
    rank = {LABEL_POSITIVE: 3, LABEL_UNCERTAIN: 2, LABEL_NEGATIVE: 1}
    labels = np.full(NUM_OBSERVATIONS, LABEL_BLANK, np.int8)
    other_found = False
    for m in mentions:
        if m.observation == OTHER_FINDING:
            other_found |= m.label != LABEL_NEGATIVE
            continue
        i = OBSERVATIONS.index(m.observation)
        if labels[i] == LABEL_BLANK or rank[m.label] > rank[int(labels[i])]:
            labels[i] = m.label
    found = [i for i in range(NUM_OBSERVATIONS)
             if i not in (_NO_FINDING, _SUPPORT_DEVICES)
             and labels[i] in (LABEL_POSITIVE, LABEL_UNCERTAIN)]
    if not found and not other_found:
        labels[_NO_FINDING] = LABEL_POSITIVE
    return labels


def label_report(text: str) -> np.ndarray:
    """One report -> int8[14] with the LABEL_* values in OBSERVATIONS order (all blank if empty)."""
    if not isinstance(text, str):
        raise TypeError(f'label_report expects a str, got {type(text).__name__}.')
    if not split_sentences(text):
        return np.full(NUM_OBSERVATIONS, LABEL_BLANK, np.int8)
    return aggregate(find_mentions(text))


def label_reports(texts: Iterable[str]) -> np.ndarray:
    """Reports -> int8[N, 14] (each distinct text labelled once: datasets repeat normal reports)."""
    texts = list(texts)
    unique = {t: None for t in texts}
    labelled = {t: label_report(t) for t in unique}
    rows = [labelled[t] for t in texts]
    return np.stack(rows) if rows else np.zeros((0, NUM_OBSERVATIONS), np.int8)


def abnormal_from_labels(labels: np.ndarray, *, devices: bool = True) -> bool:
    """Normal/abnormal from a label row: abnormal unless No Finding is positive.

    devices=True also counts support devices as abnormal (IU X-ray's MeSH convention: a catheter or
    a monitor lead is indexed, so the study is not "normal"); devices=False is CheXpert's No
    Finding alone (the MIMIC-CXR convention of the paper).
    """
    if devices and labels[_SUPPORT_DEVICES] in (LABEL_POSITIVE, LABEL_UNCERTAIN):
        return True
    return bool(labels[_NO_FINDING] != LABEL_POSITIVE)


def is_abnormal(text: str, *, devices: bool = True) -> bool:
    """Normal/abnormal decision for one report (see `abnormal_from_labels`)."""
    return abnormal_from_labels(label_report(text), devices=devices)


# ---------------------------------------------------------------------- CLI
def _read_jsonl(path: str) -> tuple[list[str], list[str]]:
    ids, reports = [], []
    with open(path, encoding='utf-8') as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f'{path}:{n}: not valid JSON ({e.msg}).') from e
            if not isinstance(row, dict) or not isinstance(row.get('report'), str):
                raise ValueError(f"{path}:{n}: expected an object with a string field 'report'.")
            ids.append(str(row.get('id', n)))
            reports.append(row['report'])
    return ids, reports


def write_labels_csv(path: str, ids: Sequence[str], labels: np.ndarray) -> None:
    """CheXpert-style CSV (blank = empty cell), written to a temp file and renamed into place."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(('id',) + OBSERVATIONS)
    for i, row in zip(ids, labels):
        writer.writerow([i] + ['' if v == LABEL_BLANK else str(int(v)) for v in row])
    atomic.write_text(path, buf.getvalue())


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--input', required=True,
                        help="JSONL with a 'report' (and optional 'id') per line")
    parser.add_argument('--output', required=True, help='CSV to write')
    args = parser.parse_args(argv)
    ids, reports = _read_jsonl(args.input)
    labels = label_reports(reports)
    write_labels_csv(args.output, ids, labels)
    print(f'labelled {len(ids)} reports -> {args.output}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
