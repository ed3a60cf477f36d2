"""NLG metrics (BLEU-1..4, ROUGE-L, CIDEr-D, METEOR) with pycocoevalcap's exact conventions.

BLEU, ROUGE-L and CIDEr-D are computed here in plain Python, so scoring needs no Java and no
extra package, yet gives pycocoevalcap's numbers (tested to 1e-6). METEOR has no faithful
re-implementation: it runs pycocoevalcap's own `meteor-1.5.jar` when Java and the jar are present
and is reported as unavailable (None) otherwise, never replaced by an approximation.

Inputs are already-cleaned reports split on whitespace (no PTB tokenizer): one reference and one
prediction per study id. docs/evaluation.md states every formula.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import pathlib
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from typing import Mapping, Optional, Sequence

MAX_N = 4  # BLEU and CIDEr use 1..4-grams
ROUGE_BETA = 1.2  # pycocoevalcap's recall weight
CIDER_SIGMA = 6.0  # CIDEr-D Gaussian length penalty
METEOR_TIMEOUT_S = 600.0
# pycocoevalcap's guards against 0/0 in BLEU; kept so that degenerate inputs give its numbers.
_BLEU_TINY = 1e-15
_BLEU_SMALL = 1e-9

NLG_KEYS = ('BLEU_1', 'BLEU_2', 'BLEU_3', 'BLEU_4', 'METEOR', 'ROUGE_L', 'CIDEr')

log = logging.getLogger(__name__)

Tokens = list[str]


class MeteorUnavailable(RuntimeError):
    """METEOR cannot be computed here (no Java, no jar, or the jar failed)."""


def align(references: Mapping[str, str],
          predictions: Mapping[str, str]) -> tuple[list[str], list[Tokens], list[Tokens]]:
    """Pairs references and predictions by id (sorted) and splits them on whitespace.

    Raises ValueError when the id sets differ or a reference is empty: a metric over a silently
    different set of studies is not comparable with anything.
    """
    ref_ids, pred_ids = set(references), set(predictions)
    if ref_ids != pred_ids:
        missing = sorted(ref_ids - pred_ids)
        extra = sorted(pred_ids - ref_ids)
        raise ValueError(
            f'references and predictions must cover the same study ids: {len(missing)} reference '
            f'id(s) have no prediction (e.g. {missing[:5]}), {len(extra)} prediction id(s) have no '
            f'reference (e.g. {extra[:5]}).')
    if not ref_ids:
        raise ValueError('No studies to score: references and predictions are empty.')
    ids = sorted(ref_ids)
    refs = [str(references[i]).split() for i in ids]
    empty = [i for i, r in zip(ids, refs) if not r]
    if empty:
        raise ValueError(f'{len(empty)} reference report(s) are empty (e.g. ids {empty[:5]}); '
                         'drop those studies before scoring.')
    preds = [str(predictions[i]).split() for i in ids]
    return ids, refs, preds


def ngrams(tokens: Sequence[str], max_n: int = MAX_N) -> Counter:
    """Counts of every 1..max_n-gram (as tuples) of a token list."""
    counts: Counter = Counter()
    for n in range(1, max_n + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i:i + n])] += 1
    return counts


def bleu(refs: Sequence[Tokens], preds: Sequence[Tokens], max_n: int = MAX_N) -> list[float]:
    """Corpus BLEU-1..max_n: clipped n-gram counts and lengths summed over the corpus, one brevity
    penalty from the summed lengths (single reference, so 'closest' length = its length)."""
    correct = [0] * max_n
    guess = [0] * max_n
    test_len = ref_len = 0
    for ref, pred in zip(refs, preds):
        ref_counts, pred_counts = ngrams(ref, max_n), ngrams(pred, max_n)
        for gram, count in pred_counts.items():
            correct[len(gram) - 1] += min(count, ref_counts.get(gram, 0))
        for n in range(1, max_n + 1):
            guess[n - 1] += max(0, len(pred) - n + 1)
        test_len += len(pred)
        ref_len += len(ref)
    ratio = (test_len + _BLEU_TINY) / (ref_len + _BLEU_SMALL)
    penalty = math.exp(1.0 - 1.0 / ratio) if ratio < 1.0 else 1.0
    scores, product = [], 1.0
    for n in range(max_n):
        product *= (correct[n] + _BLEU_TINY) / (guess[n] + _BLEU_SMALL)
        scores.append(product ** (1.0 / (n + 1)) * penalty)
    return scores


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, bit-parallel over `b` (Allison-Dix/Hyyro).

    Bit j of `row` is 0 where the LCS of the prefix of `a` read so far grows at b[j]; the number
    of zero bits among the low len(b) bits is the LCS length.
    """
    if not a or not b:
        return 0
    match: dict[str, int] = {}
    for j, token in enumerate(b):
        match[token] = match.get(token, 0) | (1 << j)
    mask = (1 << len(b)) - 1
    row = mask
    for token in a:
        m = match.get(token, 0)
        low = row & m
        row = ((row + low) | (row & ~m)) & mask
    return len(b) - bin(row).count('1')


def rouge_l(refs: Sequence[Tokens], preds: Sequence[Tokens], beta: float = ROUGE_BETA) -> float:
    """Mean over studies of the LCS F-measure with recall weighted by beta."""
    total = 0.0
    for ref, pred in zip(refs, preds):
        lcs = lcs_length(ref, pred)
        if lcs == 0:
            continue
        precision, recall = lcs / len(pred), lcs / len(ref)
        total += (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
    return total / len(refs)


def cider_d(refs: Sequence[Tokens], preds: Sequence[Tokens], max_n: int = MAX_N,
            sigma: float = CIDER_SIGMA) -> float:
    """CIDEr-D as pycocoevalcap's `Cider` computes it (x10, clipped, Gaussian length penalty).

    tf-idf vectors use raw n-gram counts and document frequencies over the references of the
    scored set; the length penalty compares the numbers of *bigrams* (pycocoevalcap's quirk).
    """
    log_docs = math.log(float(len(refs)))
    doc_freq: Counter = Counter()
    ref_counts = [ngrams(ref, max_n) for ref in refs]
    for counts in ref_counts:
        doc_freq.update(counts.keys())

    def vectors(counts: Counter) -> tuple[list[dict], list[float], int]:
        vec: list[dict] = [{} for _ in range(max_n)]
        for gram, tf in counts.items():
            vec[len(gram) - 1][gram] = tf * (log_docs - math.log(max(1.0, doc_freq[gram])))
        norms = [math.sqrt(sum(w * w for w in v.values())) for v in vec]
        bigrams = sum(tf for gram, tf in counts.items() if len(gram) == 2)
        return vec, norms, bigrams

    total = 0.0
    for ref_c, pred in zip(ref_counts, preds):
        vec_p, norm_p, len_p = vectors(ngrams(pred, max_n))
        vec_r, norm_r, len_r = vectors(ref_c)
        penalty = math.exp(-((len_p - len_r) ** 2) / (2 * sigma ** 2))
        sims = 0.0
        for n in range(max_n):
            dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0)
                      for g, w in vec_p[n].items())
            if norm_p[n] and norm_r[n]:
                dot /= norm_p[n] * norm_r[n]
            sims += dot * penalty
        total += 10.0 * sims / max_n
    return total / len(refs)


def meteor_jar() -> Optional[pathlib.Path]:
    """pycocoevalcap's meteor-1.5.jar (with its paraphrase data beside it), or None."""
    spec = importlib.util.find_spec('pycocoevalcap')
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        jar = pathlib.Path(location) / 'meteor' / 'meteor-1.5.jar'
        if jar.is_file() and (jar.parent / 'data' / 'paraphrase-en.gz').is_file():
            return jar
    return None


def meteor_unavailable_reason() -> Optional[str]:
    """Why METEOR cannot run here (None when Java and the jar are both present)."""
    if shutil.which('java') is None:
        return "Java is not installed (METEOR runs pycocoevalcap's meteor-1.5.jar)"
    if meteor_jar() is None:
        return ("pycocoevalcap's meteor-1.5.jar was not found; `pip install pycocoevalcap` "
                "(the package's `test` extra installs it)")
    return None


def _meteor_text(tokens: Tokens) -> str:
    """Tokens joined for the jar's line protocol, where '|||' separates fields."""
    return ' '.join(t for t in (tok.replace('|||', '') for tok in tokens) if t)


def meteor(refs: Sequence[Tokens], preds: Sequence[Tokens],
           groups: Optional[Sequence[Sequence[int]]] = None,
           timeout_s: float = METEOR_TIMEOUT_S) -> list[float]:
    """Corpus METEOR 1.5 from pycocoevalcap's jar, with the same flags and protocol
    (`-stdio -l en -norm`; one SCORE line per study, then an EVAL line over their statistics).

    Returns one score per group of study positions (default: one group, all studies). A study's
    statistics do not depend on the others, so every group is scored from one Java start-up.
    Unlike pycocoevalcap's wrapper, Java's stderr goes to a file (a full pipe cannot block the
    jar) and a watchdog kills a hung process, so failures surface as MeteorUnavailable.
    """
    reason = meteor_unavailable_reason()
    if reason:
        raise MeteorUnavailable(reason)
    groups = [range(len(refs))] if groups is None else groups
    jar = meteor_jar()
    cmd = ['java', '-jar', '-Xmx2G', str(jar), '-', '-', '-stdio', '-l', 'en', '-norm']
    # Popen as a context manager closes the pipes (the jar then sees EOF) and waits for it.
    with tempfile.TemporaryFile() as err, subprocess.Popen(
            cmd, cwd=str(jar.parent), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=err) as proc:
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        def ask(line: str, answers: int = 1) -> str:
            """Sends one line, returns the last of its `answers` reply lines."""
            proc.stdin.write((line + '\n').encode('utf-8'))
            proc.stdin.flush()
            for _ in range(answers):
                answer = proc.stdout.readline().decode('utf-8').strip()
                if not answer:
                    raise BrokenPipeError('the jar closed its output')
            return answer

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.start()
        try:
            stats = [ask(' ||| '.join(('SCORE', _meteor_text(r), _meteor_text(p))))
                     for r, p in zip(refs, preds)]
            # EVAL answers each study's score, then the corpus score.
            scores = [float(ask(' ||| '.join(['EVAL'] + [stats[k] for k in group]),
                                len(group) + 1)) for group in groups]
        except (OSError, ValueError) as e:
            proc.kill()
            try:
                proc.stdin.close()  # unsent bytes to a dead process: closes, then raises
            except OSError:
                pass
            proc.wait()
            err.seek(0)
            detail = err.read().decode('utf-8', 'replace').strip()[-2000:]
            if timed_out.is_set():
                detail = f'killed after the {timeout_s:.0f} s timeout. {detail}'
            raise MeteorUnavailable(f"meteor-1.5.jar failed ({e}): {detail or 'no stderr'}") from e
        finally:
            watchdog.cancel()
    return scores


def compute_nlg_groups(references: Mapping[str, str], predictions: Mapping[str, str],
                       groups: Mapping[str, Sequence[str]], *,
                       with_meteor: bool = True) -> dict[str, dict[str, Optional[float]]]:
    """`compute_nlg` on several non-empty subsets of the studies (group name -> study ids), each
    scored on its own (CIDEr's document frequencies from the group's references), with one
    METEOR start-up for all groups."""
    ids, refs, preds = align(references, predictions)
    position = {i: k for k, i in enumerate(ids)}
    members: dict[str, list[int]] = {}
    for name, group in groups.items():
        unknown = [i for i in group if i not in position]
        if unknown or not group:
            raise ValueError(f'NLG group {name!r} must hold scored study ids; '
                             f'{len(unknown)} unknown (e.g. {unknown[:5]}), size {len(group)}.')
        members[name] = [position[i] for i in group]
    out: dict[str, dict[str, Optional[float]]] = {}
    for name, group in members.items():
        r, p = [refs[k] for k in group], [preds[k] for k in group]
        scores: dict[str, Optional[float]] = {
            f'BLEU_{n + 1}': v for n, v in enumerate(bleu(r, p))}
        scores['ROUGE_L'] = rouge_l(r, p)
        scores['CIDEr'] = cider_d(r, p)
        out[name] = scores
    if with_meteor:
        try:
            meteor_scores = meteor(refs, preds, list(members.values()))
        except MeteorUnavailable as e:
            log.warning('METEOR unavailable: %s', e)
            meteor_scores = [None] * len(members)
        for name, value in zip(members, meteor_scores):
            out[name]['METEOR'] = value
    return out


def compute_nlg(references: Mapping[str, str], predictions: Mapping[str, str], *,
                with_meteor: bool = True) -> dict[str, Optional[float]]:
    """BLEU_1..4, ROUGE_L, CIDEr and METEOR over the studies of `references` (ids must match).

    METEOR is None, with a logged warning saying why, when it cannot run; with_meteor=False
    leaves the key out (fast validation during training).
    """
    return compute_nlg_groups(references, predictions, {'all': list(references)},
                              with_meteor=with_meteor)['all']
