"""predict: study lists from flags and files, image preparation, errors that name the input.

The CLI round trip (predict on PNGs == eval on the same studies) is in tests/test_main.py.
"""

import json

import numpy as np
import pytest
from PIL import Image

from jima_jax import predict


def test_studies_from_flags_json_lines_and_plain_lines(tmp_path):
    (tmp_path / 'list.jsonl').write_text(
        '# a comment\n'
        + json.dumps({'id': 'study-7', 'images': ['a/f.png', 'a/l.png']}) + '\n'
        + '\n'
        + 'b/front.jpg, b/side.jpg\n')
    studies = predict.parse_studies(['/x/p1_front.png,/x/p1_lat.png'],
                                    str(tmp_path / 'list.jsonl'))
    assert studies == [('p1_front', ['/x/p1_front.png', '/x/p1_lat.png']),
                       ('study-7', [str(tmp_path / 'a/f.png'), str(tmp_path / 'a/l.png')]),
                       ('front', [str(tmp_path / 'b/front.jpg'), str(tmp_path / 'b/side.jpg')])]


@pytest.mark.parametrize('content,message', [
    ('{"id": "s", "views": ["a.png"]}\n', r'list.jsonl:1: expected \{"id"'),
    ('{"id": "s", "images": ["a.png"]}\n{"id": "s", "images": ["b.png"]}\n', "'s' appears twice"),
    (' , \n', r'list.jsonl:1: no image paths'),
])
def test_bad_lists_name_the_line_and_the_fix(tmp_path, content, message):
    (tmp_path / 'list.jsonl').write_text(content)
    with pytest.raises(ValueError, match=message):
        predict.parse_studies([], str(tmp_path / 'list.jsonl'))


def test_nothing_to_predict_or_a_missing_list_is_an_error(tmp_path):
    with pytest.raises(ValueError, match='--images path'):
        predict.parse_studies([], None)
    with pytest.raises(ValueError, match='no such file'):
        predict.parse_studies([], str(tmp_path / 'nope.jsonl'))


def test_split_of_image_files_matches_prepare_time_processing(tmp_path):
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> grayscale 76 (ITU-R 601 luma, as PIL's convert('L'))
    Image.fromarray(rgb).save(tmp_path / 'front.png')
    gray16 = (np.arange(20 * 20, dtype=np.uint16).reshape(20, 20) * 100)
    Image.fromarray(gray16).save(tmp_path / 'lat.png')
    split = predict.studies_as_split(
        [('s1', [str(tmp_path / 'front.png'), str(tmp_path / 'lat.png')]),
         ('s2', [str(tmp_path / 'front.png')])], num_views=2, image_size=16, max_len=5,
        max_entities=3)
    assert split.images.shape == (2, 2, 16, 16) and split.images.dtype == np.uint8
    assert np.all(split.images[0, 0] == 76)
    assert split.images[0, 1].min() < 10 and split.images[0, 1].max() > 240  # 16-bit rescaled
    np.testing.assert_array_equal(split.images[1, 1], split.images[1, 0])  # one view repeated
    assert list(split.ids) == ['s1', 's2'] and split.tokens.shape == (2, 5)
    assert np.all(split.entities == -1) and split.labels.shape[0] == 2


def test_unreadable_image_names_the_study_and_the_file(tmp_path):
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    with pytest.raises(ValueError, match=r'study s9: image file .*broken.png cannot be decoded'):
        predict.studies_as_split([('s9', [str(tmp_path / 'broken.png')])], 1, 8, 4, 2)
