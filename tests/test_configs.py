"""Every config loads, documents its own command, and fails loudly on a misspelt key."""

import subprocess
import sys

import pytest
from ml_collections import config_flags  # noqa: F401  (the CLI loader)

from configs import default, demo, iu_xray, mimic_cxr, smoke
from tests.conftest import REPO

CONFIGS = {'default': default, 'demo': demo, 'iu_xray': iu_xray, 'mimic_cxr': mimic_cxr,
           'smoke': smoke}


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_config_loads_and_its_docstring_is_the_run_command(name):
    module = CONFIGS[name]
    c = module.get_config()
    assert set(c.keys()) == set(default.get_config().keys())
    assert f'--config configs/{name}.py' in module.__doc__


def test_release_variant_follows_spec_section_8():
    paper, release = iu_xray.get_config(), iu_xray.get_config('release')
    assert paper.model.entity_head == 'patch_linear' and release.model.entity_head == 'mlp'
    assert release.loss.entity_weight == 0.5
    assert release.optim.task1.visual_lr == 5e-5 and release.optim.task1.lr == 1e-4
    assert release.optim.task1.amsgrad and release.optim.task1.weight_decay == 5e-5
    assert release.optim.task1.clip == 'value' and release.optim.task1.clip_value == 0.1
    assert (release.optim.task1.decay_rate, release.optim.task1.decay_every_epochs) == (0.1, 50)
    assert release.curriculum.warmup_epochs == 10 and paper.curriculum.warmup_epochs == 30
    assert paper.optim.task1.lr == 4e-4 and paper.optim.task2.lr == 1e-5
    assert paper.optim.task1.decay_rate == 0.8
    with pytest.raises(ValueError, match='release'):
        iu_xray.get_config('nonsense')


def test_misspelt_override_fails_with_a_suggestion():
    proc = subprocess.run(
        [sys.executable, '-m', 'jima_jax.main', '--config', 'configs/smoke.py',
         '--workdir', '/nonexistent', '--config.train.num_epoch=3'],
        cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'num_epochs' in proc.stderr  # "did you mean"


def test_locked_config_refuses_new_keys_in_code():
    c = default.get_config()
    c.lock()
    with pytest.raises(AttributeError, match='batch_size'):
        c.input.batch_sise = 3


def _differing(a, b) -> set[str]:
    """The dotted keys whose values differ between two configs of the same keys."""
    def flat(d, prefix=''):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f'{prefix}{k}.') if isinstance(v, dict) else {f'{prefix}{k}': v})
        return out
    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return {k for k in fa if fa[k] != fb[k]}


def test_demo_variants_are_the_recipes_whose_figures_the_readme_quotes():
    demo_, long, wide, tiny = (demo.get_config(), demo.get_config('long'),
                               demo.get_config('wide'), demo.get_config('tiny'))
    for c in (demo_, long, wide):  # the measured reading recipe (README, "Models that read ...")
        assert c.data.phantom.num_train == 3000 and c.pretrain.batch_size == 32
        assert (c.optim.task1.lr, c.optim.task2.lr) == (2e-3, 1e-3)
        assert c.optim.task1.decay_rate == c.optim.task2.decay_rate == 1.0
    # the demo: a quarter-width ResNet-18, 1,800 pre-training steps on the 16 findings, then 18
    # epochs (3,366 steps) with f_R frozen and its features cached; the full-width variants
    # train f_R, as measured
    assert (demo_.model.backbone_width, demo_.pretrain.steps, demo_.pretrain.targets,
            demo_.train.num_epochs, demo_.train.max_steps, demo_.optim.task1.visual_lr,
            demo_.train.feature_cache) == (16, 1800, 'findings', 18, 0, 0.0, True)
    # ':uncached' is the demo measured before the cache (900 steps, 13 findings, f_R run on
    # every batch, 20 epochs); nothing else differs
    uncached = demo.get_config('uncached')
    assert (uncached.pretrain.steps, uncached.pretrain.targets, uncached.train.feature_cache,
            uncached.train.num_epochs) == (900, 'chexpert', False, 20)
    assert _differing(uncached, demo_) == {'pretrain.steps', 'pretrain.targets',
                                           'train.feature_cache', 'train.num_epochs'}
    assert not (long.train.feature_cache or wide.train.feature_cache or tiny.train.feature_cache)
    assert long.optim.task1.visual_lr == wide.optim.task1.visual_lr == -1.0
    assert (wide.model.backbone_width, wide.pretrain.steps, wide.train.num_epochs) == (64, 300, 4)
    assert (long.model.backbone_width, long.pretrain.steps, long.train.max_steps) == (64, 400, 3200)
    # ':tiny' is the demo before 2026-12-04: no pre-training, 480 studies, decaying 5e-4
    assert tiny.pretrain.steps == 0 and tiny.data.phantom.num_train == 480
    assert tiny.model.backbone_width == 64
    assert (tiny.optim.task1.lr, tiny.optim.task1.decay_rate,
            tiny.train.num_epochs) == (5e-4, 0.9, 6)
    # ':more_pretraining': ':uncached' with 3,600 pre-training steps on the 16 findings, as
    # measured; the rest of the recipe is the same
    more = demo.get_config('more_pretraining')
    assert (more.pretrain.steps, more.pretrain.targets) == (3600, 'findings')
    assert _differing(more, uncached) == {'pretrain.steps', 'pretrain.targets'}
    with pytest.raises(ValueError, match='long'):
        demo.get_config('longer')


def test_iu_phantom_cpu_is_the_measured_command_line():
    """README: the ':cpu' figures were measured as ':small' plus these overrides; the preset must
    stay exactly that run (every key compared)."""
    from configs import iu_phantom
    from jima_jax import run_config
    measured = iu_phantom.get_config('small')
    for key, value in {
            'model.backbone_width': 16, 'data.num_views': 2, 'data.image_size': 72,
            'input.image_size': 64, 'pretrain.steps': 1200, 'pretrain.batch_size': 32,
            'optim.task1.lr': 2e-3, 'optim.task2.lr': 1e-3, 'optim.task1.decay_rate': 1.0,
            'optim.task2.decay_rate': 1.0, 'curriculum.schedule': 'none',
            'train.num_epochs': 100, 'train.max_steps': 4800, 'train.log_every_steps': 100,
            'data.phantom.train_renders': 10}.items():
        node = measured
        *parents, last = key.split('.')
        for p in parents:
            node = node[p]
        node[last] = value
    assert run_config.flat(iu_phantom.get_config('cpu').to_dict()) == run_config.flat(
        measured.to_dict())
    assert iu_phantom.get_config('small').data.phantom.train_renders == 1
    with pytest.raises(ValueError, match="':cpu'"):
        iu_phantom.get_config('tiny')
