"""The measurements `benchmarks.run` makes, each inside a child process with its own devices.

Every function takes a job dict (see `run.suite_jobs`) and returns result rows (dicts). Train-step
inputs are random arrays of the real shapes, placed on the devices before timing; the pipeline,
difficulty and beam-search cases use a prepared phantom dataset (built once under the data dir).
One "example" is one study; an alternate-mode train step consumes batch A + batch B = 2 x batch
studies, each with `views` images.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import hardware, pmap_step
from configs import default
from jima_jax.model import jima
from jima_jax.runtime import parallel
from jima_jax.text.symbols import EOS_ID
from jima_jax.train import losses, step as step_lib

SHAPES = {
    # The smoke network (ResNet-18, one-layer Transformer of width 64) at 32 px: small enough that
    # the comparisons of step variants and device counts finish on a 2-core CPU.
    'tiny': dict(backbone='resnet18', image=32, views=2, batch=16, vocab=40, length=24, width=64,
                 heads=4, layers=1, ffn=64),
    # ResNet-18 at 96 px with the paper's Transformer (3 + 3 layers, width 512, |V| 760).
    'small': dict(backbone='resnet18', image=96, views=2, batch=16, vocab=760, length=60,
                  width=512, heads=8, layers=3, ffn=512),
    # The IU X-ray paper model: ResNet-101, 2 views of 224^2, the paper's Transformer.
    'paper': dict(backbone='resnet101', image=224, views=2, batch=16, vocab=760, length=60,
                  width=512, heads=8, layers=3, ffn=512),
}


def make_config(shape: str, dtype: str = 'float32', batch: int | None = None):
    """The default config with the model, input and data sizes of `shape`."""
    s = SHAPES[shape]
    c = default.get_config()
    c.model.backbone = s['backbone']
    c.model.width, c.model.num_heads, c.model.ffn_dim = s['width'], s['heads'], s['ffn']
    c.model.num_encoder_layers = c.model.num_decoder_layers = s['layers']
    c.model.dtype = dtype
    c.data.max_len = s['length']
    c.data.num_views = s['views']
    c.input.image_size = s['image']
    c.input.batch_size = c.input.eval_batch_size = batch or s['batch']
    c.decode.max_len = s['length']
    return c


def random_batch(rng: np.random.Generator, batch: int, shape: str) -> dict:
    """A pipeline-shaped batch: random images, BOS + ids + EOS + PAD tokens, entity ids."""
    s = SHAPES[shape]
    length = s['length'] + 2
    tokens = np.zeros((batch, length), np.int32)
    for b in range(batch):
        n = int(rng.integers(s['length'] // 2, s['length'] + 1))
        tokens[b, 0], tokens[b, n + 1] = 1, 2
        tokens[b, 1:n + 1] = rng.integers(4, s['vocab'], n)
    return dict(images=rng.integers(0, 256, (batch, s['views'], s['image'], s['image']),
                                    dtype=np.uint8),
                tokens=tokens, entities=rng.integers(-1, s['vocab'], (batch, 16)).astype(np.int32),
                abnormal=rng.integers(0, 2, batch).astype(np.int32),
                mask=np.ones(batch, np.float32), index=np.arange(batch, dtype=np.int32))


def _model(cfg, shape: str):
    s = SHAPES[shape]
    model = jima.JIMA(cfg.model, vocab_size=s['vocab'], num_views=s['views'],
                      max_len=s['length'] + 1, rngs=nnx.Rngs(0))
    return step_lib.split_model(model)


def _first_call(call: Callable, state) -> tuple[object, dict, float]:
    """The first call after compilation: (state, metrics as floats, seconds)."""
    t0 = time.perf_counter()
    state, metrics = call(state)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - t0
    return state, {k: float(np.ravel(jax.device_get(v))[0]) for k, v in metrics.items()}, seconds


def _interleaved(calls: list[Callable], states: list, steps: int) -> list[list[float]]:
    """`steps` timed calls of each function, taken in turns (A B C A B C ...) so that a change in
    the host's load affects every variant alike. Each call waits for its state and metrics."""
    times = [[] for _ in calls]
    for _ in range(steps):
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            states[i], metrics = call(states[i])
            jax.block_until_ready((states[i], metrics))
            times[i].append(time.perf_counter() - t0)
    return times


class _Step:
    """One way of running the train step on `devices`: placed inputs + compiled program(s)."""

    def __init__(self, variant: str, cfg, shape: str, devices: list, batches: tuple[dict, dict]):
        modeldef, params, stats = _model(cfg, shape)
        vocab = SHAPES[shape]['vocab']
        host_state = step_lib.init_train_state(cfg, params, stats)
        tables = losses.LossTables.uniform(vocab)
        epoch = np.int32(0)
        t0 = time.perf_counter()
        if variant == 'pmap':
            self._pmap(modeldef, cfg, vocab, devices, host_state, batches, tables, epoch)
        else:
            mesh = parallel.make_mesh(cfg.parallel, devices)
            sharding = parallel.state_shardings(mesh, host_state, cfg.parallel)
            self.state = jax.device_put(host_state, sharding)
            rep, bs = parallel.replicated(mesh), parallel.batch_sharding(mesh)
            a, b = (jax.device_put(x, bs) for x in batches)
            tables = jax.device_put(tables, rep)
            if variant == 'fused_jit':
                fn = step_lib.jit_train_step(step_lib.build_train_step(modeldef, cfg, vocab),
                                             mesh, sharding)
                lowered = fn.lower(self.state, a, b, epoch, tables)
                compiled = lowered.compile()
                self.flops = hardware.program_flops(compiled, lowered, len(devices))
                self.call = lambda st: compiled(st, a, b, epoch, tables)
            elif variant == 'unfused':
                self._unfused(modeldef, cfg, vocab, sharding, rep, bs, a, b, tables, epoch)
            else:
                raise ValueError(f'unknown train-step variant {variant!r}.')
        self.compile_s = time.perf_counter() - t0

    def _pmap(self, modeldef, cfg, vocab, devices, host_state, batches, tables, epoch):
        fn = pmap_step.pmap_train_step(modeldef, cfg, vocab)
        self.state = pmap_step.replicate(host_state, devices)
        a, b = (pmap_step.split_batch(batch, devices) for batch in batches)
        compiled = fn.lower(self.state, a, b, epoch, tables).compile()
        self.flops = hardware.program_flops(compiled)
        self.call = lambda st: compiled(st, a, b, epoch, tables)

    def _unfused(self, modeldef, cfg, vocab, sharding, rep, bs, a, b, tables, epoch):
        """Task 1 and Task 2 as two jitted programs (the state goes through memory between)."""
        tasks = step_lib.TaskUpdates(modeldef, cfg, vocab)

        def task2(state, batch, epoch, tables):
            state, loss = tasks.task2(state, batch, epoch, tables, tasks.step_key(state))
            return state.replace(step=state.step + 1), loss

        shardings = dict(in_shardings=(sharding, bs, rep, rep), out_shardings=(sharding, rep),
                         donate_argnums=(0,))
        c1 = jax.jit(tasks.task1, **shardings).lower(self.state, a, epoch, tables).compile()
        c2 = jax.jit(task2, **shardings).lower(self.state, b, epoch, tables).compile()
        f1, f2 = hardware.program_flops(c1), hardware.program_flops(c2)
        self.flops = f1 + f2 if f1 and f2 else None

        def call(state):
            state, l1 = c1(state, a, epoch, tables)
            state, l2 = c2(state, b, epoch, tables)
            return state, {'loss/entity': l1, 'loss/report': l2}

        self.call = call


def _device_counts(job) -> list[int]:
    """`devices`: an int, or 'powers' = 1, 2, 4, ... up to every device of this process."""
    if job.get('devices', 'all') == 'all':
        return [jax.device_count()]
    if job['devices'] == 'powers':
        counts, n = [], 1
        while n <= jax.device_count():
            counts.append(n)
            n *= 2
        return counts
    return [int(job['devices'])]


def train_step(job: dict) -> list[dict]:
    """Examples/s of train-step variants (`job['variants']`) at one shape, dtype and batch."""
    shape, dtype = job['shape'], job.get('dtype', 'float32')
    batch = int(job.get('batch') or SHAPES[shape]['batch'])
    cfg = make_config(shape, dtype, batch)
    rng = np.random.default_rng(0)
    batches = (random_batch(rng, batch, shape), random_batch(rng, batch, shape))
    rows = []
    for n in _device_counts(job):
        steps = [_Step(v, cfg, shape, jax.devices()[:n], batches) for v in job['variants']]
        firsts = [_first_call(s.call, s.state) for s in steps]
        states = [f[0] for f in firsts]
        all_times = _interleaved([s.call for s in steps], states, int(job['steps']))
        del states
        for variant, step, (_, first, first_s), times in zip(job['variants'], steps, firsts,
                                                             all_times):
            seconds = float(np.median(times))
            studies = 2 * batch
            hw = hardware.describe()
            rows.append(dict(
                benchmark=job['benchmark'], case=variant, shape=shape, dtype=dtype, batch=batch,
                devices=n, views=SHAPES[shape]['views'], step_seconds=seconds,
                step_seconds_all=times, examples_per_sec=studies / seconds,
                images_per_sec=studies * SHAPES[shape]['views'] / seconds,
                compile_seconds=step.compile_s, first_call_seconds=first_s,
                flops_per_step_per_device=step.flops,
                **hardware.utilisation(step.flops, seconds, hw['device_kind'], dtype),
                first_step_losses=first, hardware=hw))
        del steps, firsts
    return rows


def _phantom_dataset(job: dict, cfg):
    """The prepared phantom set of the job's size (prepared once, then read from the data dir)."""
    from jima_jax.data import prepare
    cfg.data.name = 'phantom'
    cfg.data.image_size = int(round(cfg.input.image_size * 8 / 7))  # 224 px crops of 256 px
    cfg.data.phantom.num_train = int(job['num_examples'])
    cfg.data.phantom.num_val = cfg.data.phantom.num_test = 16
    t0 = time.perf_counter()
    dataset = prepare.load_prepared(cfg.data)
    return dataset, time.perf_counter() - t0


def input_pipeline(job: dict) -> list[dict]:
    """Batches/s of `SplitPipeline.train_batches` (gather, random crop, batching) on the host."""
    from jima_jax.data import pipeline as pipeline_lib
    shape = job['shape']
    cfg = make_config(shape, batch=job.get('batch'))
    dataset, load_s = _phantom_dataset(job, cfg)
    split = dataset.splits['train']
    pipe = pipeline_lib.SplitPipeline(split, cfg.input, seed=0)
    steps = int(job['steps'])
    stream = pipeline_lib.StreamSpec(np.arange(len(split), dtype=np.int32), 0)
    it = pipe.train_batches(stream, epoch=0, num_steps=steps + 1)
    t0 = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    count = sum(1 for _ in it)
    seconds = (time.perf_counter() - t0) / count
    b = first['images'].shape[0]
    return [dict(benchmark=job['benchmark'], case='train_batches', shape=shape, dtype='uint8',
                 batch=b, devices=0, views=first['images'].shape[1], step_seconds=seconds,
                 examples_per_sec=b / seconds,
                 images_per_sec=b * first['images'].shape[1] / seconds,
                 batches_per_sec=1 / seconds, first_call_seconds=first_s,
                 dataset_load_seconds=load_s, num_examples=len(split),
                 image=f'{split.images.shape[-1]}px stored -> {cfg.input.image_size}px crop',
                 hardware=hardware.describe())]


def difficulty_scoring(job: dict) -> list[dict]:
    """Examples/s of the curriculum's difficulty pass (k1, k2) over a prepared split."""
    from jima_jax.train import difficulty
    shape, dtype = job['shape'], job.get('dtype', 'float32')
    cfg = make_config(shape, dtype, job.get('batch'))
    dataset, _ = _phantom_dataset(job, cfg)
    split = dataset.splits['train']
    vocab = dataset.vocab_size
    model = jima.JIMA(cfg.model, vocab_size=vocab, num_views=cfg.data.num_views,
                      max_len=cfg.data.max_len + 1, rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    mesh = parallel.make_mesh(cfg.parallel)
    sharding = parallel.state_shardings(
        mesh, step_lib.init_train_state(cfg, params, stats), cfg.parallel)
    params = jax.device_put(params, sharding.params)
    stats = jax.device_put(stats, sharding.batch_stats)
    score = difficulty.jit_score_step(
        difficulty.build_score_step(modeldef, cfg.model, cfg.input), mesh, sharding)
    times = []
    for _ in range(int(job['steps']) + 1):  # the first pass compiles
        t0 = time.perf_counter()
        difficulty.score_split(score, params, stats, split, cfg.input, seed=0, mesh=mesh)
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times[1:]))
    hw = hardware.describe()
    return [dict(benchmark=job['benchmark'], case='score_split', shape=shape, dtype=dtype,
                 batch=int(cfg.input.eval_batch_size), devices=jax.device_count(),
                 views=cfg.data.num_views, step_seconds=seconds, step_seconds_all=times[1:],
                 examples_per_sec=len(split) / seconds,
                 images_per_sec=len(split) * cfg.data.num_views / seconds,
                 first_call_seconds=times[0], num_examples=len(split), vocab=vocab,
                 note='seconds per pass over the split', hardware=hw)]


def beam_program(job: dict) -> tuple[Callable[[], dict], dict]:
    """The compiled generation program of a `beam_search` job on its placed inputs: (a call that
    generates one batch and waits for it, facts about it). `benchmarks.vs_pytorch` times it."""
    from jima_jax import decode
    shape, dtype = job['shape'], job.get('dtype', 'float32')
    s = SHAPES[shape]
    cfg = make_config(shape, dtype, job.get('batch'))
    cfg.decode.beam_size = int(job.get('beam_size', 3))
    batch = int(cfg.input.eval_batch_size)
    modeldef, params, stats = _model(cfg, shape)
    if job.get('full_length'):
        # Random weights make EOS the best first token, so the search would stop at once; an EOS
        # logit of -1e9 makes it run all `max_len` positions, the length a comparison should time.
        logits = params['report']['transformer']['logits']
        logits['bias'] = logits['bias'].at[EOS_ID].set(-1e9)
    mesh = parallel.make_mesh(cfg.parallel)
    rep = parallel.replicated(mesh)
    params, stats = jax.device_put((params, stats), rep)
    images = jax.device_put(random_batch(np.random.default_rng(0), batch, shape)['images'],
                            parallel.batch_sharding(mesh))
    fn = jax.jit(decode.make_generate_fn(modeldef, cfg, s['vocab']),
                 in_shardings=(rep, rep, parallel.batch_sharding(mesh)))
    t0 = time.perf_counter()
    lowered = fn.lower(params, stats, images)
    compiled = lowered.compile()
    info = dict(cfg=cfg, batch=batch, params=params, compile_seconds=time.perf_counter() - t0,
                flops=hardware.program_flops(compiled, lowered, len(mesh.devices.flat)))
    return lambda: jax.block_until_ready(compiled(params, stats, images)), info


def beam_search(job: dict) -> list[dict]:
    """Studies/s of report generation (f_R, f_E, encoder, beam search) on a batch."""
    shape, dtype = job['shape'], job.get('dtype', 'float32')
    s = SHAPES[shape]
    generate, info = beam_program(job)
    cfg, batch = info['cfg'], info['batch']
    compile_s, flops = info['compile_seconds'], info['flops']
    times, out = [], None
    for _ in range(int(job['steps']) + 1):
        t0 = time.perf_counter()
        out = generate()
        times.append(time.perf_counter() - t0)
    seconds = float(np.median(times[1:]))
    lengths = np.asarray(jnp.sum(out['tokens'] != 0, axis=-1))
    hw = hardware.describe()
    return [dict(benchmark=job['benchmark'], case=f'beam{cfg.decode.beam_size}', shape=shape,
                 dtype=dtype, batch=batch, devices=jax.device_count(), views=s['views'],
                 step_seconds=seconds, step_seconds_all=times[1:],
                 examples_per_sec=batch / seconds, images_per_sec=batch * s['views'] / seconds,
                 compile_seconds=compile_s, first_call_seconds=times[0],
                 flops_per_step_per_device=flops,
                 **hardware.utilisation(flops, seconds, hw['device_kind'], dtype),
                 max_len=int(cfg.decode.max_len), mean_generated_tokens=float(lengths.mean()),
                 hardware=hw)]


def render(job: dict) -> list[dict]:
    """Phantom radiographs per second on one core (the prepare-time cost of the built-in data)."""
    from jima_jax.data import phantom, phantom_corpus
    size, n = int(job.get('size', 256)), int(job['num_examples'])
    rng = np.random.default_rng(0)
    findings = [phantom_corpus.sample_findings(rng) for _ in range(n)]
    phantom.render_study(findings[0], seed=0, size=size)  # caches grids and textures
    t0 = time.process_time()
    for i, f in enumerate(findings):
        phantom.render_study(f, seed=i, size=size, views=2)
    cpu = time.process_time() - t0
    return [dict(benchmark=job['benchmark'], case='render_study', shape=f'{size}px',
                 dtype='uint8', batch=1, devices=0, views=2, step_seconds=cpu / n,
                 examples_per_sec=n / cpu, images_per_sec=2 * n / cpu, num_examples=n,
                 timing='CPU seconds of this process (one core; numpy single-threaded)',
                 hardware=hardware.describe())]


CASES = {'render': render, 'train_step': train_step, 'pipeline': input_pipeline,
         'difficulty': difficulty_scoring, 'beam_search': beam_search}
