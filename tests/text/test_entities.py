"""Entity words from the lexicon (spec section 3) and from a user-supplied 'tokens' field."""

import pytest

from jima_jax.text.entities import annotation_entities, extract_entities


def test_spec_example():
    assert extract_entities('no evidence of acute cardiopulmonary process . '
                            'moderate hiatal hernia .') == ('cardiopulmonary', 'hiatal', 'hernia')


def test_order_unique_and_negated_findings_kept():
    text = 'the heart is normal . no pleural effusion . heart size and pleural spaces normal .'
    assert extract_entities(text) == ('heart', 'pleural', 'effusion')


def test_descriptors_are_not_entities():
    assert extract_entities('mild acute normal stable unremarkable evidence process .') == ()


def test_annotation_tokens():
    assert annotation_entities(['Pleural effusion', 'left lung', 'effusion'], 'x') == (
        'pleural', 'effusion', 'left', 'lung')
    assert annotation_entities('heart lungs', 'x') == ('heart', 'lungs')
    with pytest.raises(ValueError, match='file.json study 7'):
        annotation_entities({'a': 1}, 'file.json study 7')
