"""Visual pre-training (jima_jax/train/pretrain.py) and the weight file it travels in."""

import json

import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from jima_jax import torch_files
from jima_jax.model import resnet
from jima_jax.text.symbols import LABEL_BLANK, LABEL_NEGATIVE, LABEL_POSITIVE, LABEL_UNCERTAIN
from jima_jax.train import pretrain


def test_safetensors_round_trip_keeps_values_dtypes_and_metadata(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {'a.weight': rng.normal(size=(3, 2, 1, 1)).astype(np.float32),
               'b': np.arange(5, dtype=np.int64),
               'c': rng.normal(size=(4,)).astype(ml_dtypes.bfloat16),
               'empty': np.zeros((0, 3), np.float32)}
    path = torch_files.write_safetensors(tmp_path / 'w.safetensors', tensors, {'note': 'x'})
    back = torch_files.read_safetensors(path)
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], 'little')
    assert n % 8 == 0 and json.loads(raw[8:8 + n])['__metadata__'] == {'note': 'x'}
    assert [p.name for p in tmp_path.iterdir()] == ['w.safetensors']  # no temporary left


def test_safetensors_refuses_a_dtype_it_cannot_store(tmp_path):
    with pytest.raises(torch_files.WeightFileError, match='complex64'):
        torch_files.write_safetensors(tmp_path / 'w.safetensors',
                                      {'z': np.zeros(2, np.complex64)})
    assert not list(tmp_path.iterdir())


def test_torchvision_state_is_the_inverse_of_loading_it():
    a = resnet.ResNet('resnet18', rngs=nnx.Rngs(params=0))
    b = resnet.ResNet('resnet18', rngs=nnx.Rngs(params=1))
    state = resnet.torchvision_state(a)
    assert state['conv1.weight'].shape == (64, 3, 7, 7)  # OIHW, as torchvision stores it
    assert 'layer4.1.bn2.running_var' in state and not any(k.startswith('fc.') for k in state)
    resnet.load_torchvision_state(b, state)
    for (path, va), (_, vb) in zip(nnx.to_flat_state(nnx.state(a)),
                                   nnx.to_flat_state(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(va[...]), np.asarray(vb[...]), err_msg=str(path))


def test_label_targets_count_uncertain_as_found_and_append_abnormal():
    class Split:
        labels = np.full((2, 14), LABEL_BLANK, np.int8)
        abnormal = np.array([1, 0], np.int8)
    Split.labels[0, 2] = LABEL_POSITIVE  # Cardiomegaly
    Split.labels[0, 10] = LABEL_UNCERTAIN  # Pleural Effusion
    Split.labels[0, 9] = LABEL_NEGATIVE  # Pneumothorax
    Split.labels[1, 0] = LABEL_POSITIVE  # No Finding: not a target of its own
    t = pretrain.label_targets(Split)
    assert t.shape == (2, len(pretrain.TARGETS)) == (2, 14)
    want = np.zeros((2, 14), np.float32)
    want[0, [1, 9, 13]] = 1  # columns shift by one: "No Finding" is dropped, abnormal appended
    np.testing.assert_array_equal(t, want)
    assert pretrain.TARGETS[1] == 'Cardiomegaly' and pretrain.TARGETS[9] == 'Pleural Effusion'


def test_findings_targets_add_the_three_other_findings_the_labeler_reads():
    class Split:
        reports = np.array(['Calcified granuloma in the right upper lobe. No pleural effusion.',
                            'Degenerative changes of the spine. Small hiatal hernia. '
                            'Heart size is enlarged.',
                            'No hernia. Lungs are clear.'], object)
        labels = np.full((3, 14), LABEL_BLANK, np.int8)
        abnormal = np.array([1, 1, 0], np.int8)
    names = pretrain.target_names('findings')
    assert len(names) == 17 and names[:13] == pretrain.TARGETS[:13] and names[-1] == 'abnormal'
    assert names[13:16] == ('calcified granuloma', 'degenerative spine', 'hiatal hernia')
    t = pretrain.label_targets(Split, 'findings')
    want = np.zeros((3, 17), np.float32)
    want[0, [13, 16]] = 1  # the negated effusion is not a target
    want[1, [1, 14, 15, 16]] = 1  # cardiomegaly read from the text, not from Split.labels
    np.testing.assert_array_equal(t, want)  # the negated hernia of study 2 is not either


def test_pretrain_targets_key_refuses_an_unknown_set_and_old_configs_read_chexpert():
    import ml_collections
    from jima_jax.configs import default
    pcfg = default.get_config().pretrain
    assert pretrain.targets_of(pcfg) == 'chexpert'
    del pcfg['targets']
    assert pretrain.targets_of(pcfg) == 'chexpert'  # a config written before the key
    bad = ml_collections.ConfigDict({**pcfg.to_dict(), 'targets': 'drawn'})
    with pytest.raises(ValueError, match=r"pretrain.targets='drawn'.*chexpert, findings"):
        pretrain.check_config(bad)


def test_auc_against_hand_counts():
    # positives 0.9, 0.3; negatives 0.8, 0.1: pairs won 0.9>0.8, 0.9>0.1, 0.3>0.1 -> 3/4
    assert pretrain.auc(np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])) == 0.75
    assert pretrain.auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5  # a tie counts half
    assert np.isnan(pretrain.auc(np.array([0.5, 0.2]), np.array([1, 1])))


@pytest.mark.parametrize('key,value', [('steps', -1), ('batch_size', 0), ('lr', 0.0),
                                       ('log_every_steps', 0)])
def test_bad_settings_name_the_field(key, value):
    from configs import smoke
    c = smoke.get_config()
    c.pretrain[key] = value
    with pytest.raises(ValueError, match=f'pretrain.{key}'):
        pretrain.check_config(c.pretrain)


def test_pretraining_writes_a_backbone_that_training_starts_from(data_dir, tmp_path):
    from configs import smoke
    from jima_jax.train import run_setup
    c = smoke.get_config()
    c.model.backbone_width = 32  # the key reaches both the pre-trained and the trained f_R
    c.pretrain.steps = 3
    c.pretrain.batch_size = 8
    unchanged = pretrain.with_pretrained_backbone(c, tmp_path, fresh=False)
    assert unchanged is c and not (tmp_path / 'pretrain').exists()  # resumed runs never pretrain
    c2 = pretrain.with_pretrained_backbone(c, tmp_path, fresh=True)
    path = pretrain.backbone_path(tmp_path)
    assert c2.model.pretrained == str(path) and c.model.pretrained == ''
    summary = json.loads((path.parent / 'summary.json').read_text())
    assert summary['steps'] == 3 and 0.0 <= summary['val/macro_auc'] <= 1.0
    weights = torch_files.read_weights(path)
    assert weights['layer4.1.conv2.weight'].shape == (256, 256, 3, 3)  # 512 at width 64
    fresh_model = resnet.torchvision_state(
        resnet.ResNet('resnet18', base_width=32, rngs=nnx.Rngs(params=c.seed)))
    assert any(not np.array_equal(weights[k], fresh_model[k]) for k in weights)  # it trained
    _, params, stats = run_setup.build_model(c2, vocab_size=40)
    np.testing.assert_array_equal(params['visual']['conv1']['kernel'],
                                  weights['conv1.weight'].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(stats['visual']['bn1']['mean'], weights['bn1.running_mean'])
    assert pretrain.with_pretrained_backbone(c, tmp_path, fresh=True).model.pretrained == str(path)


def test_label_trainer_fitted_in_pieces_equals_one_fit_across_an_epoch_end(data_dir):
    """experiments/visibility_ceiling.py scores between `fit` calls: a later call must go on
    where the last stopped (64 studies / batch 8 = 8 steps an epoch; 5 + 6 crosses its end)."""
    import jax

    from configs import smoke
    from jima_jax.data import prepare
    c = smoke.get_config()
    c.model.backbone_width = 8
    train = prepare.load_prepared(c.data).splits['train']
    targets = pretrain.label_targets(train)
    whole = pretrain.LabelTrainer(c, train, targets, batch_size=8, lr=1e-3)
    whole.fit(11)
    pieces = pretrain.LabelTrainer(c, train, targets, batch_size=8, lr=1e-3)
    pieces.fit(5)
    pieces.fit(6)
    assert whole.done == pieces.done == 11
    for a, b in zip(jax.tree.leaves(jax.device_get(whole.params)),
                    jax.tree.leaves(jax.device_get(pieces.params))):
        np.testing.assert_array_equal(a, b)
    shifted = pretrain.LabelTrainer(c, train, targets, batch_size=8, lr=1e-3)
    shifted.fit(5)
    shifted._pos = 0  # restarting the epoch instead (the bug this guards against) differs
    shifted.fit(6)
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(jax.device_get(whole.params)),
        jax.tree.leaves(jax.device_get(shifted.params))))
    with pytest.raises(ValueError, match='3 target rows for 64 studies'):
        pretrain.LabelTrainer(c, train, targets[:3], batch_size=8, lr=1e-3)
