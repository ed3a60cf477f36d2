"""Report cleaning in the R2Gen convention (spec section 1).

Every model in the R2Gen family is trained and scored on reports cleaned the same way, so BLEU and
the word vocabulary are only comparable when this matches: lowercase, list numbering dropped,
repeated dots collapsed, punctuation/quotes/slashes stripped inside sentences, sentences joined with
" . " and a final " .". Digits and hyphens survive (R2Gen's character class keeps them).

One deliberate difference: R2Gen keeps empty sentences (". ." runs); they carry no words, so we drop
them.
"""

from __future__ import annotations

import re

# List markers such as "1. " or " 2. " (R2Gen: numbers 1-5 when they start a list item).
_LIST_MARKER = re.compile(r'(?:^|(?<=\s))[1-9]\.\s')
_DOTS = re.compile(r'\.{2,}')
_WHITESPACE = re.compile(r'\s+')
# Characters R2Gen removes inside a sentence: .,?;*!%^&_+() and the ASCII range ':' to '[' (which
# also holds <=>@ and the capitals, gone after lowercasing), ']', '{', '}', plus quotes and slashes.
_STRIP_CHARS = re.compile(r"""[.,?;*!%^&_+():-\[\]{}"'/\\]""")


def split_sentences(text: str) -> list[str]:
    """Raw report -> lowercase sentences, list numbering removed, not yet stripped of
    punctuation."""
    text = _WHITESPACE.sub(' ', text).strip()
    text = _DOTS.sub('.', text)
    text = _LIST_MARKER.sub('. ', text)
    return text.lower().split('. ')


def clean_sentence(sentence: str) -> str:
    """One sentence -> space-separated words without the stripped characters."""
    return ' '.join(_STRIP_CHARS.sub('', sentence).split())


def clean_report(text: str) -> str:
    """Raw report -> the R2Gen cleaned form, e.g. "no effusion . heart normal ."; "" if no words."""
    if not isinstance(text, str):
        raise TypeError(f'clean_report expects a str, got {type(text).__name__}.')
    sentences = [s for s in (clean_sentence(s) for s in split_sentences(text)) if s]
    if not sentences:
        return ''
    return ' . '.join(sentences) + ' .'
