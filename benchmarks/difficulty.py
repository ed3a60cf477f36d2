r"""Cost of scoring the training set (k1, k2) vs one plain forward pass over the same data.

  python -m benchmarks.difficulty                      # both cases, writes benchmarks/results/
  python -m benchmarks.difficulty --cases iu_r101 --batches 2 --rounds 5

Both programs are jitted over the device mesh and read the same device-resident random inputs of
the real shapes (2,069 two-view IU X-ray-sized studies; the input pipeline is left out, it is the
same for both). "forward" is the eval step every validation runs (eval-mode features, entity
logits, teacher-forced report logits and the two losses); "scoring" is
`difficulty.build_score_step` (the same forward, then the rank counts of k1 and both forms of
k2). Each batch runs forward then scoring, `--rounds` times; a program's time is the sum over
batches of its fastest round (the one least disturbed by other load on a shared machine). For
reference, the release's way of ranking (a full vocabulary sort per reference token, in Python
on the host) is timed on one batch of fetched logits.

Cases: `iu_r101` is the IU X-ray paper model (ResNet-101, 2 x 224^2 views, 3-layer width-512
Transformer, |V| = 760, 60 tokens, batch 16). A full pass over 2,069 studies takes tens of
minutes per program on a small CPU, so `--batches` (default 4) fixes a subset: the ratio is per
batch, and whole-set seconds are extrapolated (marked in the table). `iu_phantom_small` is the
curriculum experiment's model (configs/iu_phantom.py:small) over all 2,069 studies.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import time
import types

import numpy as np

STUDIES = 2069
CASES = {
    'iu_r101': dict(backbone='resnet101', views=2, image=224, width=512, heads=8, layers=3,
                    ffn=512, vocab=760, length=60, batch=16),
    'iu_phantom_small': dict(backbone='resnet18', views=1, image=48, width=128, heads=4,
                             layers=2, ffn=256, vocab=760, length=60, batch=64),
}
RESULTS_DIR = pathlib.Path(__file__).parent / 'results'


def _config(spec: dict):
    from configs import default
    c = default.get_config()
    c.model.backbone = spec['backbone']
    c.model.width, c.model.num_heads = spec['width'], spec['heads']
    c.model.num_encoder_layers = c.model.num_decoder_layers = spec['layers']
    c.model.ffn_dim = spec['ffn']
    c.data.max_len = spec['length']
    c.input.eval_batch_size = spec['batch']
    return c


def _batches(spec: dict, count: int, rng: np.random.Generator) -> list[dict]:
    """Random studies of the real shapes; report lengths ~ IU X-ray (mean ~ 35 tokens)."""
    b, length, vocab = spec['batch'], spec['length'], spec['vocab']
    out = []
    for _ in range(count):
        tokens = np.zeros((b, length + 2), np.int32)
        n = np.clip(rng.normal(35, 12, b).astype(int), 5, length)
        for i in range(b):
            tokens[i, 0] = 1
            tokens[i, 1:n[i] + 1] = rng.integers(4, vocab, n[i])
            tokens[i, n[i] + 1] = 2
        entities = np.full((b, 24), -1, np.int32)
        for i in range(b):
            k = int(rng.integers(0, 12))
            entities[i, :k] = rng.choice(np.arange(4, vocab), k, replace=False)
        out.append(dict(
            images=rng.integers(0, 256, (b, spec['views'], spec['image'], spec['image']),
                                dtype=np.uint8),
            tokens=tokens, entities=entities, abnormal=rng.integers(0, 2, b).astype(np.int32),
            mask=np.ones(b, np.float32), index=np.arange(b, dtype=np.int32)))
    return out


def _release_style_rank_seconds(ent_logits: np.ndarray, rep_logits: np.ndarray,
                                batch: dict) -> float:
    """The authors' way: per reference token / entity, a full descending sort on the host."""
    t0 = time.perf_counter()
    targets = batch['tokens'][:, 1:]
    for b in range(len(targets)):
        for i, z in enumerate(targets[b]):
            if z in (0, 2):
                continue
            order = np.argsort(-rep_logits[b, i])
            int(np.flatnonzero(order == z)[0])
        for e in batch['entities'][b]:
            if e >= 0:
                int(np.flatnonzero(np.argsort(-ent_logits[b]) == e)[0])
    return time.perf_counter() - t0


def build_programs(spec: dict, count: int) -> types.SimpleNamespace:
    """A case's model, `count` device-resident random batches (`_batches`, seed 0) and its two
    jitted programs, 'forward' and 'scoring' (each: batch -> outputs, not waited for)."""
    import jax
    from flax import nnx

    from jima_jax.model import jima
    from jima_jax.runtime import parallel
    from jima_jax.train import difficulty, losses, step as step_lib

    c = _config(spec)
    model = jima.JIMA(c.model, vocab_size=spec['vocab'], num_views=spec['views'],
                      max_len=spec['length'] + 1, rngs=nnx.Rngs(0))
    modeldef, params, stats = step_lib.split_model(model)
    del model
    mesh = parallel.make_mesh(c.parallel)
    rep, batch_sharding = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    params, stats = jax.device_put((params, stats), rep)
    shardings = types.SimpleNamespace(params=jax.tree.map(lambda _: rep, params),
                                      batch_stats=jax.tree.map(lambda _: rep, stats))
    batches = [parallel.put_batch(b, batch_sharding)
               for b in _batches(spec, count, np.random.default_rng(0))]
    tables = jax.device_put(losses.LossTables.uniform(spec['vocab']), rep)
    eval_step = jax.jit(step_lib.build_eval_step(modeldef, c, spec['vocab']),
                        in_shardings=(shardings.params, shardings.batch_stats, batch_sharding,
                                      rep), out_shardings=rep)
    score_step = difficulty.jit_score_step(
        difficulty.build_score_step(modeldef, c.model, c.input), mesh, shardings)
    programs = {'forward': lambda b: eval_step(params, stats, b, tables),
                'scoring': lambda b: score_step(params, stats, b)}
    return types.SimpleNamespace(config=c, modeldef=modeldef, params=params, stats=stats,
                                 batches=batches, programs=programs)


def run_case(name: str, num_batches: int, rounds: int) -> dict:
    import jax

    from jima_jax.train import step as step_lib

    spec = CASES[name]
    full = math.ceil(STUDIES / spec['batch'])
    count = full if num_batches <= 0 else min(num_batches, full)
    built = build_programs(spec, count)
    c, modeldef, params, stats = built.config, built.modeldef, built.params, built.stats
    batches, programs = built.batches, built.programs
    compile_s = {}
    for key, fn in programs.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn(batches[0]))
        compile_s[key] = time.perf_counter() - t0
    times = {key: np.zeros((rounds, count)) for key in programs}
    for r in range(rounds):
        for i, b in enumerate(batches):
            for key, fn in programs.items():
                t0 = time.perf_counter()
                jax.device_get(fn(b))
                times[key][r, i] = time.perf_counter() - t0

    @jax.jit
    def logits(b):
        m = modeldef.merge(params, stats)
        images, tokens_in, _ = step_lib._inputs(b, c.model, c.input)
        return m(images, tokens_in)

    host = jax.tree.map(np.asarray, jax.device_get(batches[0]))
    ent, rep_logits = jax.device_get(logits(batches[0]))
    release_batch_s = _release_style_rank_seconds(np.asarray(ent), np.asarray(rep_logits), host)

    # Per batch, the least disturbed of the rounds; summed over the batches.
    forward_s, scoring_s = (float(times[k].min(0).sum()) for k in ('forward', 'scoring'))
    scale = full / count
    return dict(
        case=name, **spec, studies=STUDIES, batches_timed=count, batches_full=full,
        extrapolated=count < full, rounds=rounds,
        forward_seconds=forward_s * scale, scoring_seconds=scoring_s * scale,
        ratio=scoring_s / forward_s,
        forward_rounds=times['forward'].sum(1).tolist(),
        scoring_rounds=times['scoring'].sum(1).tolist(),
        compile_and_first_seconds=compile_s,
        release_style_rank_seconds=release_batch_s * full,
        devices=jax.device_count(), platform=jax.devices()[0].platform,
        jax_version=jax.__version__, python=platform.python_version(),
        machine=f'{platform.machine()} {os.cpu_count()} cpus',
        load_average=os.getloadavg()[0], date=datetime.date.today().isoformat())


def markdown(rows: list[dict]) -> str:
    lines = ['| case | model | studies (timed) | forward (s) | scoring (s) | scoring / forward | '
             'release-style host ranking (s) |', '|' + '---|' * 7]
    for r in rows:
        mark = ' (extrapolated)' if r['extrapolated'] else ''
        timed = r['batches_timed'] * r['batch']
        lines.append(
            f'| {r["case"]} | {r["backbone"]}, {r["views"]}x{r["image"]}px, width {r["width"]} | '
            f'{r["studies"]} ({min(timed, r["studies"])}) | {r["forward_seconds"]:.1f}{mark} | '
            f'{r["scoring_seconds"]:.1f}{mark} | {r["ratio"]:.3f} | '
            f'{r["release_style_rank_seconds"]:.1f} (extrapolated) |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--cases', default=','.join(CASES))
    parser.add_argument('--batches', type=int, default=4,
                        help='iu_r101 batches timed (<= 0: all); other cases run the full set')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--out', default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    from jima_jax import atomic
    rows = []
    for name in args.cases.split(','):
        if name not in CASES:
            parser.error(f'unknown case {name!r}; choose from {sorted(CASES)}.')
        rows.append(run_case(name, args.batches if name == 'iu_r101' else 0, args.rounds))
        print(json.dumps(rows[-1]), flush=True)
    out = pathlib.Path(args.out)
    stamp = f'{datetime.date.today().isoformat()}_{platform.machine()}_{rows[0]["platform"]}'
    atomic.write_text(out / f'difficulty_{stamp}.json', json.dumps(rows, indent=2) + '\n')
    table = markdown(rows)
    atomic.write_text(out / f'difficulty_{stamp}.md', table + '\n')
    print(table)


if __name__ == '__main__':
    main()
