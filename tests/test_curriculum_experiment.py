"""The curriculum experiment's table rows: schedules, and the R2Gen baseline row."""

from experiments import curriculum_iu_phantom as experiment


def test_a_schedule_row_runs_that_schedule_with_its_own_flags():
    assert experiment.row_setup('jima') == ('jima', [])
    assert experiment.row_setup('jima_release') == ('jima_release',
                                                     ['--config.train.eval_decode=True'])


def test_the_r2gen_row_is_jima_without_entity_fusion_and_no_curriculum():
    assert experiment.row_setup('r2gen') == ('none', ['--config.model.entity_fusion=False'])
    base = experiment.run_config('r2gen', 2, ['--config.train.num_epochs=3'])
    jima = experiment.run_config('none', 2, ['--config.train.num_epochs=3'])
    assert (base.model.entity_fusion, jima.model.entity_fusion) == (False, True)
    assert base.curriculum.schedule == jima.curriculum.schedule == 'none'
    assert base.seed == 2 and base.train.num_epochs == 3
    # everything else equal: only the switch differs
    flat = lambda c: {k: v for k, v in c.to_dict().items() if k != 'model'}
    assert flat(base) == flat(jima)
    assert {k: v for k, v in base.model.to_dict().items() if k != 'entity_fusion'} == \
        {k: v for k, v in jima.model.to_dict().items() if k != 'entity_fusion'}
