"""Clinical entity words of a report: the Task-1 target (spec section 3).

The paper takes RadGraph entities; we approximate them with the team lexicon: every word of the
cleaned report that names anatomy or an observation ("no evidence of acute cardiopulmonary
process . moderate hiatal hernia" -> cardiopulmonary, hiatal, hernia). Negated findings stay
entities, as in RadGraph ("definitely absent" observations are still tagged). Descriptors
(acute, mild, normal) and function words are not entities.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from jima_jax.text import lexicon

ENTITY_WORDS = lexicon.ENTITY_ANATOMY | lexicon.ENTITY_OBSERVATION


def extract_entities(cleaned_report: str) -> tuple[str, ...]:
    """Entity words in order of first appearance, each once."""
    seen: dict[str, None] = {}
    for word in cleaned_report.split():
        if word in ENTITY_WORDS:
            seen.setdefault(word)
    return tuple(seen)


def annotation_entities(tokens: str | Sequence[str], where: str) -> tuple[str, ...]:
    """A user-supplied `tokens` field (a string or a list of entity strings) -> unique words.

    `where` names the file and study for the error message.
    """
    if isinstance(tokens, str):
        items: Iterable[str] = [tokens]
    elif isinstance(tokens, (list, tuple)) and all(isinstance(t, str) for t in tokens):
        items = tokens
    else:
        raise ValueError(f"{where}: field 'tokens' must be a string or a list of strings "
                         f"(got {type(tokens).__name__}); fix the annotation or set "
                         "data.entities='lexicon'.")
    seen: dict[str, None] = {}
    for item in items:
        for word in item.lower().split():
            seen.setdefault(word)
    return tuple(seen)
