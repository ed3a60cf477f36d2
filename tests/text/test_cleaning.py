"""R2Gen report cleaning on hand examples."""

import pytest

from jima_jax.text.cleaning import clean_report


@pytest.mark.parametrize('raw, want', [
    ('The heart is normal. Lungs are clear.', 'the heart is normal . lungs are clear .'),
    # list numbering dropped, item boundaries become sentence boundaries
    ('1. Cardiomegaly. 2. No effusion.', 'cardiomegaly . no effusion .'),
    ('No effusion 2. Stable heart', 'no effusion . stable heart .'),
    # repeated dots collapse; empty sentences vanish
    ('No effusion.. Normal heart... .', 'no effusion . normal heart .'),
    # punctuation, quotes and slashes stripped inside sentences (R2Gen joins "and/or" -> "andor")
    ('Heart size (normal), "stable"; atelectasis and/or scar!',
     'heart size normal stable atelectasis andor scar .'),
    # digits and hyphens survive; a decimal point inside a sentence is removed
    ('T11-T12 degenerative changes, 2.5 cm nodule. Chest x-XXXX.',
     't11-t12 degenerative changes 25 cm nodule . chest x-xxxx .'),
    ('Line one\nline   two.', 'line one line two .'),
])
def test_hand_examples(raw, want):
    assert clean_report(raw) == want


@pytest.mark.parametrize('raw', ['', '   ', '...', ' . . '])
def test_empty_reports_give_empty_string(raw):
    assert clean_report(raw) == ''


def test_idempotent_on_cleaned_text():
    once = clean_report('Heart size normal. No pneumothorax, effusion or consolidation.')
    assert clean_report(once) == once


def test_rejects_non_text():
    with pytest.raises(TypeError, match='str'):
        clean_report(None)
