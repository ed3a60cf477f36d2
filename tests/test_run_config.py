"""Eval/predict take the model's structure and data from the run's config.json."""

import json

import pytest

from configs import smoke
from jima_jax import run_config


def _trained_with(tmp_path, **changes):
    c = smoke.get_config()
    for key, value in changes.items():
        node = c
        *parents, last = key.split('.')
        for p in parents:
            node = node[p]
        node[last] = value
    (tmp_path / 'config.json').write_text(json.dumps(json.loads(c.to_json_best_effort())))
    return c


def test_structure_and_data_keys_come_from_the_run(tmp_path):
    _trained_with(tmp_path, **{'model.width': 96, 'data.phantom.num_train': 80,
                               'input.mean': (0.5, 0.5, 0.5), 'model.dropout': 0.3,
                               'data.data_dir': '/elsewhere', 'train.num_epochs': 9})
    config, taken = run_config.apply_saved(smoke.get_config(), tmp_path, argv=['prog'])
    assert sorted(taken) == ['data.phantom.num_train', 'input.mean', 'model.width']
    assert config.model.width == 96 and config.data.phantom.num_train == 80
    assert config.input.mean == (0.5, 0.5, 0.5)  # a tuple again, as the config declares it
    # free keys (dropout, where the data lives) and non-structural ones stay as given
    assert config.model.dropout == smoke.get_config().model.dropout
    assert config.data.data_dir == '' and config.train.num_epochs == 2
    with pytest.raises(AttributeError):
        config.model.new_key = 1  # still locked


def test_an_override_that_contradicts_the_run_is_refused_by_name(tmp_path):
    _trained_with(tmp_path, **{'model.backbone': 'resnet34'})
    c = smoke.get_config()
    with pytest.raises(ValueError, match=r"model\.backbone='resnet18'.*'resnet34'"):
        run_config.apply_saved(c, tmp_path, argv=['prog', '--config.model.backbone=resnet18'],
                               mode='eval')
    # the same key typed to the run's own value is fine
    c.model.backbone = 'resnet34'
    out, taken = run_config.apply_saved(c, tmp_path, argv=['--config.model.backbone=resnet34'])
    assert out is c and taken == []


def test_without_a_saved_config_nothing_changes(tmp_path):
    c = smoke.get_config()
    assert run_config.apply_saved(c, tmp_path) == (c, [])


def test_an_unreadable_saved_config_names_the_file(tmp_path):
    (tmp_path / 'config.json').write_text('{"model": ')
    with pytest.raises(ValueError, match='config.json: unreadable run config'):
        run_config.apply_saved(smoke.get_config(), tmp_path)


def test_overridden_keys_reads_both_flag_forms():
    assert run_config.overridden_keys(
        ['--config', 'x.py', '--config.model.width=3', '--config.data.name', 'phantom',
         '--workdir=w']) == {'model.width', 'data.name'}
