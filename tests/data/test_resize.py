"""data.resize: 'square' squashes a view, 'short_side' keeps its aspect and the central square (the
release's Resize(256) + crop); prepare fingerprints and predict follow the setting."""

import numpy as np
import pytest
from PIL import Image

from configs import default
from jima_jax import predict
from jima_jax.data import prepare
from jima_jax.data.builders.base import fit_views


def _tall(h=120, w=40):
    """White, with black bands in the top and bottom sixth (outside the central square)."""
    v = np.full((h, w), 255, np.uint8)
    v[:h // 6], v[-(h // 6):] = 0, 0
    return v


def test_short_side_keeps_the_central_square_and_square_squashes_the_whole_view():
    tall = _tall()
    kept = fit_views([tall], 1, 20, 'short_side')[0]
    assert kept.shape == (20, 20) and (kept == 255).all()  # rows 40..80 of 120: no band
    squashed = fit_views([tall], 1, 20)[0]
    assert squashed[0].max() == 0 and squashed[-1].max() == 0  # the bands, squeezed in
    np.testing.assert_array_equal(squashed, fit_views([tall], 1, 20, 'square')[0])
    wide = fit_views([tall.T.copy()], 1, 20, 'short_side')[0]
    np.testing.assert_array_equal(wide, kept.T)
    same = np.arange(400, dtype=np.uint8).reshape(20, 20)  # already the size: untouched
    np.testing.assert_array_equal(fit_views([same], 1, 20, 'short_side')[0], same)
    with pytest.raises(ValueError, match=r"data.resize='crop': expected one of"):
        fit_views([tall], 1, 20, 'crop')


def test_fingerprint_is_unchanged_for_square_and_differs_for_short_side():
    c = default.get_config().data
    square = prepare.config_fingerprint(c)
    del c['resize']  # a config from before the key existed
    assert prepare.config_fingerprint(c) == square
    c = default.get_config().data
    c.resize = 'short_side'
    assert prepare.config_fingerprint(c) != square
    c.reports_only = True  # no images: the setting does not matter
    r = default.get_config().data
    r.reports_only = True
    assert prepare.config_fingerprint(c) == prepare.config_fingerprint(r)
    c.resize = 'fit'
    with pytest.raises(ValueError, match='data.resize'):
        prepare.config_fingerprint(c)


def test_predict_reads_image_files_with_the_configured_resize(tmp_path):
    path = tmp_path / 'tall.png'
    Image.fromarray(_tall()).save(path)
    split = predict.studies_as_split([('s', [str(path)])], 1, 20, 8, 4, 'short_side')
    np.testing.assert_array_equal(split.images[0], fit_views([_tall()], 1, 20, 'short_side'))
