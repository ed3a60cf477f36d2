"""benchmarks/vs_pytorch.py and its PyTorch reference (benchmarks/torch_reference.py).

torch and torchvision are the optional `bench` extra (several GB: PyPI's Linux torch is the CUDA
build). The tests that need them are marked `bench`: `make test` leaves them out (PyTorch is
never needed by it), `make test-bench` installs the extra and runs them, and elsewhere they skip
without it.
"""

import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import cases, vs_pytorch
from benchmarks.difficulty import _batches
from tests.conftest import REPO

_skip_without_torch = pytest.mark.skipif(
    importlib.util.find_spec('torch') is None or importlib.util.find_spec('torchvision') is None,
    reason='torch/torchvision not installed (the bench extra: make test-bench)')


def needs_torch(test):
    return pytest.mark.bench(_skip_without_torch(test))

TINY = dict(cases.SHAPES['tiny'], batch=4)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread: on a loaded 2-core machine two spinning OpenMP threads make the tiny
    model ~10x slower, and the values checked here do not depend on the thread count."""
    if importlib.util.find_spec('torch') is None:
        yield
        return
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_slug_names_the_cpu():
    assert vs_pytorch.slug('Intel(R) Xeon(R) Processor') == 'intel-xeon-processor'
    assert vs_pytorch.slug('AMD EPYC 7B13 64-Core Processor') == 'amd-epyc-7b13-64-core-processor'
    assert vs_pytorch.slug('Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz') == \
        'intel-core-i7-8700-cpu-3-20ghz'
    assert vs_pytorch.slug('(R)') == 'unknown-cpu'


def test_release_optimizer_is_the_release_preset():
    o = vs_pytorch.release_optimizer()
    assert o == dict(lr=1e-4, visual_lr=5e-5, b1=0.9, b2=0.999, eps=1e-8, weight_decay=5e-5,
                     amsgrad=True, clip='value', clip_value=0.1)
    assert vs_pytorch.paper_entity_head() == 'patch_linear'


def _fake_rows(run_id, jax_s, torch_s):
    base = dict(run_id=run_id, shape='tiny', steps=1, warmup=0, load_avg_1m_start=0.5,
                command='python -m benchmarks.vs_pytorch', machine=vs_pytorch.machine())
    facts = dict(setup_seconds=1.0, warmup_seconds=0.0, settings=dict(
        XLA_FLAGS='', GLIBC_TUNABLES='', OMP_NUM_THREADS='', MKL_NUM_THREADS=''))
    jax_row = dict(base, kind='measurement', benchmark='beam_search', pair='reuse', side='jax',
                   seconds=jax_s, parts=None, result={}, facts=dict(
                       facts, jax_version='x', devices=1, platform='cpu', cpu_malloc='reuse',
                       cpu_malloc_applied=True, cpu_scheduler='memory'))
    torch_row = dict(base, kind='measurement', benchmark='beam_search', pair='reuse',
                     side='torch', seconds=torch_s, parts=None, result={}, facts=dict(
                         facts, torch_version='y', torch_threads=2, torch_interop_threads=2,
                         torch_cpu_capability='AVX2'))
    comparison = dict(base, kind='comparison', benchmark='beam_search', pair='reuse',
                      jax_seconds=jax_s, torch_seconds=torch_s, speedup=torch_s / jax_s,
                      jax_per_study_seconds=jax_s / 4, torch_per_study_seconds=torch_s / 4,
                      jax_peak_rss_gb=1.0, torch_peak_rss_gb=2.0, parameters_equal=True)
    return [jax_row, torch_row, comparison]


def test_results_are_added_to_the_days_files(tmp_path):
    vs_pytorch.write_results(_fake_rows('run-1', 2.0, 5.0), tmp_path, 'stem')
    jsonl, md = vs_pytorch.write_results(_fake_rows('run-2', 4.0, 2.0), tmp_path, 'stem')
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r['run_id'] for r in rows] == ['run-1'] * 3 + ['run-2'] * 3
    text = md.read_text()
    assert text.count('## run-') == 2
    assert '| beam_search | reuse | 2.000 s | 5.000 s | 2.50x |' in text
    assert '| beam_search | reuse | 4.000 s | 2.000 s | 0.50x |' in text
    assert not list(tmp_path.glob('.*.tmp'))  # written through jima_jax.atomic


@needs_torch
def test_paper_shape_models_have_the_same_parameters():
    """Group by group the PyTorch reference and jima_jax's model hold the same number of
    parameters at the paper shape, and f_R tensor by tensor the same shapes."""
    import jax
    import torch
    from flax import nnx

    from benchmarks import torch_reference as ref
    from jima_jax.model import jima, resnet

    spec = cases.SHAPES['paper']
    for head in ('patch_linear', 'mlp'):
        cfg = cases.make_config('paper')
        cfg.model.entity_head = head
        model = nnx.eval_shape(lambda: jima.JIMA(
            cfg.model, vocab_size=spec['vocab'], num_views=spec['views'],
            max_len=spec['length'] + 1, rngs=nnx.Rngs(0)))
        params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
        with torch.device('meta'):
            torch_model = ref.JIMAReference(spec, entity_head=head)
        counts = vs_pytorch.jax_parameter_counts(params)
        assert counts == ref.parameter_counts(torch_model)
        assert counts['report'] > 4_000_000 and counts['visual'] > 42_000_000

    stages = {'0': 'conv1', '1': 'bn1', '4': 'layer1', '5': 'layer2', '6': 'layer3',
              '7': 'layer4'}
    torch_shapes = {}
    for name, tensor in torch_model.visual.body.state_dict().items():
        first, rest = name.split('.', 1)
        if not name.endswith('num_batches_tracked'):
            torch_shapes[f'{stages[first]}.{rest}'] = tuple(tensor.shape)
    jax_shapes = {}
    for key, var in resnet._torchvision_targets(model.visual).items():
        shape = tuple(jax.tree.leaves(var)[0].shape)
        jax_shapes[key] = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape
    assert jax_shapes == torch_shapes


@needs_torch
def test_reference_updates_train_their_groups_and_lower_the_loss():
    """Entity step: f_R + f_E change, the report side not; report step: the reverse. On a fixed
    batch both losses are finite and fall over a few steps."""
    import torch

    from benchmarks import torch_reference as ref

    torch.manual_seed(0)
    model = ref.JIMAReference(TINY)
    trainer = ref.Trainer(model, vs_pytorch.release_optimizer())
    batch = _batches(TINY, 1, np.random.default_rng(0))[0]

    def snapshot():
        return {k: v.detach().clone() for k, v in model.named_parameters()}

    def changed(before):
        return {k.split('.')[0] for k, v in model.named_parameters()
                if not torch.equal(v, before[k])}

    entity, report = [], []
    for i in range(6):
        before = snapshot()
        entity.append(trainer.entity_step(batch))
        if i == 0:
            assert changed(before) == {'visual', 'entity'}
        before = snapshot()
        report.append(trainer.report_step(batch))
        if i == 0:
            assert changed(before) == {'report'}
    assert all(math.isfinite(x) for x in entity + report)
    assert entity[-1] < entity[0] - 0.05, entity
    assert report[-1] < report[0], report
    assert abs(entity[0] - math.log(2)) < 0.2  # sigmoid outputs near 1/2 at initialisation


@needs_torch
def test_release_style_ranks_are_the_rank_counts():
    """The sort-per-token loops give k = mean (1 + #{j : p_j > p_z}) / |V| (spec section 5)."""
    import torch
    import torch.nn.functional as F

    from benchmarks import torch_reference as ref

    torch.manual_seed(0)
    model = ref.JIMAReference(TINY).eval()
    batch = _batches(TINY, 1, np.random.default_rng(1))[0]
    batch['entities'][0] = -1  # a study without entities: k1 = 0
    got = ref.score_release_style(model, batch)
    with torch.no_grad():
        patches, pooled = model.visual(ref.normalize_images(batch['images']))
        q = torch.sigmoid(model.entity(patches, pooled))
        tokens = torch.from_numpy(batch['tokens']).long()
        probs = F.softmax(model.report(patches, q, tokens[:, :-1]), -1)
    v = TINY['vocab']
    for i in range(TINY['batch']):
        ents = [int(e) for e in batch['entities'][i] if e >= 0]
        k1 = np.mean([1 + int((q[i] > q[i, e]).sum()) for e in ents]) / v if ents else 0.0
        targets = tokens[i, 1:]
        keep = (targets != ref.PAD_ID) & (targets != ref.EOS_ID)
        ref_p = probs[i].gather(-1, targets[:, None])[:, 0]
        k2 = float((1 + (probs[i] > ref_p[:, None]).sum(-1))[keep].float().mean()) / v
        assert got['k1'][i] == pytest.approx(k1, rel=1e-6)
        assert got['k2_all'][i] == pytest.approx(k2, rel=1e-6)
    assert got['k1'][0] == 0.0


@needs_torch
def test_reference_beam_search_returns_its_best_scored_hypothesis():
    """With EOS suppressed the search runs all positions, and the returned score is the
    teacher-forced sum of log-probabilities of the returned tokens."""
    import torch
    import torch.nn.functional as F

    from benchmarks import torch_reference as ref

    torch.manual_seed(0)
    model = ref.JIMAReference(TINY).eval()
    ref.suppress_eos(model)
    images = _batches(TINY, 1, np.random.default_rng(2))[0]['images']
    max_len = TINY['length']
    out = ref.beam_search(model, images, 3, max_len)
    assert out['positions'] == max_len
    tokens = out['tokens']
    assert tokens.shape == (TINY['batch'], max_len)
    assert not bool(torch.isin(tokens, torch.tensor([ref.PAD_ID, ref.BOS_ID, ref.EOS_ID])).any())
    with torch.no_grad():
        patches, pooled = model.visual(ref.normalize_images(images))
        q = torch.sigmoid(model.entity(patches, pooled))
        prefix = torch.cat([torch.full((TINY['batch'], 1), ref.BOS_ID), tokens[:, :-1]], 1)
        logp = F.log_softmax(model.report(patches, q, prefix), -1)
        forced = logp.gather(-1, tokens[..., None])[..., 0].sum(-1)
    np.testing.assert_allclose(out['scores'].numpy(), forced.numpy(), rtol=1e-4, atol=1e-3)
    greedy = ref.beam_search(model, images, 1, max_len)
    assert bool((out['scores'] >= greedy['scores'] - 1e-3).all())  # beam 3 never worse


@needs_torch
def test_tiny_runner_writes_well_formed_rows(tmp_path):
    """The whole runner at the tiny shape: a jima_jax and a PyTorch process per benchmark."""
    cmd = [sys.executable, '-m', 'benchmarks.vs_pytorch', '--shape', 'tiny', '--steps', '2',
           '--warmup', '0', '--torch_allocators', 'reuse', '--difficulty_batches', '1',
           '--torch_threads', '1', '--out', str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (jsonl,) = tmp_path.glob('vs_pytorch_*_tiny.jsonl')
    assert vs_pytorch.slug(vs_pytorch.cpu_model()) in jsonl.name
    rows = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [(r['benchmark'], r['kind'], r.get('side')) for r in rows] == [
        (b, k, s) for b in vs_pytorch.BENCHMARKS
        for k, s in (('measurement', 'jax'), ('measurement', 'torch'), ('comparison', None))]
    for r in rows:
        if r['kind'] == 'measurement':
            assert len(r['seconds_all']) == 2 and r['seconds'] > 0
            assert r['seconds'] == pytest.approx(float(np.median(r['seconds_all'])))
            assert r['peak_rss_gb'] > 0.1
            assert r['per_study_seconds'] == pytest.approx(r['seconds'] / r['studies_per_unit'])
            assert r['facts']['parameters']['total'] > 11_000_000  # ResNet-18 and the rest
        else:
            assert r['parameters_equal'] is True
            assert r['speedup'] == pytest.approx(r['torch_seconds'] / r['jax_seconds'])
    by = {(r['benchmark'], r.get('side')): r for r in rows}
    torch_train = by[('train_step', 'torch')]
    assert set(torch_train['parts']) == {'entity_step', 'report_step'}
    assert sum(torch_train['parts'].values()) <= torch_train['seconds'] * 1.05
    for side in ('jax', 'torch'):
        losses = by[('train_step', side)]['result']['losses']
        assert all(math.isfinite(v) for v in losses.values()) and len(losses) == 2
        assert by[('beam_search', side)]['result']['mean_generated_tokens'] == TINY['length']
        assert by[('difficulty', side)]['studies_per_unit'] == cases.SHAPES['tiny']['batch']
    assert by[('train_step', 'jax')]['facts']['cpu_malloc'] == 'reuse'
    assert by[('train_step', 'torch')]['facts']['settings']['GLIBC_TUNABLES']
    assert by[('train_step', 'torch')]['facts']['torch_threads'] == 1
    md = jsonl.with_suffix('.md').read_text()
    assert md.count('| reuse |') == 3 and f'Machine: {vs_pytorch.cpu_model()},' in md


@needs_torch
def test_bfloat16_rows_run_both_sides_in_bfloat16(tmp_path):
    """--dtype bfloat16: jima_jax with model.dtype=bfloat16, PyTorch under its CPU autocast; the
    first step's losses (same initial weights on each side) move by rounding only."""
    rows = {}
    for dtype in ('float32', 'bfloat16'):
        cmd = [sys.executable, '-m', 'benchmarks.vs_pytorch', '--shape', 'tiny', '--steps', '1',
               '--warmup', '0', '--torch_allocators', 'reuse', '--benchmarks', 'train_step',
               '--torch_threads', '1', '--dtype', dtype, '--out', str(tmp_path / dtype)]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        (jsonl,) = (tmp_path / dtype).glob('vs_pytorch_*.jsonl')
        assert jsonl.name.endswith('_tiny_bf16.jsonl' if dtype == 'bfloat16' else '_tiny.jsonl')
        rows[dtype] = {r.get('side'): r for r in map(json.loads, jsonl.read_text().splitlines())}
        assert all(r['dtype'] == dtype for r in rows[dtype].values())
    assert rows['bfloat16']['torch']['facts']['autocast'] == 'bfloat16'
    assert rows['float32']['torch']['facts']['autocast'] == 'float32'
    for side in ('jax', 'torch'):
        f32, bf16 = (rows[d][side]['result']['losses'] for d in ('float32', 'bfloat16'))
        for key in f32:
            assert bf16[key] == pytest.approx(f32[key], rel=0.05), (side, key)
    md = (tmp_path / 'bfloat16').glob('*.md').__next__().read_text()
    assert 'bfloat16 (jima_jax model.dtype; PyTorch autocast)' in md
