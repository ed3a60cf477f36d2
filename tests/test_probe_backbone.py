"""The backbone probe (experiments/probe_backbone.py): the probe fit, its report, its errors."""

import numpy as np
import pytest

from experiments import probe_backbone as probe


def test_fit_probe_learns_a_separable_finding_and_is_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = rng.random((200, 2)) < 0.3
    # each finding sits on one side of one feature, with a margin: separable
    x[:, 2] = np.where(y[:, 0], 1.0, -1.0) * (0.5 + np.abs(x[:, 2]))
    x[:, 4] = np.where(y[:, 1], -1.0, 1.0) * (0.5 + np.abs(x[:, 4]))
    predict = probe.fit_probe(x, y, steps=300)
    p = predict(x)
    assert p.shape == (200, 2) and ((p > 0) & (p < 1)).all()
    np.testing.assert_array_equal(p > 0.5, y)  # linearly separable: every study right at 0.5
    np.testing.assert_array_equal(probe.fit_probe(x, y, steps=300)(x), p)  # no randomness
    # a feature that carries nothing leaves the probe at the prevalence
    flat = probe.fit_probe(np.zeros((100, 3), np.float32), np.arange(100)[:, None] < 25,
                           steps=300)(np.zeros((1, 3), np.float32))
    assert flat[0, 0] == pytest.approx(0.25, abs=0.01)


def test_markdown_has_a_row_per_backbone_and_a_column_per_backbone_per_finding():
    def row(name, v):
        return {'backbone': name, 'macro': {'auc': v, 'f1_val_threshold': v, 'f1_oracle': v,
                                            'f1_at_half': v},
                'findings': {'edema': {'support': 2, 'auc': v, 'f1_val_threshold': v}}}
    text = probe.markdown({'command': 'x', 'date': 'd', 'cpu': 'c', 'jax': 'j',
                           'rows': [row('pretrained', 0.5), row('2618', 0.25)]})
    assert '| pretrained | 0.500 | 0.500 | 0.500 | 0.500 |' in text
    assert '| 2618 | 0.250 | 0.250 | 0.250 | 0.250 |' in text
    assert '| edema | 2: 0.50 / 0.50 | 2: 0.25 / 0.25 |' in text


def test_a_missing_pretrained_backbone_names_the_file(tmp_path):
    from jima_jax.configs import demo
    with pytest.raises(FileNotFoundError, match=r'pretrain/backbone.safetensors.*pretrained'):
        probe.backbone_model(demo.get_config(), tmp_path, 'pretrained', vocab_size=10)
