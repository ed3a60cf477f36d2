"""Schedulers on hand sequences, selection and checkpointed state.

The end-to-end check that a run SIGKILLed inside a curriculum epoch resumes to exactly the
uninterrupted run (curriculum state included) is tests/test_main.py's interrupted run, which uses
the curriculum for that reason.
"""

import json
import math

import ml_collections
import numpy as np
import pytest

from configs import default, iu_phantom, iu_xray, mimic_cxr
from jima_jax.train import curriculum as cl
from jima_jax.train.difficulty import Difficulty

N = 40


def ccfg(schedule='jima', **kw):
    c = default.get_config().curriculum
    c.schedule = schedule
    c.update(kw)
    return c


def scores(seed: int, n: int = N, *, entity_free: int = 0) -> Difficulty:
    """Distinct random difficulties; the first `entity_free` examples have no entities."""
    rng = np.random.default_rng(seed)
    k1 = rng.permutation(n).astype(np.float32) / n + 0.01
    has = np.arange(n) >= entity_free
    k1[~has] = 0.0
    k2 = rng.permutation(n).astype(np.float32) / (2 * n) + 0.02
    return Difficulty(ids=np.arange(n).astype(str), k1=k1, k2_all=k2, k2_balanced=k2[::-1].copy(),
                      has_entities=has)


def hardest(k: np.ndarray, ratio: float) -> np.ndarray:
    return np.sort(np.argsort(-k)[:math.ceil(ratio * len(k) - 1e-9)])


def easiest(k: np.ndarray, ratio: float) -> np.ndarray:
    return np.sort(np.argsort(k)[:math.ceil(ratio * len(k) - 1e-9)])


def test_update_ratio_on_hand_sequences():
    def run(s, c=1.0):
        out = []
        for prev, now in zip(s, s[1:]):
            c = cl.update_ratio(c, prev, now, 0.1)
            out.append(c)
        return out

    np.testing.assert_allclose(run([0.5, 0.6, 0.72]), [0.8, 0.64])  # rising: fewer kept
    np.testing.assert_allclose(run([0.5, 0.4, 0.5], c=0.5), [0.6, 0.45])  # falling: more back
    np.testing.assert_allclose(run([0.5, 0.4]), [1.0])  # min(1, 1.2 * 1)
    np.testing.assert_allclose(run([0.5, 0.5, 0.5], c=0.3), [0.3, 0.3])  # flat
    np.testing.assert_allclose(run([0.2, 0.5]), [0.1])  # 1 - 1.5 < 0 -> the floor
    np.testing.assert_allclose(run([0.3, 0.5, 0.55]), [1 / 3, 0.3])  # rises compound
    assert cl.update_ratio(0.7, 0.0, 0.2, 0.1) == 0.7  # undefined relative change: c stays


def test_competence_paces():
    assert cl.competence(0, 4, 0.1, 'linear') == pytest.approx(0.1)
    assert cl.competence(2, 4, 0.1, 'linear') == pytest.approx(0.55)
    assert cl.competence(2, 4, 0.1, 'sqrt') == pytest.approx(math.sqrt(0.01 + 0.99 / 2))
    assert cl.competence(9, 4, 0.1, 'sqrt') == 1.0


def test_scores_are_due_in_the_last_two_warmup_epochs_then_every_n():
    cur = cl.Curriculum(ccfg(warmup_epochs=3), N, seed=0, num_epochs=8)
    assert [e for e in range(8) if cur.scores_due(e)] == [1, 2, 3, 4, 5, 6]  # not the last
    cur = cl.Curriculum(ccfg(warmup_epochs=3, rescore_every_epochs=2), N, seed=0, num_epochs=9)
    assert [e for e in range(9) if cur.scores_due(e)] == [1, 2, 4, 6]
    cur = cl.Curriculum(ccfg('competence_sqrt', warmup_epochs=3), N, seed=0, num_epochs=8)
    assert [e for e in range(8) if cur.scores_due(e)] == [2, 3, 4, 5, 6]  # no s_0 needed
    cur = cl.Curriculum(ccfg('none'), N, seed=0, num_epochs=8)
    assert not any(cur.scores_due(e) for e in range(8))
    np.testing.assert_array_equal(cur.kept(5)[0], np.arange(N))


def test_jima_keeps_exactly_the_hardest_fraction_with_a_ratio_per_task():
    cur = cl.Curriculum(ccfg(warmup_epochs=2, floor=0.1), N, seed=0, num_epochs=10)
    everything = np.arange(N)
    s = []
    for epoch in range(5):
        d = scores(epoch, entity_free=4)
        cur.observe(epoch, d)
        s.append((1 - d.k1[4:].mean(), 1 - d.k2_all.mean()))  # entity-free k1 left out of s
        if epoch == 0:  # s_0 only: still warming up
            np.testing.assert_array_equal(cur.kept(1)[0], everything)
            assert cur.c_history == []
            continue
        c1, c2 = 1.0, 1.0
        for (a1, a2), (b1, b2) in zip(s, s[1:]):
            c1 = max(0.1, min(1, (1 - (b1 - a1) / a1) * c1))
            c2 = max(0.1, min(1, (1 - (b2 - a2) / a2) * c2))
        assert cur.ratios() == pytest.approx((c1, c2))
        kept1, kept2 = cur.kept(epoch + 1)
        if epoch == 1:  # the last warm-up epoch itself still trained on everything
            np.testing.assert_array_equal(cur.kept(epoch)[0], everything)
        np.testing.assert_array_equal(kept1, hardest(d.k1, c1))
        np.testing.assert_array_equal(kept2, hardest(d.k2_all, c2))
    assert len(cur.kept1) != len(cur.kept2)  # two ratios
    assert [row[0] for row in cur.s_history] == [0, 1, 2, 3, 4]


def test_balanced_k2_mode_ranks_by_the_balanced_scores():
    cur = cl.Curriculum(ccfg(warmup_epochs=1, k2_mode='balanced'), N, seed=0, num_epochs=5)
    cur.observe(0, scores(0))
    cur.observe(1, scores(1))
    np.testing.assert_array_equal(cur.kept(2)[1], hardest(scores(1).k2_balanced, cur.ratios()[1]))


def test_release_keeps_the_easiest_with_one_ratio_driven_by_validation_bleu():
    cur = cl.Curriculum(ccfg('jima_release', warmup_epochs=0), N, seed=0, num_epochs=10)
    assert cur.measure == 'val/BLEU_4'
    cur.observe(0, scores(0), {'val/BLEU_4': 0.10})
    cur.observe(1, scores(1), {'val/BLEU_4': 0.12})  # +20% -> c = 0.8
    assert cur.ratios() == pytest.approx((0.8, 0.8))
    d = scores(1)
    np.testing.assert_array_equal(cur.kept(2)[0], easiest(d.k1, 0.8))
    np.testing.assert_array_equal(cur.kept(2)[1], easiest(d.k2_all, 0.8))
    cur.observe(2, scores(2), {'val/BLEU_4': 0.09})  # -25% -> min(1, 1.25 * 0.8) = 1
    assert cur.ratios() == (1.0, 1.0)
    with pytest.raises(ValueError, match='val/BLEU_4'):
        cur.observe(3, scores(3), {'val/loss/report': 2.0})


def test_release_scores_first_at_epoch_10_and_selects_from_epoch_12():
    """The authors' code: 10 warm-up epochs, then s_0 and s_1 in epochs 10 and 11 (0-based),
    still on everything; the paper's rule takes them in the warm-up's last two epochs (8, 9)."""
    everything = np.arange(N)
    for schedule, first, start in (('jima_release', 10, 12), ('jima', 8, 10)):
        cur = cl.Curriculum(ccfg(schedule, warmup_epochs=10, measure='val/BLEU_4'), N, seed=0,
                            num_epochs=16)  # rising BLEU: c < 1 at the first selection
        assert [e for e in range(16) if cur.scores_due(e)] == list(range(first, 15))
        for epoch in range(first, start):
            cur.observe(epoch, scores(epoch), {'val/BLEU_4': 0.1 + 0.01 * epoch})
            kept = cur.kept(epoch + 1)[1]
            if epoch + 1 < start:
                assert not cur.c_history
                np.testing.assert_array_equal(kept, everything)
            else:
                assert cur.c_history[0][0] == start and len(kept) < N
                np.testing.assert_array_equal(cur.kept(start - 1)[1], everything)


def test_a_validation_loss_measure_enters_as_exp_minus_loss():
    cur = cl.Curriculum(ccfg(warmup_epochs=2, measure='val/loss/report'), N, seed=0,
                        num_epochs=10)
    cur.observe(0, scores(0), {'val/loss/report': 2.0})
    cur.observe(1, scores(1), {'val/loss/report': 1.9})
    s0, s1 = math.exp(-2.0), math.exp(-1.9)
    assert cur.ratios()[0] == pytest.approx(1 - (s1 - s0) / s0)


def test_competence_keeps_the_easiest_and_anti_the_hardest_on_a_fixed_pace():
    for schedule, pick in (('competence_linear', easiest), ('anti', hardest)):
        cur = cl.Curriculum(ccfg(schedule, warmup_epochs=2, floor=0.2), N, seed=0, num_epochs=7)
        ratios = []
        for epoch in range(1, 6):
            d = scores(epoch)
            cur.observe(epoch, d)
            ratios.append(cur.ratios()[0])
            np.testing.assert_array_equal(cur.kept(epoch + 1)[0], pick(d.k1, ratios[-1]))
        # epochs 2..6 with pace = 7 - 2 - 1 = 4 curriculum epochs: 0.2 -> 1 at the last epoch
        np.testing.assert_allclose(ratios, [0.2, 0.4, 0.6, 0.8, 1.0])


def test_ties_are_broken_by_the_seed_deterministically():
    flat = Difficulty(ids=np.arange(N).astype(str), k1=np.zeros(N, np.float32),
                      k2_all=np.zeros(N, np.float32), k2_balanced=np.zeros(N, np.float32),
                      has_entities=np.zeros(N, bool))

    def kept(seed):
        cur = cl.Curriculum(ccfg('anti', warmup_epochs=1, floor=0.25), N, seed=seed,
                            num_epochs=5)
        cur.observe(0, flat)
        return cur.kept(1)[0]

    assert len(kept(0)) == 10
    np.testing.assert_array_equal(kept(0), kept(0))
    assert not np.array_equal(kept(0), kept(1))


def test_state_round_trips_through_json_and_continues_identically():
    a = cl.Curriculum(ccfg(warmup_epochs=2), N, seed=3, num_epochs=10)
    for epoch in range(3):
        a.observe(epoch, scores(epoch, entity_free=2))
    b = cl.Curriculum(ccfg(warmup_epochs=2), N, seed=3, num_epochs=10)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for x, y in zip(a.kept(3), b.kept(3)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a.k1, b.k1)  # bit-exact
    a.observe(3, scores(7))
    b.observe(3, scores(7))
    assert a.state_dict() == b.state_dict()
    with pytest.raises(ValueError, match='jima_release'):
        cl.Curriculum(ccfg('jima_release'), N, seed=3, num_epochs=10).load_state_dict(
            a.state_dict())
    with pytest.raises(ValueError, match='seed'):
        cl.Curriculum(ccfg(), N, seed=4, num_epochs=10).load_state_dict(a.state_dict())


def test_bad_settings_fail_before_training():
    with pytest.raises(ValueError, match='schedule'):
        cl.Curriculum(ccfg('hard_first'), N, seed=0, num_epochs=3)
    with pytest.raises(ValueError, match='floor'):
        cl.Curriculum(ccfg(floor=0.0), N, seed=0, num_epochs=3)
    train = default.get_config().train
    cur = cl.Curriculum(ccfg('jima_release'), N, seed=0, num_epochs=3)
    with pytest.raises(ValueError, match='eval_decode'):
        cur.check_validation(train)
    cur = cl.Curriculum(ccfg(measure='test/BLEU_4'), N, seed=0, num_epochs=3)
    with pytest.raises(ValueError, match='eval_splits'):
        cur.check_validation(train)
    cl.Curriculum(ccfg(measure='val/loss/report'), N, seed=0, num_epochs=3).check_validation(
        train)  # a loss needs no decoding


def test_composition_and_the_logged_scalars():
    split = ml_collections.ConfigDict()
    split.tokens = np.array([[4, 5, 6, 0], [4, 4, 0, 0], [7, 0, 0, 0]])
    split.abnormal = np.array([1, 0, 1])
    frequent = np.zeros(8, bool)
    frequent[4] = True  # only token 4 is frequent
    comp = cl.Composition.from_split(split, frequent)
    assert comp.shares(np.array([0, 1])) == (0.5, 2 / 5)
    assert comp.shares(np.array([2])) == (1.0, 1.0)
    cur = cl.Curriculum(ccfg(warmup_epochs=1), 3, seed=0, num_epochs=4, composition=comp)
    row = cur.epoch_scalars(0)
    assert row['curriculum/c1'] == 1.0 and row['curriculum/all_abnormal_share'] == 2 / 3
    assert 'curriculum/k1_mean' not in row
    d = Difficulty(ids=np.array(['a', 'b', 'c']), k1=np.array([0.1, 0.2, 0.3], np.float32),
                   k2_all=np.array([0.3, 0.2, 0.1], np.float32),
                   k2_balanced=np.zeros(3, np.float32), has_entities=np.ones(3, bool))
    cur.observe(0, d)
    row = cur.epoch_scalars(1)
    assert row['curriculum/k1_mean'] == pytest.approx(0.2)
    assert row['curriculum/kept2'] == 3.0  # c(s_0) = 1


def test_curves_plot(tmp_path):
    rows = [{'step': 8 * e, 'epoch': e, 'curriculum/c1': 1 - 0.1 * e, 'curriculum/c2': 1.0}
            for e in range(4)]
    out = cl.plot_curves(rows, tmp_path / 'plots' / 'curriculum.png')
    assert out.read_bytes()[:4] == b'\x89PNG'
    assert cl.plot_curves([{'step': 1, 'loss/report': 2.0}], tmp_path / 'x.png') is None


def test_presets_choose_their_schedule_and_the_iu_phantom_config_documents_its_command():
    assert iu_xray.get_config().curriculum.schedule == 'jima'
    assert iu_xray.get_config('release').curriculum.schedule == 'jima_release'
    assert mimic_cxr.get_config().curriculum.schedule == 'jima'
    assert mimic_cxr.get_config('release').curriculum.schedule == 'jima_release'
    paper, small = iu_phantom.get_config(), iu_phantom.get_config('small')
    assert set(paper.keys()) == set(default.get_config().keys())
    assert paper.data.name == small.data.name == 'iu_phantom'
    assert paper.model.backbone == 'resnet101' and paper.train.num_epochs == 100
    assert (paper.optim.task1.lr, paper.optim.task2.lr) == (4e-4, 1e-5)
    assert small.model.backbone == 'resnet18' and small.input.image_size == 48
    assert '--config configs/iu_phantom.py' in iu_phantom.__doc__
    assert 'configs/iu_phantom.py:small' in iu_phantom.__doc__
    with pytest.raises(ValueError, match='small'):
        iu_phantom.get_config('tiny')
