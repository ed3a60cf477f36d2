"""Phantom renderer: determinism, localised findings, laterality, severity, labels, CLI."""

import dataclasses
import itertools

import numpy as np
import pytest
from PIL import Image

from jima_jax.data import phantom
from jima_jax.data.phantom import Finding, Findings
from jima_jax.text import symbols

SIZE = 96


def _stated(name: str) -> Finding:
    """The finding with every attribute it takes stated (first choice, moderate severity)."""
    values = {}
    for attr, choices in phantom.ATTRIBUTES[name].items():
        values[attr] = 'moderate' if attr == 'severity' else choices[0]
    return Finding(name, **values)


def _diff(a: Findings, b: Findings, seed: int = 3, size: int = SIZE) -> np.ndarray:
    x = phantom.render_study(a, seed=seed, size=size).astype(int)
    y = phantom.render_study(b, seed=seed, size=size).astype(int)
    return np.abs(x - y)


def test_shape_dtype_and_determinism():
    f = Findings((Finding('Pleural Effusion', side='left', severity='mild'),))
    a = phantom.render_study(f, seed=11, size=64)
    assert a.shape == (2, 64, 64) and a.dtype == np.uint8
    assert a.tobytes() == phantom.render_study(f, seed=11, size=64).tobytes()
    assert a.tobytes() != phantom.render_study(f, seed=12, size=64).tobytes()
    one = phantom.render_study(f, seed=11, size=64, views=1)
    assert one.shape == (1, 64, 64) and np.array_equal(one[0], a[0])
    # An explicit patient overrides the seed's patient: same patient, different noise seed.
    patient = phantom.Patient.from_seed(5)
    b = phantom.render_study(Findings(f.items, patient), seed=5, size=64)
    assert np.array_equal(b, phantom.render_study(f, seed=5, size=64))


def test_images_look_like_radiographs():
    img = phantom.render_study(Findings(), seed=0, size=128)[0].astype(float)
    corner, centre_lung = img[:8, :8].mean(), img[40:60, 25:40].mean()
    mediastinum = img[30:60, 60:68].mean()
    assert corner < 40  # air outside the body is dark
    assert centre_lung < mediastinum - 40  # lungs darker than the mediastinum
    assert 60 < img.mean() < 200


@pytest.mark.parametrize('bad, match', [
    (dict(views=3), 'views'), (dict(size=16), 'size'), (dict(seed=-1), 'seed')])
def test_bad_arguments(bad, match):
    kwargs = dict(seed=0, size=64, views=2) | bad
    with pytest.raises(ValueError, match=match):
        phantom.render_study(Findings(), **kwargs)


def test_finding_validation():
    with pytest.raises(ValueError, match='unknown'):
        Finding('Pneumonitis')
    with pytest.raises(ValueError, match='takes no zone'):
        Finding('Cardiomegaly', zone='upper')
    with pytest.raises(ValueError, match='not one of'):
        Finding('Pneumothorax', side='bilateral')
    with pytest.raises(ValueError, match='repeats'):
        Findings((Finding('Edema'), Finding('Edema')))


@pytest.mark.parametrize('name', phantom.FINDING_NAMES)
def test_each_finding_is_visible_and_local(name):
    f = Findings((_stated(name),))
    diff = _diff(f, Findings())
    region = phantom.finding_regions(f, seed=3, size=SIZE)[name]
    assert region.shape == diff.shape
    assert diff[~region].max(initial=0) == 0  # nothing changes outside the finding's region
    assert diff[0][region[0]].max() >= 8  # and it is visible on the frontal view
    assert region[0].mean() < 0.6  # localised: well under the whole image


def test_every_attribute_combination_renders_locally():
    for name, attrs in phantom.ATTRIBUTES.items():
        combos = list(itertools.product(*attrs.values()))
        for combo in combos[::max(1, len(combos) // 6)]:
            f = Findings((Finding(name, **dict(zip(attrs, combo))),))
            diff = _diff(f, Findings(), seed=8)
            region = phantom.finding_regions(f, seed=8, size=SIZE)[name]
            assert diff[~region].max(initial=0) == 0, f
            assert diff[region].max() >= 6, f


@pytest.mark.parametrize('name', ['Pleural Effusion', 'Pneumothorax', 'Lung Lesion', 'Fracture'])
def test_laterality_patient_right_is_image_left(name):
    centres = {}
    for side in ('right', 'left'):
        f = Findings((dataclasses.replace(_stated(name), side=side),))
        d = _diff(f, Findings())[0].astype(float)
        centres[side] = (d.sum(axis=0) * np.arange(SIZE)).sum() / d.sum()
    assert centres['right'] < SIZE / 2 < centres['left']


@pytest.mark.parametrize('name', ['Cardiomegaly', 'Pleural Effusion', 'Pneumothorax', 'Edema',
                                  'Enlarged Cardiomediastinum'])
def test_severity_grows_the_change(name):
    changed = []
    for severity in phantom.SEVERITIES:
        f = Findings((dataclasses.replace(_stated(name), severity=severity),))
        changed.append(int((_diff(f, Findings(), size=128)[0] > 10).sum()))
    assert changed[0] < changed[1] < changed[2], changed


def test_unstated_attributes_come_from_the_seed():
    vague = phantom.render_study(Findings((Finding('Pleural Effusion'),)), seed=4, size=64)
    explicit = [phantom.render_study(
        Findings((Finding('Pleural Effusion', side=s, severity=v),)), seed=4, size=64)
        for s in phantom.SIDES for v in phantom.SEVERITIES]
    assert sum(np.array_equal(vague, e) for e in explicit) == 1


def test_labels_and_abnormal():
    normal = Findings()
    assert normal.abnormal == 0 and normal.describe() == 'normal'
    want = np.zeros(14, np.int8)
    want[0] = 1
    assert np.array_equal(normal.labels(), want)
    devices = Findings((Finding('Support Devices', kind='pacemaker'),))
    assert devices.abnormal == 1  # IU MeSH counts devices; CheXpert's No Finding does not
    assert devices.labels()[0] == 1 and devices.labels()[13] == 1
    f = Findings((Finding('Cardiomegaly'), Finding('calcified granuloma')))
    labels = f.labels()
    assert labels[symbols.OBSERVATIONS.index('Cardiomegaly')] == 1
    assert labels[0] == 0 and labels.sum() == 1  # the granuloma blocks No Finding, has no column


def test_contact_sheet_cli(tmp_path):
    out = tmp_path / 'sheet.png'
    phantom.main(['--contact-sheet', str(out), '--size', '40'])
    with Image.open(out) as im:
        assert im.mode == 'L' and im.width == 5 * (2 * 40 + 8) and im.height == 3 * (40 + 34)
    assert not [p for p in tmp_path.iterdir() if p != out]  # no temp files left behind
